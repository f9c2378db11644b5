"""The margin cache of a catalog: each partition's neighbours' stars near its boundary.

A spatial join (``lsdb`` ``crossmatch``) works one partition at a time; a star near the
edge of partition P has its nearest neighbours partly in the partitions around P. The
margin catalog (hats ``catalog_type=margin``, ``DIR/catalog/<name>/margin/``) holds, for
every partition P, the stars of the other partitions that lie within
``catalog.margin_arcsec`` [arcsec] of P's boundary, in
``margin/dataset/Norder=K/Dir=D/Npix=N.parquet`` (P's own path; partitions without such
stars get no file), with the catalog's columns and schema, sorted and encoded like the
partitions (:func:`gflow_dist.catalog.partitions.write_partition`).

As in hats-import and ``lsdb.from_dataframe``, stars are selected by HEALPix pixel at the
margin order (:func:`margin_order`): the finest order whose pixels are at least
``margin_arcsec`` wide, so the margin of P is every star in the pixels of that order
bordering P (``hats.pixel_math.get_margin``). That holds every star within
``margin_arcsec`` of P's boundary, and some farther, up to one margin pixel away (for
the default 10″: order 13, pixels at least 16″ and on average 26″ across).

The workers write it from the shards like the partitions: :func:`assign_margins` copies
each star once per partition whose margin it lies in (:data:`PARTITION_COLUMN` = that
partition's index), the copies are grouped by partition and each group is written.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import hats.pixel_math.healpix_shim as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo
from hats.catalog.dataset.table_properties import TableProperties
from hats.pixel_math import get_margin
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER

from gflow_dist.catalog.healpix import PartitionPlan, pixel_at_order
from gflow_dist.catalog.partitions import PARTITION_COLUMN, partition_file
from gflow_dist.errors import InputError

MARGIN_DIR = "margin"
"""The margin catalog's folder in the catalog folder, next to ``hats/``."""


def margin_order(plan: PartitionPlan, margin_arcsec: float) -> int:
    """The HEALPix order whose pixels select the margin stars: the finest one whose
    pixels are at least ``margin_arcsec`` [arcsec] wide (``hats`` ``margin2order``).

    Raises:
        InputError: that order is not finer than the finest partition, so a margin pixel
            would not lie outside one partition.
    """
    order = int(hp.margin2order(margin_thr_arcmin=margin_arcsec / 60.0))
    while order > 0 and hp.order2mindist(order) * 60 < margin_arcsec:
        order -= 1
    finest = max(pixel.order for pixel in plan.pixels)
    if order <= finest or order > SPATIAL_INDEX_ORDER:
        raise InputError(
            f"catalog.margin_arcsec={margin_arcsec} needs margin pixels of order {order}, "
            f"finer than the finest partition order {finest} and at most "
            f"{SPATIAL_INDEX_ORDER}: change catalog.margin_arcsec or partition coarser "
            "(catalog.partition_order, catalog.highest_order)")
    return order


@lru_cache(maxsize=4)
def _margin_pairs(plan: PartitionPlan, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel at ``order``, index of the partition it borders), sorted by pixel: every
    pixel of ``order`` just outside each partition of ``plan``."""
    pixels, partitions = [], []
    for index, pixel in enumerate(plan.pixels):
        margin = get_margin(pixel.order, pixel.pixel, order - pixel.order)
        pixels.append(np.asarray(margin, np.int64))
        partitions.append(np.full(len(margin), index, np.int64))
    pixels_array, partitions_array = np.concatenate(pixels), np.concatenate(partitions)
    by_pixel = np.lexsort((partitions_array, pixels_array))
    return pixels_array[by_pixel], partitions_array[by_pixel]


def assign_margins(table: pa.Table, plan: PartitionPlan, order: int) -> pa.Table:
    """The stars of ``table`` that lie in another partition's margin, one row per such
    partition, its index in :data:`PARTITION_COLUMN`; ``order`` is :func:`margin_order`."""
    pair_pixels, pair_partitions = _margin_pairs(plan, order)
    pixel = pixel_at_order(table.column(SPATIAL_INDEX_COLUMN).to_numpy(), order)
    first = np.searchsorted(pair_pixels, pixel, side="left")
    count = np.searchsorted(pair_pixels, pixel, side="right") - first
    rows = np.repeat(np.arange(table.num_rows), count)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count)
    target = pair_partitions[first[rows] + offsets]
    return table.take(pa.array(rows, pa.int64())).append_column(
        PARTITION_COLUMN, pa.array(target, pa.int64()))


def write_margin_metadata(folder: Path, plan: PartitionPlan, rows: dict[int, int],
                          schema: pa.Schema, catalog_name: str, margin_arcsec: float,
                          order: int) -> None:
    """Add ``_metadata``, ``_common_metadata``, ``partition_info.csv`` and the margin
    properties (``margin_threshold`` [arcsec], ``primary_catalog``) to the margin files
    written in ``folder``; ``rows`` are the margin stars per partition index."""
    dataset = folder / "dataset"
    pixels = [plan.pixels[k] for k in sorted(rows) if rows[k]]
    footers = []
    for pixel in pixels:
        footer = pq.read_metadata(dataset / partition_file(pixel))
        footer.set_file_path(partition_file(pixel))
        footers.append(footer)
    dataset.mkdir(parents=True, exist_ok=True)
    pq.write_metadata(schema, dataset / "_common_metadata")
    pq.write_metadata(schema, dataset / "_metadata", metadata_collector=footers)
    info = PartitionInfo.from_healpix(pixels)
    info.write_to_file(catalog_path=folder)
    TableProperties(
        catalog_name=f"{catalog_name}_{margin_arcsec:g}arcs", catalog_type="margin",
        total_rows=sum(rows.values()), ra_column="ra", dec_column="dec",
        healpix_column=SPATIAL_INDEX_COLUMN, healpix_order=SPATIAL_INDEX_ORDER,
        primary_catalog=catalog_name, margin_threshold=margin_arcsec,
        hats_order=info.get_highest_order() if pixels else 0,
        hats_builder=f"gflow-dist {version('gflow-dist')}, hats v{version('hats')}",
        hats_version="v1.0", gflow_margin_order=str(order),
    ).to_properties_file(folder)

