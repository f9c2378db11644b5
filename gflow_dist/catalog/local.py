"""Run a catalog build in this process: shards one after another, partitions through spill files.

:class:`LocalCatalogRunner` is the serial :class:`gflow_dist.catalog.build.CatalogRunner`.
It draws the shards with one loaded model, then scatters the shard files' rows into one
raw spill file per partition (``<dataset>/../_spill/NNNNNNN.bin``, numpy records of the
catalog columns, about 136 bytes a star) and writes each partition from its spill file.
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
from gflow_dist.catalog.partitions import write_partition
from gflow_dist.catalog.schema import record_dtype, table_records
from gflow_dist.catalog.shards import ShardSpec, draw_shard
from gflow_dist.upsamplers import Upsampler


class _Spill:
    """Per-partition raw record files, appended in buffered rounds."""

    def __init__(self, folder: Path, plan: PartitionPlan, buffer_rows: int) -> None:
        self.folder, self.plan, self.buffer_rows = folder, plan, buffer_rows
        shutil.rmtree(folder, ignore_errors=True)
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
        spill = _Spill(dataset.parent / "_spill", plan, self.spill_rows)
        for path in shard_files:
            for batch in pq.ParquetFile(path).iter_batches(self.batch_rows):
                spill.add(table_records(pa.Table.from_batches([batch]), schema))
        spill.flush()
        dtype, rows = record_dtype(schema), {}
        for index, pixel in enumerate(plan.pixels):
            path = spill.path(index)
            records = np.fromfile(path, dtype) if path.exists() else np.empty(0, dtype)
            rows[index] = write_partition(records, pixel, schema, dataset)
            path.unlink(missing_ok=True)
        shutil.rmtree(spill.folder)
        return rows
