"""Run a catalog build in this process: shards one after another, partitions through spill files.

:class:`LocalCatalogRunner` is the serial :class:`gflow_dist.catalog.build.CatalogRunner`.
It draws the shards with one loaded model, then scatters the shard files' rows into one
raw spill file per partition (``<dataset>/../_spill/NNNNNNN.bin``, numpy records of the
catalog columns, about 136 bytes a star) and writes each partition from its spill file;
the margin cache (:mod:`gflow_dist.catalog.margins`) the same way, each star spilled once
per partition whose margin it lies in, and the star_id index
(:mod:`gflow_dist.catalog.id_index`) one shard at a time.
Memory stays bounded by the largest partition (held up to three times while it is
sorted) plus ``spill_rows`` buffered rows, however many stars there are. The written
catalog is the same, byte for byte, as the one the Ray runner writes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist import upsamplers
from gflow_dist.catalog.healpix import PartitionPlan
from gflow_dist.catalog.id_index import write_index_file
from gflow_dist.catalog.margins import assign_margins
from gflow_dist.catalog.partitions import PARTITION_COLUMN, write_partition
from gflow_dist.catalog.schema import record_dtype, table_records
from gflow_dist.catalog.shards import ShardSpec, draw_shard
from gflow_dist.upsamplers import Upsampler


class _Spill:
    """Per-partition raw record files, appended in buffered rounds."""

    def __init__(self, folder: Path, buffer_rows: int) -> None:
        self.folder, self.buffer_rows = folder, buffer_rows
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0

    def path(self, index: int) -> Path:
        return self.folder / f"{index:07d}.bin"

    def add(self, records: np.ndarray, partition: np.ndarray) -> None:
        """Append ``records`` to the spill files of their ``partition`` indices."""
        if len(records) == 0:
            return
        self._buffer.append((records, partition))
        self._buffered += len(records)
        if self._buffered >= self.buffer_rows:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        records = np.concatenate([r for r, _ in self._buffer])
        partition = np.concatenate([p for _, p in self._buffer])
        self._buffer, self._buffered = [], 0
        order = np.argsort(partition, kind="stable")
        records, partition = records[order], partition[order]
        bounds = np.flatnonzero(np.diff(partition)) + 1
        firsts = np.concatenate([[0], bounds])
        for index, chunk in zip(partition[firsts], np.split(records, bounds), strict=True):
            with self.path(int(index)).open("ab") as spill:
                chunk.tofile(spill)


class LocalCatalogRunner:
    """Draws shards and writes partitions one after another in this process.

    Args:
        load_model: restores the saved model (default :func:`gflow_dist.upsamplers.load`).
        spill_rows: rows buffered in memory before they are appended to the spill files.
        batch_rows: rows read from a shard file at a time.
    """

    def __init__(self, load_model: Callable[[Path], Upsampler] = upsamplers.load,
                 spill_rows: int = 1_000_000, batch_rows: int = 262_144) -> None:
        self.load_model, self.spill_rows, self.batch_rows = load_model, spill_rows, batch_rows

    def draw_shards(self, model_dir: Path, spec: ShardSpec, indices: list[int]) -> list[dict]:
        model = self.load_model(model_dir)
        return [draw_shard(model, spec, spec.plan.shard(k)) for k in indices]

    def write_partitions(self, shard_files: list[Path], plan: PartitionPlan, schema: pa.Schema,
                         dataset: Path) -> dict[int, int]:
        def scatter(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
            return (table_records(table, schema),
                    plan.assign(table.column(SPATIAL_INDEX_COLUMN).to_numpy()))

        return self._spill_and_write(shard_files, plan, schema, dataset, scatter)

    def write_margins(self, shard_files: list[Path], plan: PartitionPlan, order: int,
                      schema: pa.Schema, dataset: Path) -> dict[int, int]:
        def scatter(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
            margin = assign_margins(table, plan, order)
            return (table_records(margin, schema),
                    margin.column(PARTITION_COLUMN).to_numpy())

        return self._spill_and_write(shard_files, plan, schema, dataset, scatter)

    def write_index(self, shard_files: list[Path], plan: PartitionPlan,
                    dataset: Path) -> dict[int, int]:
        return {shard: write_index_file(path, shard, plan, dataset)
                for shard, path in enumerate(shard_files)}

    def _spill_and_write(self, shard_files: list[Path], plan: PartitionPlan, schema: pa.Schema,
                         dataset: Path,
                         scatter: Callable[[pa.Table], tuple[np.ndarray, np.ndarray]],
                         ) -> dict[int, int]:
        """Scatter the shards' rows (``scatter``: records and their partition indices)
        into spill files, then write every partition of ``plan`` that got rows; rows per
        written partition index."""
        spill = _Spill(dataset.parent / "_spill", self.spill_rows)
        for path in shard_files:
            for batch in pq.ParquetFile(path).iter_batches(self.batch_rows):
                spill.add(*scatter(pa.Table.from_batches([batch])))
        spill.flush()
        dtype, rows = record_dtype(schema), {}
        for index, pixel in enumerate(plan.pixels):
            path = spill.path(index)
            if path.exists():
                rows[index] = write_partition(np.fromfile(path, dtype), pixel, schema, dataset)
                path.unlink()
        shutil.rmtree(spill.folder)
        return rows
