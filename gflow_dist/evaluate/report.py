"""The evaluation stage: classifier tests and truth scores, repeated, written as a report.

For the fitted upsamplers of a run it computes, in each of ``evaluate.repeats``
independent repeats (:mod:`gflow_dist.evaluate.repeats`: a fresh star draw, classifier
initialisation and minibatch order each),

- the multi-model classifier test (paper §5.3): LP(C) per upsampler, the pairwise
  differences and the AUCs;
- the two-sample AUC of test particles against each upsampler (paper §5.2, secondary);
- when the galaxy's density is known (the built-in mock galaxy): KL(truth ‖ model) in
  nats over fresh truth draws for each upsampler with a density, and the two-sample AUC
  against fresh truth draws; and per labelled component (disks, moving group, halo, cold
  stream) its KL and the share of its stars that each upsampler reproduces
  (:mod:`gflow_dist.evaluate.components`), with panels of the moving group and the stream;

then combines the repeats into values with their within-repeat, between-repeat and total
errors, and writes ``report.json`` and ``report.md`` (:mod:`gflow_dist.evaluate.rendering`)
with the classifier histograms, printing the table to the terminal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gflow_dist.config import RunConfig
from gflow_dist.data.ingest import mock_galaxy
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.particles import ParticleSet
from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import two_sample_auc
from gflow_dist.evaluate.components import component_scores
from gflow_dist.evaluate.draws import evaluation_seed
from gflow_dist.evaluate.execution import ClassifierTestRunner, InProcessTests, RepeatOutcome
from gflow_dist.evaluate.figures import classifier_histograms, fine_structure_panels
from gflow_dist.evaluate.rendering import render_markdown, render_table
from gflow_dist.evaluate.repeats import Sharing, combine_entries, plan_repeats
from gflow_dist.evaluate.truth import kl_divergence
from gflow_dist.outputs import write_text_atomically
from gflow_dist.provenance import run_metadata
from gflow_dist.upsamplers.base import Upsampler

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
HISTOGRAM_PNG = "classifier_histograms.png"
FINE_STRUCTURE_PNG = "fine_structure.png"

SHARING = {"log_posterior": Sharing.SHARED_REFERENCE, "differences": Sharing.SHARED_REFERENCE,
           "two_sample_auc": Sharing.SHARED_REFERENCE, "auc": Sharing.INDEPENDENT,
           "truth": Sharing.INDEPENDENT}
"""What the repeats of each section share: the test particles are the same rows in every
repeat (LP, its differences, and the particles-vs-stars AUC); the AUCs on each repeat's
own validation stars and every truth score on fresh truth draws are independent."""

logger = logging.getLogger(__name__)


def kl_entry(log_true: np.ndarray, log_model: np.ndarray) -> dict[str, Any]:
    """KL(truth ‖ model) ± stderr [nats] over truth draws inside the model's window.

    The window excludes the rare draws faster than every train particle, where no
    upsampler places stars. The value is None (infinite) when the model has zero density
    at some draws inside it, as compact kernels do between them.
    """
    zero = int(np.isneginf(log_model).sum())
    if zero > 0:
        return {"value": None, "stderr": None, "zero_density_count": zero,
                "draw_count": len(log_model)}
    value, error = kl_divergence(log_true, log_model)
    return {"value": value, "stderr": error, "zero_density_count": 0,
            "draw_count": len(log_model)}


def truth_scores(truth: MockGalaxy, models: Mapping[str, Upsampler],
                 samples: Mapping[str, np.ndarray], n_draws: int, seed: int,
                 settings: ClassifierSettings, truth_auc: bool, workdir: Path) -> dict[str, Any]:
    """One repeat's scores against the known density ``truth``.

    Args:
        truth: the mock galaxy.
        models: the fitted upsamplers.
        samples: each upsampler's classifier stars of this repeat.
        n_draws: fresh truth draws that KL(truth ‖ model) is estimated on.
        seed: the repeat's seed; every truth draw derives from it.
        settings: the classifiers of ``truth_auc``.
        truth_auc: also train a classifier of truth draws against each upsampler's stars.
        workdir: the repeat's folder, where those classifiers checkpoint.
    """
    draws = truth.sample(n_draws, evaluation_seed(seed, 500))
    log_true = truth.log_prob(draws)
    kl, auc = {}, {}
    for index, (name, model) in enumerate(models.items()):
        if model.has_density:
            inside = model.window.contains(draws)
            kl[name] = kl_entry(log_true[inside], model.log_prob(draws[inside]))
            kl[name]["outside_window_count"] = int((~inside).sum())
        if truth_auc:
            fresh = truth.sample(2 * len(samples[name]), evaluation_seed(seed, 100 + index))
            fresh = fresh[model.window.contains(fresh)][:len(samples[name])]
            auc[name] = two_sample_auc(fresh, samples[name], settings,
                                       evaluation_seed(seed, 200 + index),
                                       workdir / f"truth-{name}.ckpt",
                                       f"truth vs {name}").to_dict()
    components = component_scores(truth, models, samples, evaluation_seed(seed, 400))
    return {"kl_nats": kl, "auc": auc, "components": components}


def repeat_scores(config: RunConfig, models: Mapping[str, Upsampler], outcome: RepeatOutcome,
                  test: ParticleSet, settings: ClassifierSettings,
                  truth: MockGalaxy | None) -> dict[str, Any]:
    """Every score of one repeat, each an entry ``{"value", "stderr", counts…}``."""
    repeat, samples = outcome.repeat, outcome.samples
    scores = outcome.result.to_dict()
    if config.evaluate.two_sample:
        scores["two_sample_auc"] = {
            name: two_sample_auc(test.phase_space, samples[name], settings,
                                 evaluation_seed(repeat.seed, 300 + index),
                                 repeat.workdir / f"two-sample-{name}.ckpt",
                                 f"particles vs {name}").to_dict()
            for index, name in enumerate(models)
        }
    if truth is not None:
        scores["truth"] = truth_scores(truth, models, samples, len(test), repeat.seed, settings,
                                       config.evaluate.truth_auc, repeat.workdir)
    _log_repeat(repeat.index, scores)
    return scores


def _log_repeat(index: int, scores: Mapping[str, Any]) -> None:
    differences = ", ".join(f"LP({pair.replace(' - ', ') − LP(')}) {entry['value']:+.4f}"
                            for pair, entry in scores["differences"].items())
    kl = ", ".join(f"KL(truth ‖ {name}) " + ("∞" if entry["value"] is None
                                              else f"{entry['value']:.4f}")
                   for name, entry in scores.get("truth", {}).get("kl_nats", {}).items())
    logger.info("evaluate: repeat %d: %s", index, "; ".join(filter(None, [differences, kl])))


def combine_repeats(per_repeat: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report's scores from every repeat's: each entry becomes value, within, between,
    total, dof, interval95 and per_repeat (:func:`~gflow_dist.evaluate.repeats.combine_entries`),
    combined as :data:`SHARING` says; what is the same in every repeat is kept once."""
    first = per_repeat[0]
    report: dict[str, Any] = {
        "repeats": len(per_repeat),
        "best_validation_loss": [scores["best_validation_loss"] for scores in per_repeat],
    }
    for key in first:
        if key in report:
            continue
        sharing = SHARING.get(key)
        report[key] = (_combine_tree([scores[key] for scores in per_repeat], sharing)
                       if sharing is not None else first[key])
    return report


def _combine_tree(trees: Sequence[Any], sharing: Sharing) -> Any:
    """Walk the repeats' nested score dicts in step, combining every estimate entry."""
    first = trees[0]
    if isinstance(first, Mapping) and "value" in first:
        return combine_entries(trees, sharing)
    if isinstance(first, Mapping):
        return {key: _combine_tree([tree[key] for tree in trees], sharing) for key in first}
    return first


def evaluate(config: RunConfig, models: Mapping[str, Upsampler], train: ParticleSet,
             test: ParticleSet, out: Path,
             runner: ClassifierTestRunner | None = None) -> dict[str, Any]:
    """Run every configured test on ``models``, repeated, and write the report under ``out``.

    ``runner`` draws each repeat's classifier stars and runs its multi-model test
    (default: :class:`~gflow_dist.evaluate.execution.InProcessTests`); every other score
    of the repeat reuses the same stars. The figures show repeat 0.
    """
    runner = runner or InProcessTests(config.sample.shard_size, config.sample.batch_size)
    settings = ClassifierSettings.from_config(config.evaluate)
    limit = config.evaluate.max_test_particles
    if limit is not None and len(test) > limit:
        rng = np.random.default_rng(evaluation_seed(config.seed, 2000))
        test = test.subset(np.sort(rng.choice(len(test), limit, replace=False)))
    n_samples = max(2, round(config.evaluate.samples_per_particle * len(train)))
    repeats = plan_repeats(config.seed, config.evaluate.repeats, out / "evaluation")
    truth = (mock_galaxy(config) if config.evaluate.truth and config.galaxy.source == "mock"
             else None)
    logger.info("evaluate: %d repeat(s), each drawing %s stars per upsampler (%g per train "
                "particle)", len(repeats), f"{n_samples:,}", config.evaluate.samples_per_particle)
    per_repeat, figures = [], []
    for outcome in runner.repeated_tests(models, n_samples, test.phase_space, settings, repeats):
        per_repeat.append(repeat_scores(config, models, outcome, test, settings, truth))
        if outcome.repeat.index == 0:
            figures.append(classifier_histograms(outcome.result, out / HISTOGRAM_PNG))
            if truth is not None:
                figures.append(fine_structure_panels(truth, outcome.samples,
                                                     evaluation_seed(config.seed, 401),
                                                     out / FINE_STRUCTURE_PNG))
    report = {
        **combine_repeats(per_repeat),
        "samples_per_upsampler": n_samples,
        "samples_per_particle": config.evaluate.samples_per_particle,
        "n_train": len(train),
        "classifier": {"hidden_units": list(settings.hidden_units),
                       "validation_fraction": settings.validation_fraction,
                       "batches_per_epoch": settings.recipe.batches_per_epoch,
                       "max_epochs": settings.recipe.max_epochs,
                       "patience": settings.recipe.patience,
                       "refine": settings.recipe.refine},
        "metadata": run_metadata(config),
    }
    # each file whole or not at all (a killed evaluation reruns from its checkpoints);
    # report.json last, as the stage's mark of completion
    write_text_atomically(out / REPORT_MD, render_markdown(report, [f.name for f in figures]))
    write_text_atomically(out / REPORT_JSON, json.dumps(report, indent=2))
    logger.info("%s", render_table(report))
    logger.info("evaluate: report -> %s", out / REPORT_MD)
    return report
