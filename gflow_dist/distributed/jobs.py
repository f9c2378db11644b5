"""Job entrypoints: ingest → train → sample → catalog → evaluate, functions of (config, out).

Output layout under ``out``:

- ``particles/train.parquet``, ``particles/test.parquet``, ``particles/summary.json``;
- ``models/<name>/``: a saved upsampler (``spec.json`` + weights) and ``training/``
  (per-member checkpoints and loss curves);
- ``catalog/<name>/hats/`` (HATS Parquet: lsdb, Dask) and ``catalog/<name>/stars.zarr``
  (xarray): stars drawn in seeded shards on Ray with their observables, partitioned by
  HEALPix;
- ``samples/<name>/``, written by ``gflow sample`` only: the same stars (same star_id,
  same shards) as flat Parquet parts of x…vz, drawn in one process;
- ``figures/<name>/``: the paper's figures from each catalog;
- ``report.json``, ``report.md`` and figures: the evaluation (classifier tests, truth
  scores) of the upsamplers;
- ``run.json``: the resolved config, versions, seeds and frame, written once the
  particles are ingested.

Every stage is idempotent: a rerun with the same config finds its outputs and skips,
and an interrupted training resumes from its checkpoints. Particles ingested from another
source or selection are never reused: the stages refuse them
(:func:`~gflow_dist.data.ingest.check_ingested`). Each stage takes the particles
:func:`gflow_dist.preflight.check_job` already read, when it read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from gflow_dist import upsamplers
from gflow_dist.catalog.observables import SolarFrame
from gflow_dist.catalog.plots import SkyWindow, make_figures
from gflow_dist.config import RunConfig
from gflow_dist.data.ingest import (
    Ingested,
    check_ingested,
    ingest,
    read_ingested,
    recorded_ingest_key,
    write_ingested,
)
from gflow_dist.distributed.catalog_stages import write_sharded_catalog
from gflow_dist.distributed.checkpoints import model_checkpoint_uri
from gflow_dist.distributed.training import ray_member_runner
from gflow_dist.evaluate.report import evaluate
from gflow_dist.provenance import run_metadata
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.sample.writer import write_samples
from gflow_dist.upsamplers import model_hash
from gflow_dist.upsamplers.base import SPEC_FILE, Upsampler

logger = logging.getLogger(__name__)

TRAINING_DIR = "training"
TRAINING_KEY_FILE = "training_key.json"


def _echo(message: str) -> None:
    print(message, flush=True)


def run_ingest(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Select and split the particles (or take ``ingested``), and write them with a summary."""
    ingested = ingested or ingest(config)
    folder = write_ingested(ingested, config, out)
    _echo(f"selected {ingested.summary}")
    _echo(f"split into {len(ingested.train):,} train and {len(ingested.test):,} test "
          f"particles -> {folder}")


def _ensure_ingested(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Ingest unless ``out`` holds particles of this config's source and selection.

    Particles of another source or selection raise InputError (never reused silently).
    """
    if not check_ingested(config, out):
        run_ingest(config, out, ingested)


def training_key(config: RunConfig, name: str, particles: dict | None) -> str:
    """Hash of everything a model's training depends on (not sampling or cluster settings).

    ``particles`` is the ingest key of the train particles (their source's content and
    selection), so a model is retrained when its particles change.
    """
    relevant = {key: value for key, value in config.to_dict().items()
                if key not in ("sample", "ray", "upsamplers")}
    relevant["upsampler"] = name
    relevant["particles"] = particles
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def train_one(config: RunConfig, name: str, out: Path) -> Upsampler:
    """Fit upsampler ``name`` on the train half, or load it when already trained."""
    directory = out / "models" / name
    key = training_key(config, name, recorded_ingest_key(out))
    key_file = directory / TRAINING_DIR / TRAINING_KEY_FILE
    if (directory / SPEC_FILE).exists() and key_file.exists() and key_file.read_text() == key:
        _echo(f"{name}: already trained with this config -> {directory}")
        return upsamplers.load(directory)
    if key_file.exists() and key_file.read_text() != key:
        shutil.rmtree(directory)  # stale checkpoints of another config must not be resumed
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    train, _ = read_ingested(out)
    model = upsamplers.create(name, config)
    runner = ray_member_runner(
        config.ray.num_cpus_per_member, config.ray.num_gpus_per_member,
        checkpoint_uri=model_checkpoint_uri(config.ray.checkpoint_uri, name, key))
    section = getattr(config, name, None)
    cap = getattr(section, "max_train_particles", None)
    used = min(cap, len(train)) if cap else len(train)
    _echo(f"{name}: training on {used:,} of the {len(train):,} train particles")
    model.fit(train, config.seed, workdir=directory / TRAINING_DIR, runner=runner)
    model.save(directory, metadata=run_metadata(config))
    if model.fit_summary():
        _echo(f"{name}: {model.fit_summary()}")
    _echo(f"{name}: saved -> {directory}")
    return model


def run_train(config: RunConfig, out: Path,
              ingested: Ingested | None = None) -> dict[str, Upsampler]:
    """Fit every configured upsampler."""
    _ensure_ingested(config, out, ingested)
    return {name: train_one(config, name, out) for name in config.upsamplers}


def sample_count(config: RunConfig, n_train: int) -> int:
    """``sample.total``, or ``sample.factor`` stars per train particle (paper: 500)."""
    if config.sample.total is not None:
        return config.sample.total
    return round(config.sample.factor * n_train)


def run_sample(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Draw and publish each upsampler's stars under ``out/samples/<name>``, in this process.

    The catalog's stars, as a flat file: the same shard plan, seeds and star_ids.
    """
    models = run_train(config, out, ingested)
    train, _ = read_ingested(out)
    plan = ShardPlan(sample_count(config, len(train)), config.sample.shard_size, config.seed)
    for name, model in models.items():
        metadata = run_metadata(config) | {"model_sha256": model_hash(out / "models" / name)}
        manifest = write_samples(model, plan, out / "samples" / name, metadata,
                                 config.sample.batch_size)
        _echo(f"{name}: {manifest['rows']:,} stars (rejection rate "
              f"{manifest['rejection_rate']:.2%}) -> {out / 'samples' / name}")


def write_run_record(config: RunConfig, out: Path) -> None:
    """``out/run.json``: the resolved config, seeds, frame and versions."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(run_metadata(config), indent=2))


def catalog_dir(out: Path, name: str) -> Path:
    """Where upsampler ``name``'s catalog lives: ``hats/`` and ``stars.zarr`` inside."""
    return out / "catalog" / name


def run_catalog(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Draw each upsampler's stars in shards on Ray into HEALPix-partitioned catalogs.

    The shards follow ``ShardPlan(n, sample.shard_size, seed)``: each has its own seed, a
    rerun reuses the shards already drawn, and the catalog is published all at once
    (:mod:`gflow_dist.distributed.sharded_catalog`). Then the figures are drawn from it.
    """
    run_train(config, out, ingested)
    frame = SolarFrame.from_config(config)
    train, _ = read_ingested(out)
    n = sample_count(config, len(train))
    ra, dec, radius = config.catalog.figure_window_deg
    for name in config.upsamplers:
        folder, model_dir = catalog_dir(out, name), out / "models" / name
        metadata = (run_metadata(config) | frame.to_metadata()
                    | {"upsampler": name, "model_sha256": model_hash(model_dir)})
        manifest = write_sharded_catalog(model_dir, n, config.seed, folder, config, metadata)
        _echo(f"{name}: HATS catalog of {manifest['rows']:,} stars from "
              f"{len(manifest['shards'])} shards in {len(manifest['partitions'])} HEALPix "
              f"partitions -> {folder / 'hats'}"
              + (f" (+ {folder / 'stars.zarr'})" if config.catalog.zarr else ""))
        figures = make_figures(folder / "hats", out / "figures" / name,
                               window=SkyWindow(ra, dec, radius), particles=train.phase_space,
                               frame=frame, title=name)
        _echo(f"{name}: {len(figures)} figures -> {out / 'figures' / name}")


def run_evaluate(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Compare the configured upsamplers with the classifier tests; write the report."""
    if len(config.upsamplers) < 2:
        _echo(f"evaluate: skipped, the multi-model test needs 2 or more upsamplers "
              f"(configured: {', '.join(config.upsamplers)})")
        return
    models = run_train(config, out, ingested)
    train, test = read_ingested(out)
    evaluate(config, models, train, test, out,
             model_dirs={name: out / "models" / name for name in models})


def run_all(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """The main job: ingest → train → catalog → evaluate.

    The catalog stage draws the stars, in shards on the cluster; ``gflow sample`` writes
    the same stars as a flat file in one process, so the main job leaves it out.
    ``run.json`` is written once the particles are.
    """
    run_ingest(config, out, ingested)
    write_run_record(config, out)
    run_catalog(config, out)
    if config.evaluate.enabled:
        run_evaluate(config, out)
