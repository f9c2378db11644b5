"""Write a catalog's HEALPix partitions and the HATS metadata that ``lsdb`` opens.

Layout (HATS, as hats 0.11 reads it)::

    <hats>/hats.properties, properties   catalog properties + gflow_* provenance
    <hats>/partition_info.csv             Norder, Npix of every partition
    <hats>/dataset/Norder=K/Dir=D/Npix=N.parquet   D = (N // 10000) * 10000
    <hats>/dataset/_common_metadata, _metadata
    <hats>/_manifest.json                 request, rows, partitions, content hash

Each partition file holds the stars of one pixel of the partition plan
(:mod:`gflow_dist.catalog.healpix`), sorted by ``_healpix_29`` then ``star_id``, one
file per partition whatever the number of shards. Columns carry their unit and UCD in the
field metadata (keys ``unit``, ``ucd``); the schema metadata holds the run's provenance
(key ``gflow_dist``, JSON), the row-group size (``gflow_dist.row_group_rows``) and the same
units and UCDs for astropy (``table_meta_yaml``) and VO readers (VOParquet 1.0,
:func:`gflow_dist.catalog.schema.reader_metadata`). Floats are written with
byte-stream-split encoding, the leading sort key with delta encoding, zstd level 3, row
groups of ``catalog.row_group_rows`` stars (default 100,000), min/max statistics of every
column in each row group (in the file footers and in ``_metadata``) and page indexes.

Because rows are sorted by ``_healpix_29``, each row group covers a narrow range of the
spatial index, so a cone or pixel filter skips most row groups of a partition. Other
columns (parallax, proper motions) are not sorted: their row-group ranges overlap and a
cut on them prunes row groups only when it is extreme enough to miss whole groups.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo
from hats.catalog.dataset.table_properties import TableProperties
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER

from gflow_dist.catalog.healpix import PartitionPlan
from gflow_dist.catalog.schema import catalog_schema, reader_metadata
from gflow_dist.config import CatalogConfig
from gflow_dist.outputs import METADATA_KEY

PARTITION_COLUMN = "_partition"
"""Index of a star's partition in the plan, added to the rows while they are grouped."""

PARTITIONING_KEYS = {"partition_order", "highest_order", "max_rows_per_partition",
                     "row_group_rows", "margin_arcsec"}
"""The ``catalog`` config keys that decide the partitions and the margin cache, hence the
written files."""

ROW_GROUP_KEY = b"gflow_dist.row_group_rows"
"""Schema metadata key with the row-group size :func:`write_partition` writes."""
_PAGE_BYTES = 131_072


def partition_file(pixel: HealpixPixel) -> str:
    """Path of a partition's file relative to the catalog's ``dataset/`` folder."""
    return f"Norder={pixel.order}/Dir={pixel.dir}/Npix={pixel.pixel}.parquet"


def partition_schema(metadata: dict[str, str], row_group_rows: int) -> pa.Schema:
    """The catalog schema with the run's provenance ``metadata``, the row-group size
    (``catalog.row_group_rows``) and the astropy and VOParquet column descriptions in the
    schema metadata."""
    schema = catalog_schema()
    return schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True),
                                 ROW_GROUP_KEY: str(row_group_rows)} | reader_metadata(schema))


def row_group_rows(schema: pa.Schema) -> int:
    """The row-group size a partition of ``schema`` is written with."""
    return int(schema.metadata[ROW_GROUP_KEY])


def assign_partitions(table: pa.Table, plan: PartitionPlan) -> pa.Table:
    """``table`` with the index of each star's partition in :data:`PARTITION_COLUMN`."""
    partition = plan.assign(table.column(SPATIAL_INDEX_COLUMN).to_numpy())
    return table.append_column(PARTITION_COLUMN, pa.array(partition, pa.int64()))


def _write_kwargs(schema: pa.Schema) -> dict:
    sorting = pq.SortingColumn.from_ordering(
        schema, [(SPATIAL_INDEX_COLUMN, "ascending"), ("star_id", "ascending")])
    encoding = {f.name: "BYTE_STREAM_SPLIT" for f in schema if pa.types.is_floating(f.type)}
    encoding[SPATIAL_INDEX_COLUMN] = "DELTA_BINARY_PACKED"
    return {"row_group_size": row_group_rows(schema), "compression": "zstd", "compression_level": 3,
            "column_encoding": encoding,
            "use_dictionary": [name for name in schema.names if name not in encoding],
            "data_page_size": _PAGE_BYTES, "dictionary_pagesize_limit": _PAGE_BYTES,
            "write_statistics": True, "write_page_index": True, "sorting_columns": sorting}


def write_partition(records: np.ndarray, pixel: HealpixPixel, schema: pa.Schema,
                    dataset: Path) -> int:
    """Sort one partition's stars (records of ``schema``) and write its file; returns rows."""
    records = records[np.lexsort((records["star_id"], records[SPATIAL_INDEX_COLUMN]))]
    table = pa.table([pa.array(np.ascontiguousarray(records[n])) for n in schema.names],
                     schema=schema)
    path = dataset / partition_file(pixel)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **_write_kwargs(schema))
    return len(records)


def check_partition_rows(rows: dict[int, int], plan: PartitionPlan) -> None:
    """Raise unless partition k of the plan was written with exactly its counted stars."""
    expected = dict(enumerate(plan.counts))
    if rows != expected:
        wrong = sorted(k for k in expected.keys() | rows.keys() if rows.get(k) != expected.get(k))
        raise RuntimeError(f"partitions {[str(plan.pixels[k]) for k in wrong[:5]]} hold "
                           f"{[rows.get(k, 0) for k in wrong[:5]]} stars, the plan counted "
                           f"{[expected.get(k, 0) for k in wrong[:5]]}; nothing published")


def property_value(text: str) -> str:
    """Escape a value so that the Java-properties reader of hats gives it back unchanged."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\t", "\\t"))


def _size_kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def write_hats_metadata(folder: Path, plan: PartitionPlan, schema: pa.Schema,
                        catalog_name: str, config: CatalogConfig,
                        metadata: dict[str, str], skymaps: dict[str, str]) -> None:
    """Add ``_metadata``, ``_common_metadata``, ``partition_info.csv`` and the properties
    to the written partitions in ``folder``; ``metadata`` also goes to the properties as
    ``gflow_<key>``, and ``skymaps`` are the sky maps' properties
    (:func:`gflow_dist.catalog.skymaps.write_skymaps`)."""
    dataset = folder / "dataset"
    footers = []
    for pixel in plan.pixels:
        footer = pq.read_metadata(dataset / partition_file(pixel))
        footer.set_file_path(partition_file(pixel))
        footers.append(footer)
    pq.write_metadata(schema, dataset / "_common_metadata")
    pq.write_metadata(schema, dataset / "_metadata", metadata_collector=footers)
    pixels = PartitionInfo.from_healpix(list(plan.pixels))
    pixels.write_to_file(catalog_path=folder)
    provenance = {f"gflow_{key}": property_value(str(value)) for key, value in metadata.items()}
    TableProperties(
        catalog_name=catalog_name, catalog_type="object", total_rows=plan.total_rows,
        ra_column="ra", dec_column="dec", healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=SPATIAL_INDEX_ORDER, hats_max_rows=max(plan.counts),
        hats_order=pixels.get_highest_order(),
        moc_sky_fraction=f"{pixels.calculate_fractional_coverage():.5f}",
        hats_builder=f"gflow-dist {version('gflow-dist')}, hats v{version('hats')}",
        hats_version="v1.0", hats_estsize=_size_kib(folder),
        gflow_partition_order=str(config.partition_order),
        gflow_highest_order=str(config.highest_order),
        gflow_max_rows_per_partition=str(config.max_rows_per_partition),
        gflow_row_group_rows=str(row_group_rows(schema)),
        **skymaps, **provenance,
    ).to_properties_file(folder)

