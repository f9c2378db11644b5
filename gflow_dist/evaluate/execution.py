"""Where the evaluation's heavy work runs: an injected runner, this process by default.

Two steps of the evaluation cost the most: drawing each upsampler's classifier stars and
the multi-model classifier test (paper §5.3: train the classifier, score the test
particles), once per repeat (:mod:`gflow_dist.evaluate.repeats`).
:class:`ClassifierTestRunner` is what the report asks of whoever runs them.
:class:`InProcessTests` runs the repeats one after another here; the distributed layer
supplies one that runs them in parallel on a Ray cluster and gives the same stars and the
same numbers.

Stars are (n, 6) rows of x, y, z [kpc], vx, vy, vz [km/s].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import MultiModelResult, multi_model_test
from gflow_dist.evaluate.draws import draw_for_evaluation
from gflow_dist.evaluate.repeats import Repeat
from gflow_dist.upsamplers.base import Upsampler


@dataclass
class RepeatOutcome:
    """One repeat's classifier stars and multi-model test.

    Attributes:
        repeat: which repeat.
        samples: per upsampler, in order, its n stars: the shards of
            :func:`~gflow_dist.evaluate.draws.evaluation_plan` for its position and
            ``repeat.seed``.
        result: the multi-model test on those stars, its classifier seeded with
            ``repeat.classifier_seed`` and checkpointed in ``repeat.workdir``.
    """

    repeat: Repeat
    samples: dict[str, np.ndarray]
    result: MultiModelResult


class ClassifierTestRunner(Protocol):
    """Runs the evaluation's draws and multi-model classifier tests, repeat by repeat."""

    def repeated_tests(self, models: Mapping[str, Upsampler], n: int,
                       test_particles: np.ndarray, settings: ClassifierSettings,
                       repeats: Sequence[Repeat]) -> Iterator[RepeatOutcome]:
        """Each repeat's :class:`RepeatOutcome`, in repeat order, n stars per upsampler.

        The caller holds one outcome at a time: a runner may run the repeats in parallel,
        but hands them over one by one, so the caller never needs every repeat's stars
        at once.
        """
        ...


@dataclass(frozen=True)
class InProcessTests:
    """Draws and trains one step and one repeat after another in this process.

    Attributes:
        shard_size: stars per shard of the evaluation draw (``sample.shard_size``).
        batch_size: stars drawn per batch (``sample.batch_size``); bounds memory.
    """

    shard_size: int
    batch_size: int

    def draw(self, models: Mapping[str, Upsampler], n: int, seed: int) -> dict[str, np.ndarray]:
        """Per upsampler, in order, its n classifier stars of the evaluation seeded ``seed``."""
        return {name: draw_for_evaluation(model, n, seed, index, self.shard_size,
                                          self.batch_size)
                for index, (name, model) in enumerate(models.items())}

    def repeated_tests(self, models: Mapping[str, Upsampler], n: int,
                       test_particles: np.ndarray, settings: ClassifierSettings,
                       repeats: Sequence[Repeat]) -> Iterator[RepeatOutcome]:
        for repeat in repeats:
            samples = self.draw(models, n, repeat.seed)
            result = multi_model_test(samples, test_particles, settings, repeat.classifier_seed,
                                      repeat.workdir)
            yield RepeatOutcome(repeat, samples, result)
