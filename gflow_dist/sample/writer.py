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

from gflow_dist.data.particle_io import UNITS
from gflow_dist.data.particles import PHASE_SPACE_COLUMNS
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.sample.window import DrawStats
from gflow_dist.upsamplers.base import Upsampler

MANIFEST_FILE = "_manifest.json"


def _schema(metadata: dict[str, str]) -> pa.Schema:
    fields = [pa.field("star_id", pa.uint64())]
    fields += [pa.field(c, pa.float64(), metadata={"unit": UNITS[c]})
               for c in PHASE_SPACE_COLUMNS]
    return pa.schema(fields, metadata={"gflow_dist": json.dumps(metadata, sort_keys=True)})


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of a published sample, or None when there is none."""
    path = Path(directory) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else None


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
    staging = directory.with_name(f".{directory.name}.staging")
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
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    _publish(staging, directory)
    return manifest


def _publish(staging: Path, directory: Path) -> None:
    """Swap ``staging`` into ``directory``; the old content is removed only afterwards."""
    retired = directory.with_name(f".{directory.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    if directory.exists():
        directory.rename(retired)
    staging.rename(directory)
    shutil.rmtree(retired, ignore_errors=True)
