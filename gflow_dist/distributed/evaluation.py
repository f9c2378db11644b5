"""The evaluation's classifier tests on Ray: sharded draws, one trainer, sharded LP.

:class:`RayClassifierTests` is the Ray runner of
:class:`~gflow_dist.evaluate.execution.ClassifierTestRunner`; every stage is a plain
library call inside Ray:

1. **Draw.** Each upsampler is put in Ray's object store once; each shard of its
   :func:`~gflow_dist.evaluate.draws.evaluation_plan` is a Ray task calling
   ``model.sample(count, shard.seed)``. The shards come back to the driver, which
   scores them for the report too, so every star is drawn once and they are exactly the
   stars of :func:`~gflow_dist.evaluate.draws.draw_for_evaluation` in one process.
2. **Train.** One Ray actor with ``ray.num_gpus_per_classifier`` GPUs runs
   :func:`~gflow_dist.evaluate.classifier.train_classifier` unchanged on those stars and
   hands back the weights, the standardizer, the loss history and the validation rows
   (:class:`ClassifierState`). Its checkpoint lives under ``workdir``, which must be
   storage every node sees; a rerun resumes from it. (Ray Train's TorchTrainer,
   data-parallel over several workers, is not used: one GPU trains the paper's MLP in
   minutes.)
3. **Score.** The test particles are cut into ``ray.evaluation_shards`` shards; each Ray
   task scores its shard and reduces it to
   :class:`~gflow_dist.evaluate.scores.PosteriorSums`, which :meth:`PosteriorSums.merge`
   adds, so LP(C), its standard errors and the paired differences are those of one
   process scoring every test particle.

Stars are (n, 6) rows of x, y, z [kpc], vx, vy, vz [km/s].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gflow_dist.config import RayConfig, RunConfig
from gflow_dist.distributed.cluster import Waiting, check_resources, started, wait_for_node
from gflow_dist.errors import GflowError
from gflow_dist.evaluate.classifier import (
    ClassifierSettings,
    Standardizer,
    TrainedClassifier,
    build_network,
    train_classifier,
)
from gflow_dist.evaluate.comparisons import (
    MultiModelResult,
    summarize_posteriors,
    validation_auc,
)
from gflow_dist.evaluate.draws import evaluation_plan
from gflow_dist.evaluate.scores import PosteriorSums
from gflow_dist.flows.member import default_device
from gflow_dist.flows.training import History
from gflow_dist.upsamplers.base import Upsampler

MAX_RETRIES = 3
"""Retries of a draw or scoring task whose worker died (both are pure functions)."""


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


class ClassifierTrainer:
    """Ray actor body: trains the multi-model classifier where its GPU is."""

    def train(self, stored: Sequence[Any], settings: ClassifierSettings, seed: int,
              checkpoint: str, label: str) -> ClassifierState:
        """Fetch each class's stars (Ray object refs) and train on them."""
        import ray

        datasets = ray.get(list(stored))
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


def _wait_started(actor: Any, what: str, each: str, ray_config: RayConfig) -> None:
    """Wait for ``actor`` to start (a pending actor is the autoscaler's demand), saying
    what it waits for, at most ``ray.resource_wait_s``."""
    import ray

    (ready,) = started([actor])
    waiting = Waiting(what, each, ray_config)
    while not ray.wait([ready], timeout=5.0)[0]:
        waiting.tick()
    ray.get(ready)


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
    """The evaluation's draws and multi-model test as Ray tasks and one trainer actor.

    Args:
        config: ``sample.shard_size``, ``sample.batch_size`` and the ``ray`` resources.
    """

    def __init__(self, config: RunConfig) -> None:
        self.ray_config, self.sample_config = config.ray, config.sample

    def draw(self, models: Mapping[str, Upsampler], n: int, seed: int) -> dict[str, np.ndarray]:
        import ray

        rc = self.ray_config
        _check_cluster(rc)
        wait_for_node(rc.num_cpus_per_sampler, rc.num_gpus_per_sampler,
                      "drawing the evaluation's stars", rc)
        draw = ray.remote(num_cpus=rc.num_cpus_per_sampler, num_gpus=rc.num_gpus_per_sampler,
                          max_retries=MAX_RETRIES)(_draw_shard)
        plans = {name: evaluation_plan(n, seed, index, self.sample_config.shard_size)
                 for index, name in enumerate(models)}
        stored = {name: ray.put(model) for name, model in models.items()}
        jobs = [(name, (stored[name], shard.count, shard.seed, self.sample_config.batch_size))
                for name, plan in plans.items() for shard in plan]
        refs = _bounded(draw.remote, [job for _, job in jobs], rc.max_samplers)
        shards = ray.get(refs)
        return {name: np.concatenate([rows for (owner, _), rows in zip(jobs, shards, strict=True)
                                      if owner == name])
                for name in models}

    def multi_model_test(self, samples: Mapping[str, np.ndarray], test_particles: np.ndarray,
                         settings: ClassifierSettings, seed: int,
                         workdir: Path) -> MultiModelResult:
        import ray

        names = list(samples)
        if len(names) < 2:
            raise GflowError(f"the multi-model test needs at least 2 upsamplers, got "
                             f"{names}; list two or more under `upsamplers:`")
        rc = self.ray_config
        _check_cluster(rc)
        trainer = ray.remote(num_cpus=1, num_gpus=rc.num_gpus_per_classifier)(
            ClassifierTrainer).remote()
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            _wait_started(trainer, "training the classifier",
                          "1 CPU" + (f" and {rc.num_gpus_per_classifier:g} GPUs"
                                     if rc.num_gpus_per_classifier else ""), rc)
            state = ray.get(trainer.train.remote(
                [ray.put(samples[name]) for name in names], settings, seed,
                str(workdir / "multi_model.ckpt"), "classifier " + " vs ".join(names)))
        finally:
            ray.kill(trainer)  # frees its GPU for the scoring tasks

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
