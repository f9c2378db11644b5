"""Write an upsampler's stars as Parquet parts, streamed, published all at once.

``DIR/samples/<name>/part-NNNNN.parquet`` hold columns star_id, x, y, z [kpc] and vx, vy,
vz [km/s] with units in the field metadata and the run's provenance in the schema
metadata. The stars are drawn shard by shard with the catalog's :class:`ShardPlan`, so
star ``star_id`` is the same star as in the catalog drawn with the same model, count,
seed, shard and batch size. Parts are written into a hidden staging folder that is
renamed into place only after every star is written, so a reader never sees a
half-written sample, and a rerun with the same request finds the manifest and does
nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gflow_dist.data.particles import PHASE_SPACE_COLUMNS
from gflow_dist.outputs import (
    METADATA_KEY,
    UNIT_KEY,
    UNITS,
    publish_folder,
    read_manifest,
    staging_folder,
    write_manifest,
)
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.sample.window import DrawStats
from gflow_dist.upsamplers.base import Upsampler


def _schema(metadata: dict[str, str]) -> pa.Schema:
    fields = [pa.field("star_id", pa.uint64())]
    fields += [pa.field(c, pa.float64(), metadata={UNIT_KEY: UNITS[c]})
               for c in PHASE_SPACE_COLUMNS]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def _batches(upsampler: Upsampler, plan: ShardPlan, batch_size: int,
             stats: DrawStats) -> Iterator[tuple[int, np.ndarray]]:
    """(first star_id, (m, 6) stars) of every batch of every shard of ``plan``, in order."""
    for shard in plan:
        first = shard.first_star_id
        for batch in upsampler.iter_samples(shard.count, shard.seed, batch_size, stats):
            yield first, batch
            first += len(batch)


def write_samples(upsampler: Upsampler, plan: ShardPlan, directory: str | Path,
                  metadata: dict[str, str], batch_size: int = 65_536,
                  rows_per_file: int = 4_000_000) -> dict:
    """Draw the stars of ``plan`` and publish them in ``directory``; returns the manifest.

    ``metadata`` must identify the model (e.g. its spec hash under ``model_sha256``): an
    existing sample with the same model and request is kept as it is.
    """
    directory = Path(directory)
    n = plan.total
    request = {"n": n, "seed": plan.seed, "shard_size": plan.shard_size,
               "batch_size": batch_size, "model_sha256": metadata.get("model_sha256")}
    existing = read_manifest(directory)
    if existing is not None and existing["request"] == request:
        return existing
    staging = staging_folder(directory)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    schema = _schema(metadata | {"upsampler": upsampler.kind})
    stats = DrawStats()
    files: dict[str, int] = {}
    writer, name = None, ""
    for first_star_id, batch in _batches(upsampler, plan, batch_size, stats):
        if writer is None or files[name] >= rows_per_file:
            if writer is not None:
                writer.close()
            name = f"part-{len(files):05d}.parquet"
            files[name] = 0
            writer = pq.ParquetWriter(staging / name, schema)
        star_ids = np.arange(first_star_id, first_star_id + len(batch), dtype=np.uint64)
        writer.write_table(pa.table([star_ids, *batch.T], schema=schema))
        files[name] += len(batch)
    if writer is not None:
        writer.close()
    manifest = {"request": request, "rows": sum(files.values()), "files": files,
                "rejection_rate": stats.rejection_rate, "proposed": stats.proposed}
    if manifest["rows"] != n:
        raise RuntimeError(f"sampled {manifest['rows']} stars, expected {n}; nothing published")
    write_manifest(staging, manifest)
    publish_folder(staging, directory)
    return manifest
