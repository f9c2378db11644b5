"""The ingest stage: read or generate particles, select the sphere, split train/test.

Writes ``DIR/particles/train.parquet`` and ``test.parquet`` (the paper's 1:1 split,
§5.3) and ``DIR/particles/summary.json``. The stage is deterministic in the config, so
a rerun rewrites identical files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from gflow_dist.config import RunConfig
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.particle_io import read_written_particles, write_particles
from gflow_dist.data.particles import ParticleSet
from gflow_dist.data.readers import read_particles
from gflow_dist.data.selection import SelectionSummary, select_sphere, split_train_test, summarize
from gflow_dist.provenance import run_metadata

PARTICLES_DIR = "particles"
TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Ingested:
    """The selected particles, split into the halves the upsamplers train and are tested on."""

    train: ParticleSet
    test: ParticleSet
    summary: SelectionSummary


def mock_galaxy(config: RunConfig) -> MockGalaxy:
    """The built-in mock galaxy, normalised inside the configured selection sphere."""
    return MockGalaxy(sun_position_kpc=tuple(config.galaxy.sun_position_kpc),
                      r_max_kpc=config.galaxy.r_max_kpc)


def load_particles(config: RunConfig) -> ParticleSet:
    """All particles of ``galaxy.source``: the mock galaxy or a particle file."""
    galaxy = config.galaxy
    if galaxy.source == "mock":
        mock = galaxy.mock
        return mock_galaxy(config).particles(mock.n_particles, config.seed,
                                             mock.particle_mass_msun)
    return read_particles(galaxy.source, galaxy.format)


def ingest(config: RunConfig) -> Ingested:
    """Load, select within r_max of the Sun, and split (seeded by ``config.seed``)."""
    galaxy = config.galaxy
    selected = select_sphere(load_particles(config), galaxy.sun_position_kpc, galaxy.r_max_kpc)
    train, test = split_train_test(selected, config.seed, config.split.test_fraction)
    return Ingested(train, test, summarize(selected, galaxy.sun_position_kpc, galaxy.r_max_kpc))


def write_ingested(ingested: Ingested, config: RunConfig, out: str | Path) -> Path:
    """Write both halves and the summary under ``out/particles``; returns that folder."""
    folder = Path(out) / PARTICLES_DIR
    metadata = run_metadata(config)
    write_particles(ingested.train, folder / TRAIN_FILE, metadata | {"split": "train"})
    write_particles(ingested.test, folder / TEST_FILE, metadata | {"split": "test"})
    summary = asdict(ingested.summary) | {"train": len(ingested.train),
                                          "test": len(ingested.test)}
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return folder


def read_ingested(out: str | Path) -> tuple[ParticleSet, ParticleSet]:
    """The (train, test) halves written by :func:`write_ingested`."""
    folder = Path(out) / PARTICLES_DIR
    train, _ = read_written_particles(folder / TRAIN_FILE)
    test, _ = read_written_particles(folder / TEST_FILE)
    return train, test
