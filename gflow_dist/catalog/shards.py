"""Draw one shard of a catalog into the staging folder, and merge the shards' pixel counts.

A shard (:mod:`gflow_dist.sample.shards`) is drawn batch by batch (memory bounded by the
batch size) into ``<staging>/shard-NNNNNN.parquet``, rows of :func:`catalog_schema` in
draw order. Its record ``shard-NNNNNN.npz`` follows: the stats (request, rows, content
SHA-256 of the rows, draw seconds, peak RSS [MiB], process id, device type) and the stars
per HEALPix pixel at the counting order. Both appear by rename only when complete, and a shard whose
record matches its request and whose file still hashes to the recorded content is reused,
so a rerun after a crash neither duplicates nor drops stars.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist.catalog.device_table import device_catalog_table
from gflow_dist.catalog.healpix import PixelCounter, counting_order
from gflow_dist.catalog.schema import catalog_schema, catalog_table, table_records
from gflow_dist.config import RunConfig
from gflow_dist.faults import kill_point
from gflow_dist.flows.ensemble import FlowEnsemble
from gflow_dist.frame import SolarFrame
from gflow_dist.sample.shards import Shard, ShardPlan
from gflow_dist.upsamplers import Upsampler

_COMPACT_ENTRIES = 4_000_000
"""Pixel-count entries held before the pending shard counts are merged into one."""


@dataclass(frozen=True)
class ShardSpec:
    """How the shards of one catalog are drawn.

    Attributes:
        plan: the shard plan (star ids, counts, seeds).
        folder: the staging folder of the shard files (shared storage on a cluster).
        key: identifies the inputs besides the plan (:func:`shard_key`); a shard file
            recorded under another key is drawn again.
        frame: the Solar frame of the observables.
        batch_size: stars per drawn batch; bounds a drawing process's memory.
        order: HEALPix order of the recorded pixel counts.
    """

    plan: ShardPlan
    folder: Path
    key: str
    frame: SolarFrame
    batch_size: int
    order: int

    @classmethod
    def from_config(cls, plan: ShardPlan, folder: Path, model_sha256: str,
                    config: RunConfig) -> ShardSpec:
        return cls(plan, folder, shard_key(model_sha256, config), config.galaxy.frame,
                   config.sample.batch_size,
                   counting_order(config.catalog.partition_order, config.catalog.highest_order))


DRAW_SCHEME = 2
"""Version of how stars are drawn; 2: flow ensembles draw on their device from the
counter-based generator (:mod:`gflow_dist.sample.device_draws`). A shard file of another
scheme is drawn again."""


def shard_key(model_sha256: str, config: RunConfig) -> str:
    """Identifies what a shard file's content depends on besides the plan: draw scheme,
    model, batch size, Solar frame and counting order."""
    order = counting_order(config.catalog.partition_order, config.catalog.highest_order)
    return hashlib.sha256(json.dumps([DRAW_SCHEME, model_sha256, config.sample.batch_size,
                                      config.galaxy.frame.to_metadata(), order],
                                     sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ShardFiles:
    """A shard's star file and its record in the staging folder."""

    parquet: Path
    record: Path

    @classmethod
    def of(cls, folder: Path, index: int) -> ShardFiles:
        return cls(folder / f"shard-{index:06d}.parquet", folder / f"shard-{index:06d}.npz")


def _hash_rows(table: pa.Table, digest: hashlib._Hash) -> None:
    digest.update(table_records(table, catalog_schema()).tobytes())


def file_sha256(path: Path) -> str:
    """Content SHA-256 of a shard file: its rows as packed records, in file order."""
    digest = hashlib.sha256()
    for batch in pq.ParquetFile(path).iter_batches(262_144):
        _hash_rows(pa.Table.from_batches([batch]), digest)
    return digest.hexdigest()


def read_shard_record(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(stats, pixels, counts) of a finished shard's ``.npz`` record."""
    with np.load(path, allow_pickle=False) as saved:
        return json.loads(str(saved["record"])), saved["pixels"], saved["counts"]


def _request(spec: ShardSpec, shard: Shard) -> dict:
    return {"key": spec.key, "index": shard.index, "first_star_id": shard.first_star_id,
            "count": shard.count, "seed": shard.seed}


def completed_shard(spec: ShardSpec, shard: Shard) -> dict | None:
    """The stats of a finished shard file drawn with these inputs, or None."""
    files = ShardFiles.of(spec.folder, shard.index)
    if not (files.record.exists() and files.parquet.exists()):
        return None
    stats, _, _ = read_shard_record(files.record)
    expected = _request(spec, shard)
    if {k: stats.get(k) for k in expected} != expected:
        return None
    try:
        intact = (pq.read_schema(files.parquet).equals(catalog_schema())
                  and pq.read_metadata(files.parquet).num_rows == stats["rows"]
                  and file_sha256(files.parquet) == stats["sha256"])
    except pa.ArrowInvalid:  # a damaged file is drawn again
        intact = False
    return stats if intact else None


def drawing_device(model: Upsampler) -> str:
    """The device type that draws a model's stars: a flow ensemble's (``cpu`` or ``cuda``);
    ``cpu`` for the others, which draw with numpy."""
    return model.device.type if isinstance(model, FlowEnsemble) else "cpu"


def catalog_tables(model: Upsampler, shard: Shard, batch_size: int,
                   frame: SolarFrame) -> Iterator[pa.Table]:
    """The catalog rows of ``shard``, ``batch_size`` proposals at a time, in star_id order.

    A flow ensemble draws, converts and indexes its stars on its device (the GPU its
    Ray actor was given, or the CPU), and only finished columns reach the host; the other
    upsamplers draw with numpy and convert on the host.
    """
    first = shard.first_star_id
    if isinstance(model, FlowEnsemble):
        for stars in model.iter_sample_tensors(shard.count, shard.seed, batch_size):
            yield device_catalog_table(stars, first, frame)
            first += len(stars)
        return
    for stars in model.iter_samples(shard.count, shard.seed, batch_size):
        yield catalog_table(stars, first, frame)
        first += len(stars)


def draw_shard(model: Upsampler, spec: ShardSpec, shard: Shard) -> dict:
    """Draw ``shard`` into ``spec.folder`` unless it is complete; returns its stats.

    The stats hold the request (key, index, first_star_id, count, seed), ``rows``,
    ``sha256``, ``seconds`` and ``peak_rss_mb`` of the draw, ``pid`` of the drawing
    process, ``device`` (:func:`drawing_device`) and ``sampled`` (False when a complete
    file was reused). A complete shard is reused whichever device drew it.
    """
    done = completed_shard(spec, shard)
    if done is not None:
        return done | {"sampled": False}
    start = time.perf_counter()
    spec.folder.mkdir(parents=True, exist_ok=True)
    files = ShardFiles.of(spec.folder, shard.index)
    partial = files.parquet.with_name(files.parquet.name + ".partial")
    digest, counter, rows = hashlib.sha256(), PixelCounter(spec.order), 0
    with pq.ParquetWriter(partial, catalog_schema(), compression="zstd") as writer:
        for table in catalog_tables(model, shard, spec.batch_size, spec.frame):
            rows += table.num_rows
            _hash_rows(table, digest)
            counter.add(table.column(SPATIAL_INDEX_COLUMN).to_numpy())
            writer.write_table(table)
    os.replace(partial, files.parquet)
    pixels, counts = counter.counts()
    stats = _request(spec, shard) | {
        "rows": rows, "sha256": digest.hexdigest(), "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pid": os.getpid(), "device": drawing_device(model)}
    partial = files.record.with_name(files.record.name + ".partial")
    with partial.open("wb") as handle:
        np.savez(handle, record=json.dumps(stats), pixels=pixels, counts=counts)
    os.replace(partial, files.record)
    kill_point("shard")
    return stats | {"sampled": True}


def _merge(pending: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum sparse (pixels, counts) pairs into one (pixels ascending, counts)."""
    if not pending:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pixels = np.concatenate([p for p, _ in pending]).astype(np.int64)
    counts = np.concatenate([c for _, c in pending]).astype(np.int64)
    unique, inverse = np.unique(pixels, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


@dataclass(frozen=True)
class MergedCounts:
    """Stars per pixel of every shard, in the shape :func:`plan_partitions` reads."""

    order: int
    pixels: np.ndarray
    numbers: np.ndarray

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pixels, self.numbers


def merge_shard_counts(records: list[Path], order: int) -> MergedCounts:
    """Pixel counts of the shard records, merged with memory bounded by the non-empty pixels."""
    merged: list[tuple[np.ndarray, np.ndarray]] = []
    entries = 0
    for path in records:
        _, pixels, counts = read_shard_record(path)
        merged.append((pixels, counts))
        entries += len(pixels)
        if entries > _COMPACT_ENTRIES:
            merged = [_merge(merged)]
            entries = len(merged[0][0])
    return MergedCounts(order, *_merge(merged))
