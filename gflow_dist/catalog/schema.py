"""The catalog's columns: Arrow schema with units, rows from Galactocentric stars, records.

Columns, in order (units in each field's metadata, key ``unit``): star_id, x, y, z
[kpc], vx, vy, vz [km/s], ra, dec [deg], distance [kpc], parallax [mas], pmra, pmdec
[mas/yr], radial_velocity [km/s], l, b [deg] and ``_healpix_29``, the HATS spatial index
(nested HEALPix pixel at order 29). Partition files are written from numpy records of
these columns (:func:`table_records`), which also give the bytes the content hashes cover.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist.catalog.healpix import spatial_index
from gflow_dist.catalog.observables import COLUMN_UNITS, observables
from gflow_dist.errors import InputError
from gflow_dist.frame import SolarFrame
from gflow_dist.outputs import UNIT_KEY


def catalog_schema() -> pa.Schema:
    """The catalog columns in order, with their units in the field metadata."""
    types = {"star_id": pa.uint64(), SPATIAL_INDEX_COLUMN: pa.int64()}
    return pa.schema([pa.field(name, types.get(name, pa.float64()), metadata={UNIT_KEY: unit})
                      for name, unit in COLUMN_UNITS.items()])


def catalog_table(phase_space: np.ndarray, first_star_id: int, frame: SolarFrame) -> pa.Table:
    """Catalog rows of (n, 6) Galactocentric stars [kpc, km/s] numbered from ``first_star_id``."""
    columns = observables(phase_space, frame)
    columns["star_id"] = np.arange(first_star_id, first_star_id + len(phase_space),
                                   dtype=np.uint64)
    columns[SPATIAL_INDEX_COLUMN] = spatial_index(columns["ra"], columns["dec"])
    schema = catalog_schema()
    return pa.table([columns[name] for name in schema.names], schema=schema)


def record_dtype(schema: pa.Schema) -> np.dtype:
    """Numpy record type of one row; every column must be a fixed-width number with a unit."""
    fields = []
    for field in schema:
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise InputError(f"catalog column {field.name!r} has type {field.type}; "
                             "only integer and float columns can be partitioned")
        if UNIT_KEY not in (field.metadata or {}):
            raise InputError(f"catalog column {field.name!r} has no unit: set "
                             "metadata={b'unit': ...} on its field ('' for dimensionless)")
        fields.append((field.name, field.type.to_pandas_dtype()))
    return np.dtype(fields)


def table_records(table: pa.Table, schema: pa.Schema) -> np.ndarray:
    """The rows of ``table`` as numpy records of ``schema``'s columns (others are dropped)."""
    dtype = record_dtype(schema)
    records = np.empty(table.num_rows, dtype)
    for name in dtype.names:
        column = table.column(name)
        if column.null_count:
            raise InputError(f"catalog column {name!r} has {column.null_count} missing values")
        records[name] = column.to_numpy()
    return records
