"""The evaluation's repeated classifier tests on Ray: sharded draws, parallel trainings,
sharded LP.

:class:`RayClassifierTests` is the Ray runner of
:class:`~gflow_dist.evaluate.execution.ClassifierTestRunner`; every stage is a plain
library call inside Ray, and the ``evaluate.repeats`` repeats
(:mod:`gflow_dist.evaluate.repeats`) run side by side:

1. **Draw.** Each upsampler is put in Ray's object store once; each shard of its
   :func:`~gflow_dist.evaluate.draws.evaluation_plan` for a repeat's seed is a Ray task
   calling ``model.sample(count, shard.seed)``. Every repeat's shards are submitted at
   once (at most ``ray.max_samplers`` unfinished). They are exactly the stars of
   :func:`~gflow_dist.evaluate.draws.draw_for_evaluation` in one process.
2. **Train.** Each repeat's classifier is one Ray task with ``ray.num_gpus_per_classifier``
   GPUs, which Ray starts once that repeat's shards exist. It runs
   :func:`~gflow_dist.evaluate.classifier.train_classifier` unchanged and hands back the
   weights, the standardizer, the loss history and the validation rows
   (:class:`ClassifierState`); its resources are freed when it returns. All repeats'
   tasks are submitted up front, an elastic pool: on an autoscaling cluster they are the
   demand that adds nodes, and they run as the nodes come. Checkpoints live in each
   repeat's folder, which must be storage every node sees; a retried task or a rerun
   resumes from it. (Ray Train's TorchTrainer, data-parallel over several workers, is not
   used: one GPU trains the paper's MLP in minutes.)
3. **Score.** The test particles are cut into ``ray.evaluation_shards`` shards; each Ray
   task scores its shard and reduces it to
   :class:`~gflow_dist.evaluate.scores.PosteriorSums`, which :meth:`PosteriorSums.merge`
   adds, so LP(C), its standard errors and the paired differences are those of one
   process scoring every test particle.

The driver fetches one repeat's stars at a time, in repeat order, for the report's other
scores. Stars are (n, 6) rows of x, y, z [kpc], vx, vy, vz [km/s].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gflow_dist.config import RayConfig, RunConfig
from gflow_dist.distributed.cluster import check_resources, wait_for_node
from gflow_dist.errors import GflowError
from gflow_dist.evaluate.classifier import (
    ClassifierSettings,
    Standardizer,
    TrainedClassifier,
    build_network,
    train_classifier,
)
from gflow_dist.evaluate.comparisons import (
    MULTI_MODEL_CHECKPOINT,
    MultiModelResult,
    summarize_posteriors,
    validation_auc,
)
from gflow_dist.evaluate.draws import evaluation_plan
from gflow_dist.evaluate.execution import RepeatOutcome
from gflow_dist.evaluate.repeats import Repeat
from gflow_dist.evaluate.scores import PosteriorSums
from gflow_dist.flows.member import default_device
from gflow_dist.flows.training import History
from gflow_dist.upsamplers.base import Upsampler

MAX_RETRIES = 3
"""Retries of a draw, training or scoring task whose worker died (pure functions; a
retried training resumes from its checkpoint)."""


def _draw_shard(model: Upsampler, count: int, seed: int, batch_size: int) -> np.ndarray:
    """Ray task body: draw one shard of stars."""
    return model.sample(count, seed, batch_size)


@dataclass
class ClassifierState:
    """A trained classifier in plain, picklable parts: what the trainer actor returns.

    Attributes:
        weights: the network's state dict, on the CPU.
        n_classes: number of upsamplers it separates.
        hidden_units: its hidden layer widths.
        standardizer: the input standardisation fitted on its training rows.
        history: loss curves [nats per star].
        validation_rows: (n_val, 6) validation stars [kpc, km/s].
        validation_labels: (n_val,) their upsampler indices.
    """

    weights: dict[str, torch.Tensor]
    n_classes: int
    hidden_units: tuple[int, ...]
    standardizer: Standardizer
    history: History
    validation_rows: np.ndarray
    validation_labels: np.ndarray

    @classmethod
    def of(cls, classifier: TrainedClassifier, n_classes: int,
           hidden_units: Sequence[int]) -> ClassifierState:
        weights = {k: v.detach().cpu() for k, v in classifier.network.state_dict().items()}
        return cls(weights, n_classes, tuple(hidden_units), classifier.standardizer,
                   classifier.history, classifier.validation_rows, classifier.validation_labels)

    def restore(self, device: torch.device | None = None) -> TrainedClassifier:
        """The classifier, in eval mode, on ``device`` (default: this process's GPU or CPU)."""
        network = build_network(self.n_classes, self.hidden_units)
        network.load_state_dict(self.weights)
        network.to(device or default_device()).eval()
        return TrainedClassifier(network, self.standardizer, self.history,
                                 self.validation_rows, self.validation_labels)


def _train_classifier(settings: ClassifierSettings, seed: int, checkpoint: str, label: str,
                      shards_per_class: Sequence[int], *shards: np.ndarray) -> ClassifierState:
    """Ray task body: train on each class's stars, given as its shards in class order.

    The shards are the task's own arguments, so Ray starts it only once they are drawn.
    """
    bounds = np.cumsum([0, *shards_per_class])
    datasets = [np.concatenate(shards[start:end]) for start, end in zip(bounds[:-1], bounds[1:],
                                                                         strict=True)]
    classifier = train_classifier(datasets, settings, seed, Path(checkpoint), label)
    return ClassifierState.of(classifier, len(datasets), settings.hidden_units)


def _score_shard(state: ClassifierState, rows: np.ndarray) -> tuple[PosteriorSums, np.ndarray]:
    """Ray task body: log p(C|x) of one shard of test particles, and its sums."""
    output = state.restore().log_posterior(rows)
    return PosteriorSums.of(output), output


def _check_cluster(ray_config: RayConfig) -> None:
    """Fail fast on requests no node the cluster may ever have could hold (they would
    stay pending forever)."""
    check_resources(ray_config.num_cpus_per_sampler, ray_config.num_gpus_per_sampler,
                    "sampler", ray_config)
    check_resources(1.0, ray_config.num_gpus_per_classifier, "classifier", ray_config)


def _bounded(submit: Callable[..., Any], jobs: Sequence[tuple[Any, ...]],
             limit: int | None) -> list[Any]:
    """Object refs of ``submit(*job)`` for every job, at most ``limit`` unfinished at once."""
    import ray

    refs: list[Any] = []
    for job in jobs:
        if limit is not None and len(refs) >= limit:
            ray.wait(refs, num_returns=len(refs) - limit + 1, fetch_local=False)
        refs.append(submit(*job))
    return refs


class RayClassifierTests:
    """The evaluation's repeats as Ray tasks, run in parallel.

    Args:
        config: ``sample.shard_size``, ``sample.batch_size`` and the ``ray`` resources.
    """

    def __init__(self, config: RunConfig) -> None:
        self.ray_config, self.sample_config = config.ray, config.sample

    def _submit_draws(self, stored: Mapping[str, Any], n: int, seed: int) -> dict[str, list[Any]]:
        """Per upsampler, the object refs of its n stars' shards for the repeat ``seed``."""
        import ray

        rc = self.ray_config
        draw = ray.remote(num_cpus=rc.num_cpus_per_sampler, num_gpus=rc.num_gpus_per_sampler,
                          max_retries=MAX_RETRIES)(_draw_shard)
        plans = {name: evaluation_plan(n, seed, index, self.sample_config.shard_size)
                 for index, name in enumerate(stored)}
        jobs = [(name, (stored[name], shard.count, shard.seed, self.sample_config.batch_size))
                for name, plan in plans.items() for shard in plan]
        refs = _bounded(draw.remote, [job for _, job in jobs], rc.max_samplers)
        return {name: [ref for (owner, _), ref in zip(jobs, refs, strict=True) if owner == name]
                for name in stored}

    def draw(self, models: Mapping[str, Upsampler], n: int, seed: int) -> dict[str, np.ndarray]:
        """Per upsampler, in order, its n classifier stars of the evaluation seeded ``seed``:
        the stars :meth:`InProcessTests.draw` gives, drawn shard by shard in Ray tasks."""
        import ray

        rc = self.ray_config
        _check_cluster(rc)
        wait_for_node(rc.num_cpus_per_sampler, rc.num_gpus_per_sampler,
                      "drawing the evaluation's stars", rc)
        shards = self._submit_draws({name: ray.put(model) for name, model in models.items()},
                                    n, seed)
        return {name: np.concatenate(ray.get(refs)) for name, refs in shards.items()}

    def repeated_tests(self, models: Mapping[str, Upsampler], n: int,
                       test_particles: np.ndarray, settings: ClassifierSettings,
                       repeats: Sequence[Repeat]) -> Iterator[RepeatOutcome]:
        """Every repeat's draws and classifier training are submitted at once, so the
        repeats run in parallel as far as the cluster holds them (on an autoscaling
        cluster the pending tasks are the demand that adds nodes); a repeat's training
        task starts once its stars are drawn. The outcomes come back in repeat order, one
        repeat's stars at a time."""
        import ray

        names = list(models)
        if len(names) < 2:
            raise GflowError(f"the multi-model test needs at least 2 upsamplers, got "
                             f"{names}; list two or more under `upsamplers:`")
        rc = self.ray_config
        _check_cluster(rc)
        wait_for_node(rc.num_cpus_per_sampler, rc.num_gpus_per_sampler,
                      "drawing the evaluation's stars", rc)
        stored = {name: ray.put(model) for name, model in models.items()}
        shards = [self._submit_draws(stored, n, repeat.seed) for repeat in repeats]
        train = ray.remote(num_cpus=1, num_gpus=rc.num_gpus_per_classifier,
                           max_retries=MAX_RETRIES)(_train_classifier)
        trained = []
        for repeat, repeat_shards in zip(repeats, shards, strict=True):
            repeat.workdir.mkdir(parents=True, exist_ok=True)
            trained.append(train.remote(
                settings, repeat.classifier_seed, str(repeat.workdir / MULTI_MODEL_CHECKPOINT),
                f"classifier {' vs '.join(names)} (repeat {repeat.index})",
                [len(repeat_shards[name]) for name in names],
                *(ref for name in names for ref in repeat_shards[name])))
        wait_for_node(1.0, rc.num_gpus_per_classifier, "training the classifiers", rc)
        for index, repeat in enumerate(repeats):
            state = ray.get(trained[index])
            samples = {name: np.concatenate(ray.get(shards[index][name])) for name in names}
            shards[index] = {}  # the driver holds one repeat's stars at a time
            yield RepeatOutcome(repeat, samples, self._score(state, test_particles, names))

    def _score(self, state: ClassifierState, test_particles: np.ndarray,
               names: list[str]) -> MultiModelResult:
        """Score the test particles in ``ray.evaluation_shards`` tasks and merge the sums."""
        import ray

        rc = self.ray_config
        score = ray.remote(num_cpus=rc.num_cpus_per_sampler, num_gpus=rc.num_gpus_per_sampler,
                           max_retries=MAX_RETRIES)(_score_shard)
        state_ref = ray.put(state)
        wait_for_node(rc.num_cpus_per_sampler, rc.num_gpus_per_sampler,
                      "scoring the test particles", rc)
        n_shards = max(1, min(rc.evaluation_shards, len(test_particles)))
        parts = ray.get([score.remote(state_ref, rows)
                         for rows in np.array_split(test_particles, n_shards)])
        sums = parts[0][0]
        for part, _ in parts[1:]:
            sums = sums.merge(part)
        test_output = np.concatenate([output for _, output in parts])
        classifier = state.restore()
        scores, differences = summarize_posteriors(names, sums)
        return MultiModelResult(names, scores, differences, validation_auc(classifier, names),
                                test_output, classifier)
