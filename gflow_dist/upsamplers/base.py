"""The face every upsampler shares: fit, ``sample(n, seed)``, ``log_prob``, save and load.

Upsampled stars are (n, 6) arrays of x, y, z [kpc], vx, vy, vz [km/s] in the
Galactocentric frame of the particles. Densities are natural logs in
kpc⁻³ (km/s)⁻³. A saved model is a directory holding ``spec.json`` (what it is, its
parameters, its provenance) and weights-only files: loading never unpickles code.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gflow_dist.config import RunConfig
from gflow_dist.data.particles import ParticleSet
from gflow_dist.outputs import write_text_atomically
from gflow_dist.sample.window import DrawStats, SelectionWindow, draw_in_window

SPEC_FILE = "spec.json"

MemberGroupTrainer = Callable[[Sequence[dict[str, Any]]], list[Path]]
"""Trains a group of members, ``function(jobs)``, and returns their directories in order
(:func:`gflow_dist.flows.batched_members.train_members`)."""

MemberRunner = Callable[[MemberGroupTrainer, Sequence[dict[str, Any]]], list[Path]]
"""Splits the jobs (one kwargs dict per member) into groups, runs ``function(group)`` for
each, and returns every job's directory, in order.

Ensembles (CNF, MAF) train their members through it. The default trains all of them as one
group here; the distributed layer passes one that trains groups in Ray actors.
"""


def run_members_here(function: MemberGroupTrainer,
                     jobs: Sequence[dict[str, Any]]) -> list[Path]:
    """Train every member in this process, as one group."""
    return function(jobs)


def member_seeds(seed: int, count: int) -> list[int]:
    """Independent per-member seeds derived from the run seed."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, np.uint32)]


class Upsampler(ABC):
    """An upsampler fitted to star particles inside a selection window."""

    kind: ClassVar[str]
    """Name used in configs (``upsamplers: [...]``) and in ``spec.json``."""

    window: SelectionWindow

    config_sections: ClassVar[tuple[str, ...]] = ()
    """The run config sections that its fit reads besides ``galaxy``, ``split`` and
    ``seed``: a change to any other section keeps a trained model."""

    has_density: ClassVar[bool] = True
    """Whether :meth:`log_prob` gives the density of the stars (every built-in one does)."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: RunConfig) -> Upsampler:
        """A new, unfitted upsampler configured by the run config."""

    @abstractmethod
    def fit(self, particles: ParticleSet, seed: int, workdir: str | Path | None = None,
            runner: MemberRunner = run_members_here) -> Upsampler:
        """Fit to the train particles; returns self.

        ``workdir`` keeps checkpoints that a rerun resumes from, and ``runner`` runs
        independent training jobs (ensemble members); upsamplers without either ignore them.
        """

    def propose(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(count, 6) candidate stars, before the selection window is applied.

        What the default :meth:`iter_samples` draws from; an upsampler that overrides
        :meth:`iter_samples` (the flow ensembles, which draw on their device) needs none.
        """
        raise NotImplementedError(f"upsampler {self.kind!r} draws through its own "
                                  "iter_samples")

    def iter_samples(self, n: int, seed: int, batch_size: int = 65_536,
                     stats: DrawStats | None = None) -> Iterator[np.ndarray]:
        """Stream exactly n stars inside the window, batch by batch."""
        return draw_in_window(self.propose, n, seed, self.window, batch_size, stats)

    def sample(self, n: int, seed: int, batch_size: int = 65_536) -> np.ndarray:
        """(n, 6) stars inside the selection window; deterministic in (n, seed)."""
        batches = list(self.iter_samples(n, seed, batch_size))
        return np.concatenate(batches) if batches else np.empty((0, 6))

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        """ln density [kpc⁻³ (km/s)⁻³] of the stars it draws, at (n, 6) rows.

        −inf where it never draws a star: at least outside the window's sphere, and for
        compact kernels also in the gaps between them. Only upsamplers whose
        :attr:`has_density` is True have one; callers check it first.
        """
        raise NotImplementedError(f"upsampler {self.kind!r} has no density (has_density is "
                                  "False)")

    def fit_summary(self) -> str | None:
        """One line on what fitting found (fitted bandwidths, scores), or None."""
        return None

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """JSON-safe parameters that, with the weights, rebuild the model."""

    @abstractmethod
    def save_weights(self, directory: Path) -> None:
        """Write the weights-only files next to ``spec.json``."""

    @classmethod
    @abstractmethod
    def from_saved(cls, spec: dict[str, Any], directory: Path) -> Upsampler:
        """Rebuild from ``spec`` and the weights in ``directory``."""

    def save(self, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Save to ``directory`` (created if needed); returns it.

        ``metadata`` (the run's config, seeds, frame and versions) is kept in ``spec.json``,
        removed first and written last, whole: a model whose save was interrupted has none.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SPEC_FILE).unlink(missing_ok=True)
        self.save_weights(directory)
        spec = {"kind": self.kind, **self.spec(), "metadata": metadata or {}}
        write_text_atomically(directory / SPEC_FILE, json.dumps(spec, indent=2))
        return directory
