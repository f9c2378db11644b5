"""Where the evaluation's heavy work runs: an injected runner, this process by default.

Two steps of the evaluation cost the most: drawing each upsampler's classifier stars and
the multi-model classifier test (paper §5.3: train the classifier, score the test
particles). :class:`ClassifierTestRunner` is what the report asks of whoever runs them.
:class:`InProcessTests` runs them here; the distributed layer supplies one that runs them
on a Ray cluster and returns the same stars and the same numbers.

Stars are (n, 6) rows of x, y, z [kpc], vx, vy, vz [km/s].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import MultiModelResult, multi_model_test
from gflow_dist.evaluate.draws import draw_for_evaluation
from gflow_dist.upsamplers.base import Upsampler


class ClassifierTestRunner(Protocol):
    """Runs the evaluation's draws and its multi-model classifier test."""

    def draw(self, models: Mapping[str, Upsampler], n: int, seed: int) -> dict[str, np.ndarray]:
        """Per upsampler, in order, its n classifier stars: the shards of
        :func:`~gflow_dist.evaluate.draws.evaluation_plan` for its position and ``seed``."""
        ...

    def multi_model_test(self, samples: Mapping[str, np.ndarray], test_particles: np.ndarray,
                         settings: ClassifierSettings, seed: int,
                         workdir: Path) -> MultiModelResult:
        """:func:`~gflow_dist.evaluate.comparisons.multi_model_test` on these stars."""
        ...


@dataclass(frozen=True)
class InProcessTests:
    """Draws and trains one step after another in this process.

    Attributes:
        shard_size: stars per shard of the evaluation draw (``sample.shard_size``).
        batch_size: stars drawn per batch (``sample.batch_size``); bounds memory.
    """

    shard_size: int
    batch_size: int

    def draw(self, models: Mapping[str, Upsampler], n: int, seed: int) -> dict[str, np.ndarray]:
        return {name: draw_for_evaluation(model, n, seed, index, self.shard_size,
                                          self.batch_size)
                for index, (name, model) in enumerate(models.items())}

    def multi_model_test(self, samples: Mapping[str, np.ndarray], test_particles: np.ndarray,
                         settings: ClassifierSettings, seed: int,
                         workdir: Path) -> MultiModelResult:
        return multi_model_test(samples, test_particles, settings, seed, workdir)
