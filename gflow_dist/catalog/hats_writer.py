"""Write stars as a HATS catalog (HEALPix-partitioned Parquet) that ``lsdb`` opens.

Layout (HATS, as hats 0.11 reads it)::

    <directory>/hats.properties, properties   catalog properties + gflow_* provenance
    <directory>/partition_info.csv             Norder, Npix of every partition
    <directory>/dataset/Norder=K/Dir=D/Npix=N.parquet   D = (N // 10000) * 10000
    <directory>/dataset/_common_metadata, _metadata
    <directory>/_manifest.json                 rows, content hash, partitions

Each partition file is sorted by ``_healpix_29`` then ``star_id``; every column carries
its unit in the Parquet field metadata (key ``unit``) and the run's provenance sits in the
schema metadata (key ``gflow_dist``, JSON). A realistic mock needs O(10¹⁰) stars (paper
§2), far more than memory holds, so memory stays bounded by the largest partition plus
``spill_rows`` buffered rows (about 136 bytes each, held up to three times while sorted),
however many stars there are:

1. pass 1 over the batches counts stars per pixel and hashes their content;
2. the partition plan (:mod:`gflow_dist.catalog.healpix`) follows from the counts;
3. pass 2 scatters every batch's rows into one raw spill file per partition;
4. each spill file is read, checked against the plan's count, sorted and written.

The batches are read twice, so the caller passes a callable that starts a fresh
iteration over the same stars (e.g. re-reading the sample parts); pass 2 must hash to the
same content as pass 1. Everything is written into a hidden staging folder next to
``directory`` that is renamed into place at the end, so no reader sees a half-written
catalog, and a rerun whose stars, settings and metadata hash the same is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import PartitionInfo
from hats.catalog.dataset.table_properties import TableProperties
from hats.io.file_io import get_parquet_write_table_kwargs
from hats.io.size_estimates import estimate_dir_size
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN, SPATIAL_INDEX_ORDER

from gflow_dist.catalog.healpix import (
    PartitionPlan,
    PixelCounter,
    counting_order,
    plan_partitions,
    spatial_index,
)
from gflow_dist.catalog.observables import COLUMN_UNITS, SolarFrame, observables
from gflow_dist.config import CatalogConfig
from gflow_dist.data.particles import PHASE_SPACE_COLUMNS
from gflow_dist.errors import InputError

BatchSource = Callable[[], Iterable[pa.Table]]
"""Starts a fresh iteration over the same star batches each time it is called."""

MANIFEST_FILE = "_manifest.json"
METADATA_KEY = b"gflow_dist"
UNIT_KEY = b"unit"


PARTITIONING_KEYS = {"partition_order", "highest_order", "max_rows_per_partition"}
"""The ``catalog`` config keys that decide the partitions, hence the written files."""


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


def sample_batches(samples_dir: str | Path, frame: SolarFrame,
                   batch_rows: int = 262_144) -> BatchSource:
    """Catalog batches of the sample parts ``part-*.parquet`` in ``samples_dir``.

    ``star_id`` counts the stars in part order, i.e. the index in the upsampler's draw.
    """
    parts = sorted(Path(samples_dir).glob("part-*.parquet"))
    if not parts:
        raise InputError(f"no sample parts part-*.parquet in {samples_dir}: run the "
                         "sample stage first")

    def batches() -> Iterable[pa.Table]:
        first = 0
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(batch_rows,
                                                           columns=list(PHASE_SPACE_COLUMNS)):
                phase_space = np.column_stack([batch.column(c).to_numpy()
                                               for c in PHASE_SPACE_COLUMNS])
                yield catalog_table(phase_space, first, frame)
                first += len(phase_space)

    return batches


def partition_file(pixel: HealpixPixel) -> str:
    """Path of a partition's file relative to the catalog's ``dataset/`` folder."""
    return f"Norder={pixel.order}/Dir={pixel.dir}/Npix={pixel.pixel}.parquet"


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of a published catalog (HATS folder or Zarr store), or None."""
    path = Path(directory) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def publish(staging: Path, directory: Path) -> None:
    """Swap the finished ``staging`` folder into ``directory``; old content goes afterwards."""
    retired = directory.with_name(f".{directory.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    if directory.exists():
        directory.rename(retired)
    staging.rename(directory)
    shutil.rmtree(retired, ignore_errors=True)


def _with_spatial_index(table: pa.Table) -> pa.Table:
    """Append ``_healpix_29`` computed from ra, dec [deg] when the batch lacks it."""
    if SPATIAL_INDEX_COLUMN in table.column_names:
        return table
    for name in ("ra", "dec"):
        if name not in table.column_names:
            raise InputError(f"star batch has no column {name!r}: the catalog needs ra, dec "
                             "[deg] to place each star in a HEALPix pixel")
    index = spatial_index(table.column("ra").to_numpy(), table.column("dec").to_numpy())
    field = pa.field(SPATIAL_INDEX_COLUMN, pa.int64(), metadata={UNIT_KEY: b""})
    return table.append_column(field, pa.array(index))


def _record_dtype(schema: pa.Schema) -> np.dtype:
    """Numpy record type of one row; every column must be a fixed-width number."""
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


def _records(table: pa.Table, dtype: np.dtype) -> np.ndarray:
    records = np.empty(table.num_rows, dtype)
    for name in dtype.names:
        column = table.column(name)
        if column.null_count:
            raise InputError(f"catalog column {name!r} has {column.null_count} missing values")
        records[name] = column.to_numpy()
    return records


class _Batches:
    """Validated batches as numpy records, with a running hash of their content."""

    def __init__(self, source: BatchSource, schema: pa.Schema | None = None) -> None:
        self.source, self.schema = source, schema
        self.rows = 0
        self._hash = hashlib.sha256()

    def __iter__(self):
        for position, table in enumerate(self.source()):
            table = _with_spatial_index(table)
            if self.schema is None:
                self.schema = table.schema
            if table.schema.remove_metadata() != self.schema.remove_metadata():
                raise InputError(f"star batch columns {table.schema.names} differ from the "
                                 f"first batch's {self.schema.names}")
            if position == 0:
                self._hash.update(str(self.schema.remove_metadata()).encode())
            records = _records(table, _record_dtype(self.schema))
            self.rows += len(records)
            self._hash.update(records.tobytes())
            yield records

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class _Spill:
    """Per-partition raw record files, appended in buffered rounds."""

    def __init__(self, folder: Path, plan: PartitionPlan, buffer_rows: int) -> None:
        self.folder, self.plan, self.buffer_rows = folder, plan, buffer_rows
        folder.mkdir(parents=True)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0

    def path(self, index: int) -> Path:
        return self.folder / f"{index:07d}.bin"

    def add(self, records: np.ndarray) -> None:
        self._buffer.append(records)
        self._buffered += len(records)
        if self._buffered >= self.buffer_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        records = np.concatenate(self._buffer)
        self._buffer, self._buffered = [], 0
        partition = self.plan.assign(records[SPATIAL_INDEX_COLUMN])
        order = np.argsort(partition, kind="stable")
        records, partition = records[order], partition[order]
        bounds = np.flatnonzero(np.diff(partition)) + 1
        firsts = np.concatenate([[0], bounds])
        for index, chunk in zip(partition[firsts], np.split(records, bounds), strict=True):
            with self.path(int(index)).open("ab") as spill:
                chunk.tofile(spill)


def _partition_table(records: np.ndarray, schema: pa.Schema) -> pa.Table:
    keys = [records[SPATIAL_INDEX_COLUMN]]
    if "star_id" in records.dtype.names:
        keys.insert(0, records["star_id"])
    records = records[np.lexsort(keys)]
    return pa.table([pa.array(np.ascontiguousarray(records[n])) for n in schema.names],
                    schema=schema)


def _write_kwargs(schema: pa.Schema) -> dict:
    ordering = [(SPATIAL_INDEX_COLUMN, "ascending")]
    if "star_id" in schema.names:
        ordering.append(("star_id", "ascending"))
    sorting = pq.SortingColumn.from_ordering(schema, ordering)
    return get_parquet_write_table_kwargs(schema, write_table_kwargs={
        "sorting_columns": sorting, "compression": "zstd", "compression_level": 3})


def _write_partitions(spill: _Spill, schema: pa.Schema, dataset: Path) -> list[pq.FileMetaData]:
    """Sort and write each partition; check its row count against the plan."""
    kwargs = _write_kwargs(schema)
    footers: list[pq.FileMetaData] = []
    record_dtype = _record_dtype(schema)
    for index, (pixel, expected) in enumerate(zip(spill.plan.pixels, spill.plan.counts,
                                                  strict=True)):
        path = spill.path(index)
        records = np.fromfile(path, record_dtype) if path.exists() else np.empty(0, record_dtype)
        if len(records) != expected:
            raise RuntimeError(f"partition {pixel} holds {len(records)} stars, the plan "
                               f"counted {expected}; nothing published")
        relative = partition_file(pixel)
        (dataset / relative).parent.mkdir(parents=True, exist_ok=True)
        collector: list[pq.FileMetaData] = []
        pq.write_table(_partition_table(records, schema), dataset / relative,
                       metadata_collector=collector, **kwargs)
        collector[0].set_file_path(relative)
        footers.append(collector[0])
        path.unlink(missing_ok=True)
    return footers


def _property_value(text: str) -> str:
    """Escape a value so that the Java-properties reader of hats gives it back unchanged."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\t", "\\t"))


def _write_properties(folder: Path, catalog_name: str, plan: PartitionPlan,
                      config: CatalogConfig, metadata: dict[str, str]) -> None:
    pixels = PartitionInfo.from_healpix(list(plan.pixels))
    pixels.write_to_file(catalog_path=folder)
    provenance = {f"gflow_{key}": _property_value(str(value)) for key, value in metadata.items()}
    TableProperties(
        catalog_name=catalog_name, catalog_type="object", total_rows=plan.total_rows,
        ra_column="ra", dec_column="dec", healpix_column=SPATIAL_INDEX_COLUMN,
        healpix_order=SPATIAL_INDEX_ORDER, hats_max_rows=max(plan.counts),
        hats_order=pixels.get_highest_order(),
        moc_sky_fraction=f"{pixels.calculate_fractional_coverage():.5f}",
        hats_builder=f"gflow-dist {version('gflow-dist')}, hats v{version('hats')}",
        hats_version="v1.0", hats_estsize=estimate_dir_size(folder, divisor=1024),
        gflow_partition_order=str(config.partition_order),
        gflow_highest_order=str(config.highest_order),
        gflow_max_rows_per_partition=str(config.max_rows_per_partition),
        **provenance,
    ).to_properties_file(folder)


def _write_staging(batches: BatchSource, first: _Batches, plan: PartitionPlan, staging: Path,
                   spill_rows: int) -> None:
    """Passes 2-4 into ``staging``: scatter the rows, write sorted partitions and footers."""
    spill = _Spill(staging / "_spill", plan, spill_rows)
    second = _Batches(batches, first.schema)
    for records in second:
        spill.add(records)
    spill.flush()
    if second.sha256 != first.sha256:
        raise InputError("the second pass over the star batches gave different stars; "
                         "the batch source must be deterministic")
    dataset = staging / "dataset"
    footers = _write_partitions(spill, first.schema, dataset)
    shutil.rmtree(spill.folder)
    pq.write_metadata(first.schema, dataset / "_common_metadata")
    pq.write_metadata(first.schema, dataset / "_metadata", metadata_collector=footers)


def write_hats_catalog(batches: BatchSource, directory: str | Path, catalog_name: str,
                       config: CatalogConfig, metadata: dict[str, str],
                       spill_rows: int = 1_000_000) -> dict:
    """Write the stars of ``batches()`` as a HATS catalog in ``directory``; returns the manifest.

    Args:
        batches: called twice; each call yields the same ``pyarrow.Table`` batches with the
            catalog columns (units in field metadata ``unit``). ``_healpix_29`` is computed
            from ra, dec [deg] when missing.
        directory: the catalog folder (e.g. ``DIR/catalog/<name>/hats``).
        catalog_name: HATS ``obs_collection``.
        config: partitioning (``partition_order`` or adaptive up to ``highest_order`` with
            ``max_rows_per_partition``).
        metadata: flat provenance strings (config hash, seed, Solar frame, ...), stored in
            the schema metadata and as ``gflow_<key>`` in ``hats.properties``.
        spill_rows: rows buffered in memory before they are appended to the spill files.
    """
    directory = Path(directory)
    first = _Batches(batches)
    counter = PixelCounter(counting_order(config.partition_order, config.highest_order))
    for records in first:
        counter.add(records[SPATIAL_INDEX_COLUMN])
    if first.rows == 0:
        raise InputError("no stars to write: the batches are empty")
    request = {"content_sha256": first.sha256, "rows": first.rows, "catalog_name": catalog_name,
               "partitioning": config.model_dump(mode="json", include=PARTITIONING_KEYS),
               "metadata_sha256": hashlib.sha256(
                   json.dumps(metadata, sort_keys=True).encode()).hexdigest()}
    existing = read_manifest(directory)
    if existing is not None and existing["request"] == request:
        return existing
    plan = plan_partitions(counter, config.partition_order, config.max_rows_per_partition)
    staging = directory.with_name(f".{directory.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    first.schema = first.schema.with_metadata(
        {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    manifest = {"request": request, "rows": plan.total_rows,
                "partitions": [[p.order, p.pixel, c]
                               for p, c in zip(plan.pixels, plan.counts, strict=True)]}
    try:
        _write_staging(batches, first, plan, staging, spill_rows)
        _write_properties(staging, catalog_name, plan, config, metadata)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, directory)
    return manifest
