"""The ingest stage: read or generate particles, select the sphere, split train/test.

Writes ``DIR/particles/train.parquet`` and ``test.parquet`` (the paper's 1:1 split,
§5.3), ``DIR/particles/summary.json`` and ``DIR/particles/ingest_key.json``: what the
particles were made from (the source's content and the selection). The folder is written
whole in a staging folder and swapped into place (:func:`gflow_dist.outputs.publish_folder`),
so an interrupted ingest leaves the particles of the last complete one, or none. The stage
is deterministic in the config, so a rerun rewrites identical files. Later stages use the
particles only when their key matches the config (:func:`check_ingested`).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gflow_dist.config import MIN_TRAIN_PARTICLES, RunConfig
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.particle_io import read_written_particles, write_particles
from gflow_dist.data.particles import ParticleSet
from gflow_dist.data.readers import check_particle_file, read_particles, sha256_file
from gflow_dist.data.selection import SelectionSummary, select_sphere, split_train_test, summarize
from gflow_dist.errors import InputError
from gflow_dist.faults import kill_point
from gflow_dist.outputs import publish_folder, staging_folder
from gflow_dist.provenance import run_metadata

PARTICLES_DIR = "particles"
TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
SUMMARY_FILE = "summary.json"
INGEST_KEY_FILE = "ingest_key.json"


@dataclass(frozen=True)
class Ingested:
    """The selected particles, split into the halves the upsamplers train and are tested on."""

    train: ParticleSet
    test: ParticleSet
    summary: SelectionSummary
    key: dict[str, Any]
    """:func:`ingest_key` of the config the particles were selected with."""


def mock_galaxy(config: RunConfig) -> MockGalaxy:
    """The built-in mock galaxy, normalised inside the configured selection sphere."""
    return MockGalaxy(sun_position_kpc=config.galaxy.frame.sun_position_kpc,
                      r_max_kpc=config.galaxy.r_max_kpc)


def load_particles(config: RunConfig) -> ParticleSet:
    """All particles of ``galaxy.source``: the mock galaxy or a particle file."""
    galaxy = config.galaxy
    if galaxy.source == "mock":
        mock = galaxy.mock
        return mock_galaxy(config).particles(mock.n_particles, config.seed,
                                             mock.particle_mass_msun)
    return read_particles(galaxy.source, galaxy.format, galaxy.max_speed_kms)


def ingest_key(config: RunConfig, source_sha256: str | None = None) -> dict[str, Any]:
    """What ingested particles depend on, by config key: the source and the selection.

    A particle file counts by the sha256 of its bytes (``source_sha256``, computed when
    not given), not by its path; the mock galaxy by its parameters and the seed.
    """
    galaxy = config.galaxy
    if galaxy.source == "mock":
        source: dict[str, Any] = {"mock": galaxy.mock.model_dump()}
    else:
        path = check_particle_file(galaxy.source)
        stat = path.stat()
        sha256 = source_sha256 or _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
        source = {"sha256": sha256, "format": galaxy.format}
    return {"galaxy.source": source,
            "galaxy.sun_position_kpc": list(galaxy.frame.sun_position_kpc),
            "galaxy.r_max_kpc": galaxy.r_max_kpc,
            "split.test_fraction": config.split.test_fraction, "seed": config.seed}


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes, hashed once per process while its size and mtime hold."""
    return sha256_file(Path(path))


def check_train_size(train: ParticleSet, config: RunConfig) -> None:
    """Raise InputError when the train half is too small to fit a model to."""
    if len(train) >= MIN_TRAIN_PARTICLES:
        return
    galaxy = config.galaxy
    raise InputError(
        f"{train.provenance.get('source', galaxy.source)}: only {len(train)} train particles "
        f"within galaxy.r_max_kpc = {galaxy.r_max_kpc:g} kpc after the split "
        f"(split.test_fraction = {config.split.test_fraction:g}); the upsamplers need at "
        f"least {MIN_TRAIN_PARTICLES}: use more particles, a larger galaxy.r_max_kpc or a "
        "smaller split.test_fraction"
    )


def ingest(config: RunConfig) -> Ingested:
    """Load, select within r_max of the Sun, and split (seeded by ``config.seed``).

    Raises:
        InputError: the source is unusable, or the train half holds fewer than
            :data:`~gflow_dist.config.MIN_TRAIN_PARTICLES` particles.
    """
    galaxy = config.galaxy
    particles = load_particles(config)
    selected = select_sphere(particles, galaxy.frame, galaxy.r_max_kpc)
    train, test = split_train_test(selected, config.seed, config.split.test_fraction)
    check_train_size(train, config)
    return Ingested(train, test, summarize(selected, galaxy.frame, galaxy.r_max_kpc),
                    ingest_key(config, particles.provenance.get("sha256")))


def write_ingested(ingested: Ingested, config: RunConfig, out: str | Path) -> Path:
    """Publish both halves, the summary and the ingest key as ``out/particles``, all at
    once; returns that folder."""
    folder = Path(out) / PARTICLES_DIR
    staging = staging_folder(folder)
    shutil.rmtree(staging, ignore_errors=True)
    metadata = run_metadata(config)
    write_particles(ingested.train, staging / TRAIN_FILE, metadata | {"split": "train"})
    write_particles(ingested.test, staging / TEST_FILE, metadata | {"split": "test"})
    kill_point("ingest")
    summary = asdict(ingested.summary) | {"train": len(ingested.train),
                                          "test": len(ingested.test)}
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    (staging / INGEST_KEY_FILE).write_text(json.dumps(ingested.key, indent=2, sort_keys=True))
    publish_folder(staging, folder)
    return folder


def recorded_ingest_key(out: str | Path) -> dict[str, Any] | None:
    """The :func:`ingest_key` written with the particles in ``out``, or None when absent."""
    path = Path(out) / PARTICLES_DIR / INGEST_KEY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_ingested(config: RunConfig, out: str | Path) -> bool:
    """Whether ``out`` holds particles ingested with this config's source and selection.

    Returns False when ``out`` holds no particles yet.

    Raises:
        InputError: ``out`` holds particles of another source or selection, or ones
            whose ingest key was never recorded; they are never reused silently.
    """
    folder = Path(out) / PARTICLES_DIR
    if not (folder / TRAIN_FILE).exists():
        return False
    recorded = recorded_ingest_key(out)
    expected = ingest_key(config)
    if recorded == expected:
        return True
    differ = ("no ingest key was recorded (they were ingested by an older gflow-dist)"
              if recorded is None else
              "they differ in " + ", ".join(k for k in expected if recorded.get(k) != expected[k]))
    raise InputError(
        f"{folder} holds particles that were not ingested from this config's galaxy.source "
        f"and selection: {differ}. Use a fresh --out, or run `gflow ingest` with this config "
        f"and --out {out} to replace them (models trained on the old particles are retrained)"
    )


def read_ingested(out: str | Path) -> tuple[ParticleSet, ParticleSet]:
    """The (train, test) halves written by :func:`write_ingested`."""
    folder = Path(out) / PARTICLES_DIR
    train, _ = read_written_particles(folder / TRAIN_FILE)
    test, _ = read_written_particles(folder / TEST_FILE)
    return train, test
