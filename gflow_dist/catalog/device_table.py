"""Catalog rows computed where the stars are: observables and HEALPix index on the device.

The device twin of :func:`gflow_dist.catalog.schema.catalog_table`: the observables
(:func:`gflow_dist.catalog.device_observables.observables_tensor`, float64) and the
order-29 nested HEALPix index (``spatial_index_tensor``) are computed on the tensor's
device, and only the finished columns cross to the host: the float columns in one copy,
the index in another, each column then wrapped by Arrow without a further copy.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN
from torch import Tensor

from gflow_dist.catalog.device_observables import observables_tensor, spatial_index_tensor
from gflow_dist.catalog.observables import OBSERVABLE_COLUMNS
from gflow_dist.catalog.schema import catalog_schema
from gflow_dist.frame import SolarFrame


def device_catalog_table(phase_space: Tensor, first_star_id: int,
                         frame: SolarFrame) -> pa.Table:
    """Catalog rows of (n, 6) float64 Galactocentric stars [kpc, km/s] on any device,
    numbered from ``first_star_id``; equal to ``catalog_table`` of the same stars."""
    columns = observables_tensor(phase_space, frame)
    healpix = spatial_index_tensor(columns["ra"], columns["dec"])
    floats = torch.stack([columns[name] for name in OBSERVABLE_COLUMNS]).cpu().numpy()
    host: dict[str, np.ndarray] = dict(zip(OBSERVABLE_COLUMNS, floats, strict=True))
    host[SPATIAL_INDEX_COLUMN] = healpix.cpu().numpy()
    host["star_id"] = np.arange(first_star_id, first_star_id + len(phase_space),
                                dtype=np.uint64)
    schema = catalog_schema()
    return pa.table([host[name] for name in schema.names], schema=schema)
