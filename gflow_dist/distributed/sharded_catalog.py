"""Draw a catalog in shards with Ray Data and publish it as HATS Parquet + Zarr, all or nothing.

1. **Sample.** A Ray Data dataset of shard ids (:mod:`gflow_dist.sample.shards`)
   flows through a pool of :class:`ShardSampler` actors. Each loads the saved model once,
   draws its shard batch by batch (memory bounded by ``sample.batch_size``), computes the
   observables and ``_healpix_29`` and streams them into ``shard-K.parquet`` in the
   staging folder ``<out_dir>/.shards``; a record ``shard-K.npz`` (rows, content
   SHA-256, stars per pixel at the counting order) is written after it. Both appear by
   rename only when complete, and a shard whose record matches its request and file
   content is reused, so a rerun after a crash neither duplicates nor drops stars.
2. **Partition.** The merged pixel counts give the partition plan
   (:mod:`gflow_dist.catalog.healpix`). ``ray.data.read_parquet`` of the shard files →
   partition index → ``groupby(partition).map_groups``: every group is sorted by
   ``_healpix_29``, ``star_id`` and written as ``Norder=K/Dir=D/Npix=N.parquet``, one file
   per partition whatever the number of shards (no small-files trap); its row count is
   checked against the plan.
3. **Publish.** ``_metadata``, ``_common_metadata``, ``partition_info.csv`` and
   ``hats.properties`` come from the single-process writer's helpers
   (:mod:`gflow_dist.catalog.hats_writer`), so the layout is the same and lsdb opens it.
   The HATS folder is renamed into place, the Zarr store is built from it, and the shard
   staging is removed. The manifest's request (model hash, n, seed, shard and batch size,
   partitioning, frame, metadata) makes a rerun with the same inputs a no-op.

Fault injection (tests): with ``GFLOW_SHARD_FAULT=K:PATH`` in the driver's environment, the
worker drawing shard K exits the process mid-write when PATH does not exist yet (it
creates PATH first, so it dies once). Ray Data restarts a dead actor and retries the
shard it was drawing (its actor pools default to ``max_restarts=-1``,
``max_task_retries=-1``); the retried draw replaces the half-written ``.partial`` file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist import upsamplers
from gflow_dist.catalog.hats_writer import (
    MANIFEST_FILE,
    METADATA_KEY,
    PARTITIONING_KEYS,
    _partition_table,
    _record_dtype,
    _records,
    _write_kwargs,
    _write_properties,
    catalog_schema,
    catalog_table,
    partition_file,
    publish,
    read_manifest,
)
from gflow_dist.catalog.healpix import (
    PartitionPlan,
    PixelCounter,
    counting_order,
    plan_partitions,
)
from gflow_dist.catalog.observables import SolarFrame
from gflow_dist.catalog.zarr_writer import write_zarr_catalog
from gflow_dist.config import RayConfig, RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.sample.shards import Shard, ShardPlan
from gflow_dist.upsamplers import model_hash
from gflow_dist.upsamplers.base import SPEC_FILE

SHARDS_DIR = ".shards"
FAULT_ENV = "GFLOW_SHARD_FAULT"
_PARTITION = "_partition"
_COMPACT_ENTRIES = 4_000_000


def sampler_pool(config: RayConfig, shards: int) -> int:
    """Sampling actors to run at once: ``ray.max_samplers`` or what the cluster holds."""
    import ray

    available = ray.cluster_resources()
    fits = math.floor(available.get("CPU", 0.0) / config.num_cpus_per_sampler)
    if config.num_gpus_per_sampler > 0:
        fits = min(fits, math.floor(available.get("GPU", 0.0) / config.num_gpus_per_sampler))
    if fits < 1:
        raise GflowError(
            f"no sampling worker fits the cluster ({available.get('CPU', 0.0)} CPUs, "
            f"{available.get('GPU', 0.0)} GPUs): lower ray.num_cpus_per_sampler="
            f"{config.num_cpus_per_sampler} or ray.num_gpus_per_sampler="
            f"{config.num_gpus_per_sampler} (0 on CPU-only clusters)")
    return max(1, min(config.max_samplers or fits, fits, shards))


def _content_hash(table: pa.Table, digest: hashlib._Hash) -> None:
    digest.update(_records(table, _record_dtype(catalog_schema())).tobytes())


def _file_sha256(path: Path) -> str:
    """Content SHA-256 of a shard file: its rows as packed records, in file order."""
    digest = hashlib.sha256()
    for batch in pq.ParquetFile(path).iter_batches(262_144):
        _content_hash(pa.Table.from_batches([batch]), digest)
    return digest.hexdigest()


@dataclass(frozen=True)
class _ShardFiles:
    parquet: Path
    record: Path

    @classmethod
    def of(cls, folder: Path, index: int) -> _ShardFiles:
        return cls(folder / f"shard-{index:06d}.parquet", folder / f"shard-{index:06d}.npz")


def read_shard_record(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(stats, pixels, counts) of a finished shard's ``.npz`` record."""
    with np.load(path, allow_pickle=False) as saved:
        return json.loads(str(saved["record"])), saved["pixels"], saved["counts"]


class ShardSampler:
    """A Ray Data callable class: draws shards of the plan into the staging folder.

    Args:
        model_dir: the saved upsampler, loaded once per actor.
        plan: the shard plan; batches carry shard indices in column ``id``.
        folder: the staging folder of the shard files (shared storage on a cluster).
        key: identifies the inputs (model hash, batch size, frame, counting order); a
            shard file recorded under another key is drawn again.
        frame: the Solar frame of the observables.
        batch_size: stars per drawn batch; bounds the worker's memory.
        order: HEALPix order of the pixel counts.
        fault: test hook ``"K:PATH"``, see the module docstring.
    """

    def __init__(self, model_dir: str, plan: ShardPlan, folder: str, key: str,
                 frame: SolarFrame, batch_size: int, order: int, fault: str | None) -> None:
        self.model = upsamplers.load(model_dir)
        self.plan, self.folder, self.key = plan, Path(folder), key
        self.frame, self.batch_size, self.order = frame, batch_size, order
        self.fault = fault.split(":", 1) if fault else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [self.draw(self.plan.shard(int(k))) for k in batch["id"]]
        return {name: np.array([s[name] for s in stats]) for name in stats[0]}

    def _expected(self, shard: Shard) -> dict:
        return {"key": self.key, "index": shard.index, "first_star_id": shard.first_star_id,
                "count": shard.count, "seed": shard.seed}

    def completed(self, shard: Shard) -> dict | None:
        """The stats of a finished shard file drawn with these inputs, or None."""
        files = _ShardFiles.of(self.folder, shard.index)
        if not (files.record.exists() and files.parquet.exists()):
            return None
        stats, _, _ = read_shard_record(files.record)
        if {k: stats.get(k) for k in self._expected(shard)} != self._expected(shard):
            return None
        try:
            intact = (pq.read_schema(files.parquet).equals(catalog_schema())
                      and pq.read_metadata(files.parquet).num_rows == stats["rows"]
                      and _file_sha256(files.parquet) == stats["sha256"])
        except pa.ArrowInvalid:  # a damaged file is drawn again
            intact = False
        return stats if intact else None

    def draw(self, shard: Shard) -> dict:
        """Draw ``shard`` unless it is complete; returns its stats (``sampled``: drawn now)."""
        done = self.completed(shard)
        if done is not None:
            return done | {"sampled": False}
        start = time.perf_counter()
        files = _ShardFiles.of(self.folder, shard.index)
        partial = files.parquet.with_name(files.parquet.name + ".partial")
        digest, counter, rows = hashlib.sha256(), PixelCounter(self.order), 0
        with pq.ParquetWriter(partial, catalog_schema(), compression="zstd") as writer:
            for stars in self.model.iter_samples(shard.count, shard.seed, self.batch_size):
                table = catalog_table(stars, shard.first_star_id + rows, self.frame)
                rows += len(stars)
                _content_hash(table, digest)
                counter.add(table.column(SPATIAL_INDEX_COLUMN).to_numpy())
                writer.write_table(table)
                self._maybe_die(shard)
        os.replace(partial, files.parquet)
        pixels, counts = counter.counts()
        stats = self._expected(shard) | {
            "rows": rows, "sha256": digest.hexdigest(), "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "pid": os.getpid()}
        partial = files.record.with_name(files.record.name + ".partial")
        with partial.open("wb") as handle:
            np.savez(handle, record=json.dumps(stats), pixels=pixels, counts=counts)
        os.replace(partial, files.record)
        return stats | {"sampled": True}

    def _maybe_die(self, shard: Shard) -> None:
        if self.fault is None or int(self.fault[0]) != shard.index:
            return
        marker = Path(self.fault[1])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)


def _merge(pending: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum sparse (pixels, counts) pairs into one (pixels ascending, counts)."""
    if not pending:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pixels = np.concatenate([p for p, _ in pending]).astype(np.int64)
    counts = np.concatenate([c for _, c in pending]).astype(np.int64)
    unique, inverse = np.unique(pixels, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


@dataclass(frozen=True)
class _Counts:
    """Merged stars per pixel in the shape :func:`plan_partitions` reads."""

    order: int
    pixels: np.ndarray
    numbers: np.ndarray

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.pixels, self.numbers


def _merged_counts(records: list[Path], order: int) -> _Counts:
    """Pixel counts of every shard, merged with memory bounded by the non-empty pixels."""
    merged: list[tuple[np.ndarray, np.ndarray]] = []
    entries = 0
    for path in records:
        _, pixels, counts = read_shard_record(path)
        merged.append((pixels, counts))
        entries += len(pixels)
        if entries > _COMPACT_ENTRIES:
            merged = [_merge(merged)]
            entries = len(merged[0][0])
    return _Counts(order, *_merge(merged))


def sample_shards(model_dir: Path, plan: ShardPlan, folder: Path, key: str, config: RunConfig,
                  shard_ids: list[int] | None = None) -> list[dict]:
    """Draw the plan's shards (or only ``shard_ids``) into ``folder`` on the Ray cluster.

    Returns every shard's stats sorted by index: ``rows``, ``sha256``, ``sampled`` (False
    when a complete file was reused), ``seconds`` and ``peak_rss_mb`` of its draw.
    """
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    indices = list(range(len(plan))) if shard_ids is None else sorted(shard_ids)
    pool = sampler_pool(config.ray, len(indices))
    dataset = ray.data.from_items([{"id": k} for k in indices],
                                  override_num_blocks=len(indices))
    constructor = {"model_dir": str(model_dir), "plan": plan, "folder": str(folder),
                   "key": key, "frame": SolarFrame.from_config(config),
                   "batch_size": config.sample.batch_size,
                   "order": counting_order(config.catalog.partition_order,
                                           config.catalog.highest_order),
                   "fault": os.environ.get(FAULT_ENV)}
    stats = dataset.map_batches(
        ShardSampler, batch_size=1,
        # one shard at a time per actor: a queued shard goes to whichever actor frees first
        compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),
        num_cpus=config.ray.num_cpus_per_sampler,
        num_gpus=config.ray.num_gpus_per_sampler or None,
        fn_constructor_kwargs=constructor).take_all()
    stats = sorted(({k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
                    for row in stats), key=lambda row: row["index"])
    if [row["index"] for row in stats] != indices:
        raise RuntimeError(f"sampled shards {[row['index'] for row in stats]}, expected "
                           f"{indices}; nothing published")
    return stats


def _assign_partitions(table: pa.Table, plan: PartitionPlan) -> pa.Table:
    partition = plan.assign(table.column(SPATIAL_INDEX_COLUMN).to_numpy())
    return table.append_column(_PARTITION, pa.array(partition, pa.int64()))


def _write_group(table: pa.Table, plan: PartitionPlan, schema: pa.Schema,
                 dataset: str) -> pa.Table:
    """Sort and write one partition's stars; returns (partition, rows)."""
    index = int(table.column(_PARTITION)[0].as_py())
    records = _records(table, _record_dtype(schema))
    path = Path(dataset) / partition_file(plan.pixels[index])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_partition_table(records, schema), path, **_write_kwargs(schema))
    return pa.table({"partition": [index], "rows": [len(records)]})


def _write_hats(shard_files: list[Path], plan: PartitionPlan, staging: Path, name: str,
                config: RunConfig, metadata: dict[str, str]) -> None:
    """Write the partitions with Ray, check them against the plan, add the HATS metadata."""
    import ray
    from ray.data.context import ShuffleStrategy

    schema = catalog_schema().with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    dataset = staging / "dataset"
    writers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    stars = ray.data.read_parquet([str(p) for p in shard_files])
    # task-based sort shuffle: no aggregator actors, spills to disk past the object store
    stars.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    written = (stars
               .map_batches(_assign_partitions, fn_kwargs={"plan": plan}, batch_format="pyarrow")
               .groupby(_PARTITION, num_partitions=min(len(plan.pixels), writers))
               .map_groups(_write_group, batch_format="pyarrow",
                           fn_kwargs={"plan": plan, "schema": schema, "dataset": str(dataset)})
               .take_all())
    rows = {int(row["partition"]): int(row["rows"]) for row in written}
    expected = dict(enumerate(plan.counts))
    if rows != expected:
        wrong = sorted(k for k in expected.keys() | rows.keys() if rows.get(k) != expected.get(k))
        raise RuntimeError(f"partitions {[str(plan.pixels[k]) for k in wrong[:5]]} hold "
                           f"{[rows.get(k, 0) for k in wrong[:5]]} stars, the plan counted "
                           f"{[expected.get(k, 0) for k in wrong[:5]]}; nothing published")
    footers = []
    for pixel in plan.pixels:
        footer = pq.read_metadata(dataset / partition_file(pixel))
        footer.set_file_path(partition_file(pixel))
        footers.append(footer)
    pq.write_metadata(schema, dataset / "_common_metadata")
    pq.write_metadata(schema, dataset / "_metadata", metadata_collector=footers)
    _write_properties(staging, name, plan, config.catalog, metadata)


def shard_key(model_sha256: str, config: RunConfig) -> str:
    """Identifies what a shard file's content depends on besides the plan: model, batch
    size, Solar frame and counting order."""
    order = counting_order(config.catalog.partition_order, config.catalog.highest_order)
    return hashlib.sha256(json.dumps([model_sha256, config.sample.batch_size,
                                      SolarFrame.from_config(config).to_metadata(), order],
                                     sort_keys=True).encode()).hexdigest()


def write_sharded_catalog(model_dir: Path, n: int, seed: int, out_dir: Path, config: RunConfig,
                          metadata: dict[str, str]) -> dict:
    """Draw ``n`` stars of the saved model in shards and publish ``out_dir/hats`` (+ Zarr).

    Args:
        model_dir: a saved upsampler (``spec.json`` + weights) on storage every node sees.
        n: stars in the catalog; star_id runs 0..n-1.
        seed: the draw's seed; shard k draws with ``shard_seed(seed, k)``.
        out_dir: the catalog folder: ``hats/``, ``stars.zarr`` (``catalog.zarr``) and,
            while running, the shard staging ``.shards/``.
        config: ``sample.shard_size``, ``sample.batch_size``, the ``catalog`` partitioning,
            the ``ray`` sampler pool and the Solar frame (``galaxy``).
        metadata: flat provenance strings, stored as in the single-process writer.

    Returns the HATS manifest: ``request``, ``rows``, ``partitions`` [[order, pixel, rows]],
    ``content_sha256``, per-shard ``shards`` [[index, rows, sha256]] and ``run``: shards
    ``sampled`` or ``reused`` from the staging, ``sample_seconds`` and ``seconds`` (wall
    time to the end of the sampling and of the partition writing) and ``workers`` (per
    sampling process: shards, rows, draw seconds, peak RSS [MiB]) of the run that wrote it;
    a no-op rerun returns that manifest unchanged.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    start = time.perf_counter()
    plan = ShardPlan(n, config.sample.shard_size, seed)
    frame = SolarFrame.from_config(config)
    model = model_hash(model_dir)
    name = metadata.get("upsampler") or json.loads((model_dir / SPEC_FILE).read_text())["kind"]
    request = {"model_sha256": model, "n": n, "seed": seed,
               "shard_size": config.sample.shard_size, "batch_size": config.sample.batch_size,
               "catalog_name": name, "frame": frame.to_metadata(),
               "partitioning": config.catalog.model_dump(mode="json", include=PARTITIONING_KEYS),
               "metadata_sha256": hashlib.sha256(
                   json.dumps(metadata, sort_keys=True).encode()).hexdigest()}
    hats, folder = out_dir / "hats", out_dir / SHARDS_DIR
    manifest = read_manifest(hats)
    if manifest is None or manifest["request"] != request:
        stats = sample_shards(model_dir, plan, folder, shard_key(model, config), config)
        manifest = _partition_and_publish(plan, stats, folder, hats, name, config, metadata,
                                          request, start)
    if config.catalog.zarr:
        write_zarr_catalog(hats, out_dir / "stars.zarr")
    shutil.rmtree(folder, ignore_errors=True)
    return manifest


def _worker_stats(stats: list[dict]) -> list[dict]:
    """Per sampling process: shards, stars, draw seconds and peak RSS [MiB] of its draws."""
    workers: dict[int, dict] = {}
    for row in stats:
        worker = workers.setdefault(row["pid"], {"pid": row["pid"], "shards": 0, "rows": 0,
                                                 "seconds": 0.0, "peak_rss_mb": 0.0})
        worker["shards"] += 1
        worker["rows"] += row["rows"]
        worker["seconds"] += row["seconds"]
        worker["peak_rss_mb"] = max(worker["peak_rss_mb"], row["peak_rss_mb"])
    return sorted(workers.values(), key=lambda worker: worker["pid"])


def _partition_and_publish(plan: ShardPlan, stats: list[dict], folder: Path, hats: Path,
                           name: str, config: RunConfig, metadata: dict[str, str],
                           request: dict, start: float) -> dict:
    files = [_ShardFiles.of(folder, row["index"]) for row in stats]
    wrong = [row["index"] for row, shard in zip(stats, plan, strict=True)
             if row["rows"] != shard.count]
    if wrong:
        raise RuntimeError(f"shards {wrong[:5]} hold the wrong number of stars; nothing "
                           "published")
    counts = _merged_counts([f.record for f in files], counting_order(
        config.catalog.partition_order, config.catalog.highest_order))
    partitions = plan_partitions(counts, config.catalog.partition_order,
                                 config.catalog.max_rows_per_partition)
    if partitions.total_rows != plan.total:
        raise RuntimeError(f"the shards' pixel counts hold {partitions.total_rows} stars, the "
                           f"plan {plan.total}; nothing published")
    staging = hats.with_name(f".{hats.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shas = [row["sha256"] for row in stats]
    manifest = {"request": request, "rows": partitions.total_rows,
                "partitions": [[p.order, p.pixel, c]
                               for p, c in zip(partitions.pixels, partitions.counts, strict=True)],
                "content_sha256": hashlib.sha256("".join(shas).encode()).hexdigest(),
                "shards": [[row["index"], row["rows"], row["sha256"]] for row in stats],
                "run": {"sampled": sum(row["sampled"] for row in stats),
                        "reused": sum(not row["sampled"] for row in stats),
                        "sample_seconds": time.perf_counter() - start,
                        "workers": _worker_stats(stats)}}
    try:
        _write_hats([f.parquet for f in files], partitions, staging, name, config, metadata)
        manifest["run"]["seconds"] = time.perf_counter() - start
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish(staging, hats)
    return manifest
