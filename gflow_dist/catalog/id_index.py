"""The index catalog on ``star_id``: which partition holds a star, without a full scan.

Layout (hats ``catalog_type=index``, ``indexing_column=star_id``, ``DIR/catalog/<name>/index/``)::

    index/hats.properties, properties
    index/dataset/shard=NNNNNNN.parquet     star_id, Norder, Dir, Npix of one shard's stars
    index/dataset/_common_metadata, _metadata

Every shard holds a contiguous run of star_ids, so the workers write one index file per
shard (:func:`write_index_file`), sorted by star_id, and the footers' star_id statistics
(in ``_metadata``) lead a lookup (hats ``IndexCatalog.loc_partitions``, ``lsdb``
``Catalog.id_search``) to the one file and row group that hold an id, then to the one
partition that holds the star.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog.dataset.table_properties import TableProperties
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist.catalog.healpix import PartitionPlan

INDEX_DIR = "index"
"""The index catalog's folder in the catalog folder, next to ``hats/``."""
INDEX_COLUMN = "star_id"
_ROW_GROUP_ROWS = 1_000_000

INDEX_SCHEMA = pa.schema([(INDEX_COLUMN, pa.int64()), ("Norder", pa.uint8()),
                          ("Dir", pa.uint64()), ("Npix", pa.uint64())])
"""Columns of the index: a star's id and its partition (``Dir`` as in the partition path)."""


def index_file(shard: int) -> str:
    """Path of shard ``shard``'s index file relative to the index's ``dataset/`` folder."""
    return f"shard={shard:07d}.parquet"


def write_index_file(shard_file: Path, shard: int, plan: PartitionPlan, dataset: Path) -> int:
    """Write the (star_id, Norder, Dir, Npix) rows of the stars of ``shard_file`` (shard
    ``shard``), sorted by star_id; returns rows."""
    table = pq.read_table(shard_file, columns=[INDEX_COLUMN, SPATIAL_INDEX_COLUMN])
    star_id = table.column(INDEX_COLUMN).to_numpy()
    partition = plan.assign(table.column(SPATIAL_INDEX_COLUMN).to_numpy())
    orders = np.array([p.order for p in plan.pixels], np.uint8)
    pixels = np.array([p.pixel for p in plan.pixels], np.uint64)
    dirs = np.array([p.dir for p in plan.pixels], np.uint64)
    by_id = np.argsort(star_id, kind="stable")
    partition = partition[by_id]
    index = pa.table([star_id[by_id], orders[partition], dirs[partition], pixels[partition]],
                     schema=INDEX_SCHEMA)
    dataset.mkdir(parents=True, exist_ok=True)
    pq.write_table(index, dataset / index_file(shard), row_group_size=_ROW_GROUP_ROWS,
                   compression="zstd", write_statistics=True)
    return index.num_rows


def write_index_metadata(folder: Path, shards: list[int], catalog_name: str) -> None:
    """Add ``_metadata``, ``_common_metadata`` and the index properties to the index files
    of ``shards`` written in ``folder``."""
    dataset = folder / "dataset"
    footers = []
    for shard in shards:
        footer = pq.read_metadata(dataset / index_file(shard))
        footer.set_file_path(index_file(shard))
        footers.append(footer)
    pq.write_metadata(INDEX_SCHEMA, dataset / "_common_metadata")
    pq.write_metadata(INDEX_SCHEMA, dataset / "_metadata", metadata_collector=footers)
    TableProperties(
        catalog_name=f"{catalog_name}_{INDEX_COLUMN}_index", catalog_type="index",
        total_rows=sum(footer.num_rows for footer in footers), primary_catalog=catalog_name,
        indexing_column=INDEX_COLUMN,
        hats_builder=f"gflow-dist {version('gflow-dist')}, hats v{version('hats')}",
        hats_version="v1.0",
    ).to_properties_file(folder)
