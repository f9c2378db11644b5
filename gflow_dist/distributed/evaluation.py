"""The multi-model classifier test (paper §5.3) on Ray: sharded draws, one trainer, sharded LP.

Three stages, each a plain library call inside Ray:

1. **Draw.** Each upsampler's classifier training set of ``n_samples`` stars follows the
   shard plan of :func:`~gflow_dist.evaluate.draws.evaluation_plan`. Every shard is a
   Ray task that loads the saved model directory and calls ``model.sample(count,
   shard.seed)``; :func:`~gflow_dist.evaluate.draws.draw_for_evaluation` draws the same
   shards one after another in one process, so the single-process evaluation draws
   exactly the stars the distributed one does.
2. **Train.** One Ray actor with ``ray.num_gpus_per_classifier`` GPUs runs
   :func:`~gflow_dist.evaluate.classifier.train_classifier` unchanged on the gathered
   shards and hands back the weights, the standardizer, the loss history and the
   validation rows (:class:`ClassifierState`). Its checkpoint lives under ``workdir``,
   which must be storage every node sees; a rerun resumes from it. (Ray Train's
   TorchTrainer, data-parallel over several workers, is not used: one GPU trains the
   paper's MLP in minutes.)
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

from gflow_dist import upsamplers
from gflow_dist.config import RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.evaluate.classifier import (
    ClassifierSettings,
    Standardizer,
    TrainedClassifier,
    build_network,
    train_classifier,
)
from gflow_dist.evaluate.classifier_tests import MultiModelResult, summarize_posteriors
from gflow_dist.evaluate.draws import CLASSIFIER_STREAM, evaluation_plan, evaluation_seed
from gflow_dist.evaluate.scores import PosteriorSums, binary_auc, one_vs_rest_auc
from gflow_dist.flows.member import default_device
from gflow_dist.flows.training import History

MAX_RETRIES = 3
"""Retries of a draw or scoring task whose worker died (both are pure functions)."""


def _draw_shard(model_dir: str, count: int, seed: int, batch_size: int) -> np.ndarray:
    """Ray task body: load the saved model and draw one shard of stars."""
    return upsamplers.load(model_dir).sample(count, seed, batch_size)


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

    def train(self, shards: Sequence[Sequence[Any]], settings: ClassifierSettings, seed: int,
              checkpoint: str, label: str) -> ClassifierState:
        """Gather each class's star shards (Ray object refs) and train on them."""
        import ray

        datasets = [np.concatenate(ray.get(list(refs))) for refs in shards]
        classifier = train_classifier(datasets, settings, seed, Path(checkpoint), label)
        return ClassifierState.of(classifier, len(datasets), settings.hidden_units)


def _score_shard(state: ClassifierState, rows: np.ndarray) -> tuple[PosteriorSums, np.ndarray]:
    """Ray task body: log p(C|x) of one shard of test particles, and its sums."""
    output = state.restore().log_posterior(rows)
    return PosteriorSums.of(output), output


def _check_cluster(config: RunConfig) -> None:
    """Fail fast on requests no node could hold (they would stay pending forever)."""
    import ray

    available = ray.cluster_resources()
    ray_config = config.ray
    for key, value, resource in (
            ("num_cpus_per_sampler", ray_config.num_cpus_per_sampler, "CPU"),
            ("num_gpus_per_sampler", ray_config.num_gpus_per_sampler, "GPU"),
            ("num_gpus_per_classifier", ray_config.num_gpus_per_classifier, "GPU")):
        if value > available.get(resource, 0.0):
            hint = "set it to 0 on CPU-only clusters" if resource == "GPU" else "lower it"
            raise GflowError(f"ray.{key}={value:g} but the cluster has "
                             f"{available.get(resource, 0.0):g} {resource}s; {hint} "
                             "or add nodes that have them")


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


def _validation_auc(classifier: TrainedClassifier, names: list[str]) -> dict[str, float]:
    probabilities = np.exp(classifier.log_posterior(classifier.validation_rows))
    labels = classifier.validation_labels
    if len(names) == 2:
        return {"binary": binary_auc(probabilities[:, 1], labels == 1)}
    return dict(zip(names, one_vs_rest_auc(probabilities, labels), strict=True))


def distributed_multi_model_test(model_dirs: Mapping[str, Path], n_samples: int,
                                 test_particles: np.ndarray, settings: ClassifierSettings,
                                 seed: int, workdir: Path, config: RunConfig) -> MultiModelResult:
    """The multi-model classifier test with Ray tasks and one trainer actor.

    Args:
        model_dirs: per upsampler (in class order), its saved model directory, readable
            from every node.
        n_samples: stars each upsampler draws for the classifier.
        test_particles: (n_test, 6) held-out particles [kpc, km/s].
        settings: classifier shape and budget.
        seed: the run seed; the draws follow ``evaluation_plan``, the classifier uses
            ``evaluation_seed(seed, 1000)``.
        workdir: holds the classifier checkpoint; shared storage on a multi-node cluster.
        config: ``sample.shard_size``, ``sample.batch_size`` and the ``ray`` resources.

    Returns:
        The same result as :func:`~gflow_dist.evaluate.classifier_tests.multi_model_test`
        on the stars of :func:`~gflow_dist.evaluate.draws.draw_for_evaluation`.
    """
    import ray

    names = list(model_dirs)
    if len(names) < 2:
        raise GflowError(f"the multi-model test needs at least 2 upsamplers, got {names}; "
                         "list two or more under `upsamplers:`")
    _check_cluster(config)
    rc = config.ray
    draw = ray.remote(num_cpus=rc.num_cpus_per_sampler, num_gpus=rc.num_gpus_per_sampler,
                      max_retries=MAX_RETRIES)(_draw_shard)
    plans = [evaluation_plan(n_samples, seed, index, config.sample.shard_size)
             for index in range(len(names))]
    jobs = [(str(model_dirs[name]), shard.count, shard.seed, config.sample.batch_size)
            for name, plan in zip(names, plans, strict=True) for shard in plan]
    refs = _bounded(draw.remote, jobs, rc.max_samplers)
    per_model = len(plans[0])
    shards = [refs[i * per_model:(i + 1) * per_model] for i in range(len(names))]

    trainer = ray.remote(num_cpus=1, num_gpus=rc.num_gpus_per_classifier)(
        ClassifierTrainer).remote()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        state = ray.get(trainer.train.remote(
            shards, settings, evaluation_seed(seed, CLASSIFIER_STREAM),
            str(workdir / "multi_model.ckpt"), "classifier " + " vs ".join(names)))
    finally:
        ray.kill(trainer)  # frees its GPU for the scoring tasks
    del refs, shards

    score = ray.remote(num_cpus=rc.num_cpus_per_sampler, num_gpus=rc.num_gpus_per_sampler,
                       max_retries=MAX_RETRIES)(_score_shard)
    state_ref = ray.put(state)
    n_shards = max(1, min(rc.evaluation_shards, len(test_particles)))
    parts = ray.get([score.remote(state_ref, rows)
                     for rows in np.array_split(test_particles, n_shards)])
    sums = parts[0][0]
    for part, _ in parts[1:]:
        sums = sums.merge(part)
    test_output = np.concatenate([output for _, output in parts])
    classifier = state.restore()
    scores, differences = summarize_posteriors(names, sums)
    return MultiModelResult(names, scores, differences, _validation_auc(classifier, names),
                            test_output, classifier)

