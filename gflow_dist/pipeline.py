"""The stages of a run: ingest → train → catalog → evaluate (and ``sample``), with the
cluster as a parameter.

Each stage is a function of (config, out, runners). :class:`Runners` says where the
parallel work goes: ensemble members, the catalog's shards and partitions, and the
evaluation's draws and classifier. :func:`local_runners` runs everything in this process;
:func:`gflow_dist.distributed.runners.ray_runners` runs it on a Ray cluster. The stages
themselves never import Ray.

Output layout under ``out``:

- ``particles/train.parquet``, ``particles/test.parquet``, ``particles/summary.json``;
- ``models/<name>/``: a saved upsampler (``spec.json`` + weights) and ``training/``
  (per-member checkpoints and loss curves);
- ``catalog/<name>/hats/`` (HATS Parquet: lsdb, Dask) and ``catalog/<name>/stars.zarr``
  (xarray): stars drawn in seeded shards with their observables, partitioned by HEALPix;
  with ``margin/``, ``index/`` and ``collection.properties``, ``catalog/<name>`` is the
  HATS collection of the catalog, its margin cache and its star_id index;
- ``samples/<name>/``, written by ``gflow sample`` only: the same stars (same star_id,
  same shards) as flat Parquet parts of x…vz, drawn in one process;
- ``figures/<name>/``: the paper's figures from each catalog;
- ``report.json``, ``report.md`` and figures: the evaluation (classifier tests, truth
  scores) of the upsamplers;
- ``run.json``: the resolved config, versions, seeds and frame, written once the
  particles are ingested.

Progress goes to the ``gflow_dist.pipeline`` logger. Every stage is idempotent: a rerun
with the same config finds its outputs and skips. A stage interrupted at any point, even
by SIGKILL, leaves its previous complete output or none, and checkpoints its rerun
resumes from: the particles, catalogs and figures are published whole
(:func:`gflow_dist.outputs.publish_folder`), a model is complete once its ``spec.json``
is written (last), training resumes from its epoch checkpoints and a catalog from its
drawn shards (``tests/test_interrupted_runs.py``). Particles ingested from another
source or selection are never reused: the stages refuse them
(:func:`~gflow_dist.data.ingest.check_ingested`). Each stage takes the particles
:func:`gflow_dist.preflight.check_job` already read, when it read them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gflow_dist import upsamplers
from gflow_dist.catalog.build import CatalogRunner, write_catalog
from gflow_dist.catalog.local import LocalCatalogRunner
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
from gflow_dist.evaluate.execution import ClassifierTestRunner, InProcessTests
from gflow_dist.evaluate.report import evaluate
from gflow_dist.outputs import (
    publish_folder,
    remove_folder,
    staging_folder,
    write_text_atomically,
)
from gflow_dist.provenance import run_metadata
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.sample.writer import write_samples
from gflow_dist.upsamplers import model_hash
from gflow_dist.upsamplers.base import SPEC_FILE, MemberRunner, Upsampler, run_members_here

logger = logging.getLogger(__name__)

TRAINING_DIR = "training"
TRAINING_KEY_FILE = "training_key.json"

MemberRunnerFactory = Callable[[RunConfig, str, str], MemberRunner]
"""(config, upsampler name, training key) → the runner that trains that model's members."""


@dataclass(frozen=True)
class Runners:
    """Where each stage's parallel work runs.

    Attributes:
        members: makes the runner of one model's ensemble members.
        catalog: makes the runner of a catalog's shard draws and partition writes.
        classifier_tests: makes the runner of the evaluation's draws and classifier.
    """

    members: MemberRunnerFactory
    catalog: Callable[[RunConfig], CatalogRunner]
    classifier_tests: Callable[[RunConfig], ClassifierTestRunner]


def local_runners() -> Runners:
    """Everything in this process, one step after another."""
    return Runners(members=lambda config, name, key: run_members_here,
                   catalog=lambda config: LocalCatalogRunner(),
                   classifier_tests=lambda config: InProcessTests(config.sample.shard_size,
                                                                  config.sample.batch_size))


def run_ingest(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Select and split the particles (or take ``ingested``), and write them with a summary.

    Ingesting needs no cluster, so it takes no runners.
    """
    ingested = ingested or ingest(config)
    folder = write_ingested(ingested, config, out)
    logger.info("selected %s", ingested.summary)
    logger.info("split into %s train and %s test particles -> %s", f"{len(ingested.train):,}",
                f"{len(ingested.test):,}", folder)


def _ensure_ingested(config: RunConfig, out: Path, ingested: Ingested | None = None) -> None:
    """Ingest unless ``out`` holds particles of this config's source and selection.

    Particles of another source or selection raise InputError (never reused silently).
    """
    if not check_ingested(config, out):
        run_ingest(config, out, ingested)


def training_key(config: RunConfig, name: str, particles: dict | None) -> str:
    """Hash of everything model ``name``'s training depends on, and nothing else.

    That is the galaxy (source, Solar frame, sphere), the split, the seed, the config
    sections the model reads (:attr:`Upsampler.config_sections`) and ``particles``, the
    ingest key of the train particles (their source's content and selection). A change
    to any other section (``evaluate``, ``catalog``, ``sample``, ``ray``, another
    upsampler's) keeps the trained model.
    """
    settings = config.to_dict()
    relevant = {key: settings[key] for key in ("galaxy", "split", "seed")}
    relevant |= {key: settings[key] for key in upsamplers.kind(name).config_sections}
    relevant["upsampler"] = name
    relevant["particles"] = particles
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def train_one(config: RunConfig, name: str, out: Path, runners: Runners) -> Upsampler:
    """Fit upsampler ``name`` on the train half, or load it when already trained."""
    directory = out / "models" / name
    key = training_key(config, name, recorded_ingest_key(out))
    key_file = directory / TRAINING_DIR / TRAINING_KEY_FILE
    if not (key_file.exists() and key_file.read_text() == key):
        # checkpoints of another config, or of none recorded, must not be resumed
        remove_folder(directory)
        key_file.parent.mkdir(parents=True)
        write_text_atomically(key_file, key)
    elif (directory / SPEC_FILE).exists():  # without it, an interrupted training: resumed
        logger.info("%s: already trained with this config -> %s", name, directory)
        return upsamplers.load(directory)
    train, _ = read_ingested(out)
    model = upsamplers.create(name, config)
    section = getattr(config, name, None)
    cap = getattr(section, "max_train_particles", None)
    used = min(cap, len(train)) if cap else len(train)
    logger.info("%s: training on %s of the %s train particles", name, f"{used:,}",
                f"{len(train):,}")
    model.fit(train, config.seed, workdir=directory / TRAINING_DIR,
              runner=runners.members(config, name, key))
    model.save(directory, metadata=run_metadata(config))
    if model.fit_summary():
        logger.info("%s: %s", name, model.fit_summary())
    logger.info("%s: saved -> %s", name, directory)
    return model


def run_train(config: RunConfig, out: Path, runners: Runners,
              ingested: Ingested | None = None) -> dict[str, Upsampler]:
    """Fit every configured upsampler."""
    _ensure_ingested(config, out, ingested)
    return {name: train_one(config, name, out, runners) for name in config.upsamplers}


def sample_count(config: RunConfig, n_train: int) -> int:
    """``sample.total``, or ``sample.factor`` stars per train particle (paper: 500)."""
    if config.sample.total is not None:
        return config.sample.total
    return round(config.sample.factor * n_train)


def run_sample(config: RunConfig, out: Path, runners: Runners,
               ingested: Ingested | None = None) -> None:
    """Draw and publish each upsampler's stars under ``out/samples/<name>``, in this process.

    The catalog's stars, as a flat file: the same shard plan, seeds and star_ids.
    """
    models = run_train(config, out, runners, ingested)
    train, _ = read_ingested(out)
    plan = ShardPlan(sample_count(config, len(train)), config.sample.shard_size, config.seed)
    for name, model in models.items():
        metadata = run_metadata(config) | {"model_sha256": model_hash(out / "models" / name)}
        manifest = write_samples(model, plan, out / "samples" / name, metadata,
                                 config.sample.batch_size)
        logger.info("%s: %s stars (rejection rate %.2f%%) -> %s", name,
                    f"{manifest['rows']:,}", 100 * manifest["rejection_rate"],
                    out / "samples" / name)


def write_run_record(config: RunConfig, out: Path) -> None:
    """``out/run.json``: the resolved config, seeds, frame and versions."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out / "run.json", json.dumps(run_metadata(config), indent=2))


def catalog_dir(out: Path, name: str) -> Path:
    """Where upsampler ``name``'s catalog lives: ``hats/`` and ``stars.zarr`` inside."""
    return out / "catalog" / name


def run_catalog(config: RunConfig, out: Path, runners: Runners,
                ingested: Ingested | None = None) -> None:
    """Draw each upsampler's stars in shards into HEALPix-partitioned catalogs.

    The shards follow ``ShardPlan(n, sample.shard_size, seed)``: each has its own seed, a
    rerun reuses the shards already drawn, and the catalog is published all at once
    (``runners.catalog``). Then the figures are drawn from it.
    """
    run_train(config, out, runners, ingested)
    frame = config.galaxy.frame
    train, _ = read_ingested(out)
    n = sample_count(config, len(train))
    ra, dec, radius = config.catalog.figure_window_deg
    for name in config.upsamplers:
        folder, model_dir = catalog_dir(out, name), out / "models" / name
        metadata = run_metadata(config) | {"upsampler": name,
                                           "model_sha256": model_hash(model_dir)}
        manifest = write_catalog(model_dir, n, config.seed, folder, config, metadata,
                                 runners.catalog(config))
        logger.info("%s: HATS catalog of %s stars from %d shards in %d HEALPix partitions "
                    "-> %s%s", name, f"{manifest['rows']:,}", len(manifest["shards"]),
                    len(manifest["partitions"]), folder / "hats",
                    f" (+ {folder / 'stars.zarr'})" if config.catalog.zarr else "")
        figures_dir = out / "figures" / name
        staging = staging_folder(figures_dir)
        shutil.rmtree(staging, ignore_errors=True)
        figures = make_figures(folder / "hats", staging, window=SkyWindow(ra, dec, radius),
                               particles=train.phase_space, frame=frame, title=name)
        publish_folder(staging, figures_dir)
        logger.info("%s: %d figures -> %s", name, len(figures), figures_dir)


def run_evaluate(config: RunConfig, out: Path, runners: Runners,
                 ingested: Ingested | None = None) -> None:
    """Compare the configured upsamplers with the classifier tests; write the report."""
    if len(config.upsamplers) < 2:
        logger.info("evaluate: skipped, the multi-model test needs 2 or more upsamplers "
                    "(configured: %s)", ", ".join(config.upsamplers))
        return
    models = run_train(config, out, runners, ingested)
    train, test = read_ingested(out)
    evaluate(config, models, train, test, out, runners.classifier_tests(config))


def run_all(config: RunConfig, out: Path, runners: Runners,
            ingested: Ingested | None = None) -> None:
    """The main job: ingest → train → catalog → evaluate.

    The catalog stage draws the stars, in shards on the cluster; ``gflow sample`` writes
    the same stars as a flat file in one process, so the main job leaves it out.
    ``run.json`` is written once the particles are.
    """
    run_ingest(config, out, ingested)
    write_run_record(config, out)
    run_catalog(config, out, runners)
    if config.evaluate.enabled:
        run_evaluate(config, out, runners)
