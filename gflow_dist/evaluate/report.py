"""The evaluation stage: classifier tests and truth scores, written as a report.

For the fitted upsamplers of a run it computes

- the multi-model classifier test (paper §5.3): LP(C) ± standard error per upsampler, the
  pairwise differences with paired standard errors, and the AUCs;
- the two-sample AUC of test particles against each upsampler (paper §5.2, secondary);
- when the galaxy's density is known (the built-in mock galaxy): KL(truth ‖ model) in
  nats for each upsampler with a density, and the two-sample AUC against fresh truth
  draws, which the truth can supply without limit; and per labelled component (disks,
  moving group, halo, cold stream) its KL and the share of its stars that each upsampler
  reproduces (:mod:`gflow_dist.evaluate.components`), with panels of the moving group and
  the stream;

and writes ``report.json``, ``report.md`` (tables in the style of the paper's Table 1 /
A1, and the classifier histograms as PNG), printing the table to the terminal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gflow_dist.config import RunConfig
from gflow_dist.data.ingest import mock_galaxy
from gflow_dist.data.particles import ParticleSet
from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import two_sample_auc
from gflow_dist.evaluate.components import component_scores
from gflow_dist.evaluate.draws import CLASSIFIER_STREAM, evaluation_seed
from gflow_dist.evaluate.execution import ClassifierTestRunner, InProcessTests
from gflow_dist.evaluate.figures import classifier_histograms, fine_structure_panels
from gflow_dist.evaluate.truth import kl_divergence
from gflow_dist.provenance import run_metadata
from gflow_dist.upsamplers.base import Upsampler

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
HISTOGRAM_PNG = "classifier_histograms.png"
FINE_STRUCTURE_PNG = "fine_structure.png"

logger = logging.getLogger(__name__)


def _kl_entry(log_true: np.ndarray, log_model: np.ndarray) -> dict[str, Any]:
    """KL(truth ‖ model) ± stderr over test particles inside the model's window.

    The window excludes the rare test particles faster than every train particle, where
    no upsampler places stars. The value is None (infinite) when the model has zero
    density at some test particles inside it, as compact kernels do between them.
    """
    zero = int(np.isneginf(log_model).sum())
    if zero > 0:
        return {"value": None, "stderr": None, "zero_density_count": zero,
                "test_count": len(log_model)}
    value, error = kl_divergence(log_true, log_model)
    return {"value": value, "stderr": error, "zero_density_count": 0,
            "test_count": len(log_model)}


def _kl_text(entry: Mapping[str, Any]) -> str:
    if entry["value"] is None:
        return (f"∞ (zero density at {entry['zero_density_count']:,} of "
                f"{entry['test_count']:,} test particles)")
    return _pm(entry)


def _truth_scores(config: RunConfig, models: Mapping[str, Upsampler],
                  samples: Mapping[str, np.ndarray], test: ParticleSet,
                  settings: ClassifierSettings, workdir: Path) -> dict[str, Any]:
    truth = mock_galaxy(config)
    log_true = truth.log_prob(test.phase_space)
    kl, auc = {}, {}
    for index, (name, model) in enumerate(models.items()):
        if model.has_density:
            inside = model.window.contains(test.phase_space)
            kl[name] = _kl_entry(log_true[inside], model.log_prob(test.phase_space)[inside])
            kl[name]["outside_window_count"] = int((~inside).sum())
        if config.evaluate.truth_auc:
            draws = truth.sample(2 * len(samples[name]),
                                 evaluation_seed(config.seed, 100 + index))
            draws = draws[model.window.contains(draws)][:len(samples[name])]
            auc[name] = two_sample_auc(draws, samples[name], settings,
                                       evaluation_seed(config.seed, 200 + index),
                                       workdir / f"truth-{name}.ckpt", f"truth vs {name}")
        scores = ([f"AUC {auc[name]:.4f}"] if name in auc else []) + (
            [f"KL(truth ‖ {name}) {_kl_text(kl[name])} nats"] if name in kl else [])
        if scores:
            logger.info("truth vs %s: %s", name, ", ".join(scores))
    components = component_scores(truth, models, samples, evaluation_seed(config.seed, 400))
    return {"kl_nats": kl, "auc": auc, "components": components}


def evaluate(config: RunConfig, models: Mapping[str, Upsampler], train: ParticleSet,
             test: ParticleSet, out: Path,
             runner: ClassifierTestRunner | None = None) -> dict[str, Any]:
    """Run every configured test on ``models`` and write the report under ``out``.

    ``runner`` draws each upsampler's classifier stars once, and runs the multi-model test
    on them (default: :class:`~gflow_dist.evaluate.execution.InProcessTests`); every other
    score reuses the same stars.
    """
    runner = runner or InProcessTests(config.sample.shard_size, config.sample.batch_size)
    settings = ClassifierSettings.from_config(config.evaluate)
    workdir = out / "evaluation"
    limit = config.evaluate.max_test_particles
    if limit is not None and len(test) > limit:
        rng = np.random.default_rng(evaluation_seed(config.seed, 2000))
        test = test.subset(np.sort(rng.choice(len(test), limit, replace=False)))
    n_samples = max(2, round(config.evaluate.samples_per_particle * len(train)))
    logger.info("evaluate: drawing %s stars per upsampler (%g per train particle)",
                f"{n_samples:,}", config.evaluate.samples_per_particle)
    samples = runner.draw(models, n_samples, config.seed)
    result = runner.multi_model_test(samples, test.phase_space, settings,
                                     evaluation_seed(config.seed, CLASSIFIER_STREAM), workdir)
    report: dict[str, Any] = {
        **result.to_dict(),
        "samples_per_upsampler": n_samples,
        "samples_per_particle": config.evaluate.samples_per_particle,
        "n_train": len(train),
        "classifier": {"hidden_units": list(settings.hidden_units),
                       "validation_fraction": settings.validation_fraction,
                       "batches_per_epoch": settings.recipe.batches_per_epoch,
                       "max_epochs": settings.recipe.max_epochs,
                       "patience": settings.recipe.patience,
                       "refine": settings.recipe.refine},
    }
    figures = [classifier_histograms(result, out / HISTOGRAM_PNG)]
    if config.evaluate.two_sample:
        report["two_sample_auc"] = {
            name: two_sample_auc(test.phase_space, samples[name], settings,
                                 evaluation_seed(config.seed, 300 + index),
                                 workdir / f"two-sample-{name}.ckpt", f"particles vs {name}")
            for index, name in enumerate(models)
        }
    if config.evaluate.truth and config.galaxy.source == "mock":
        report["truth"] = _truth_scores(config, models, samples, test, settings, workdir)
        figures.append(fine_structure_panels(mock_galaxy(config), samples,
                                             evaluation_seed(config.seed, 401),
                                             out / FINE_STRUCTURE_PNG))
    report["metadata"] = run_metadata(config)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2))
    markdown = render_markdown(report, [f.name for f in figures])
    (out / REPORT_MD).write_text(markdown)
    logger.info("%s", render_table(report))
    logger.info("evaluate: report -> %s", out / REPORT_MD)
    return report


def _pm(estimate: Mapping[str, float], digits: int = 4) -> str:
    return f"{estimate['value']:.{digits}f} ± {estimate['stderr']:.{digits}f}"


def _rows(report: Mapping[str, Any]) -> list[list[str]]:
    truth = report.get("truth", {})
    rows = []
    for name in report["upsamplers"]:
        kl = truth.get("kl_nats", {}).get(name)
        rows.append([
            name,
            _pm(report["log_posterior"][name]),
            f"{report['two_sample_auc'][name]:.4f}" if "two_sample_auc" in report else "–",
            _kl_text(kl) if kl else "–",
            f"{truth['auc'][name]:.4f}" if name in truth.get("auc", {}) else "–",
        ])
    return rows


_HEADER = ["upsampler", "LP(C)", "AUC vs particles", "KL(truth‖model) [nats]", "AUC vs truth"]


def render_table(report: Mapping[str, Any]) -> str:
    """The scores as an aligned plain-text table, with the pairwise differences below."""
    lines = _aligned([_HEADER, *_rows(report)], rule=True)
    for pair, estimate in report["differences"].items():
        sigma = estimate["value"] / estimate["stderr"] if estimate["stderr"] else float("inf")
        lines.append(f"LP({pair.replace(' - ', ') − LP(')}) = {_pm(estimate)} ({sigma:+.1f}σ)")
    auc = ", ".join(f"{k} {v:.4f}" for k, v in report["auc"].items())
    lines.append(f"multi-model classifier AUC: {auc}")
    components = report.get("truth", {}).get("components")
    if components:
        lines += ["", "per component: KL [nats] / share of its stars reproduced (1 = truth)"]
        lines += _aligned(_component_rows(report["upsamplers"], components))
    return "\n".join(lines)


def _aligned(rows: list[list[str]], rule: bool = False) -> list[str]:
    """Rows of cells as lines whose columns line up; ``rule`` underlines the first row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:] if rule else lines


def _component_rows(names: list[str], components: Mapping[str, Any]) -> list[list[str]]:
    """A header and one row per mock-galaxy component: weight, then KL and share per model."""
    rows = [["component", "weight"] + [f"{n} KL / share" for n in names]]
    for component, truth in components["components"].items():
        row = [component, f"{truth['weight']:.3f}"]
        for name in names:
            kl = components["kl_nats"].get(name, {}).get(component)
            share = components["reproduced_share"][name][component]
            kl_text = "–" if kl is None else ("∞" if kl["value"] is None else
                                              f"{kl['value']:.3f} ± {kl['stderr']:.3f}")
            row.append(f"{kl_text} / {share['value']:.2f} ± {share['stderr']:.2f}")
        rows.append(row)
    return rows


def render_markdown(report: Mapping[str, Any], figures: list[str]) -> str:
    """``report.md``: the paper-style tables and the figures."""
    lines = [
        "# Upsampler evaluation",
        "",
        f"Multi-model classifier test (arXiv:2211.11765 §5.3) of {', '.join(report['upsamplers'])}"
        f" on {report['n_test']:,} test particles; {report['samples_per_upsampler']:,} stars "
        f"per upsampler ({report['samples_per_particle']:g} per train particle). Larger "
        "(less negative) LP(C) is better; errors are 1σ standard errors of the mean.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
        *("| " + " | ".join(row) + " |" for row in _rows(report)),
        "",
        "| difference | value ± paired stderr | significance |",
        "|---|---|---|",
    ]
    for pair, estimate in report["differences"].items():
        sigma = estimate["value"] / estimate["stderr"] if estimate["stderr"] else float("inf")
        lines.append(f"| LP({pair.replace(' - ', ') − LP(')}) | {_pm(estimate)} | {sigma:+.1f}σ |")
    auc = ", ".join(f"{k}: {v:.4f}" for k, v in report["auc"].items())
    lines += ["", f"Multi-model classifier AUC (validation stars): {auc}.", ""]
    components = report.get("truth", {}).get("components")
    if components:
        rows = _component_rows(report["upsamplers"], components)
        lines += [
            "Fine structure of the mock galaxy: per labelled component, KL(truth ‖ model) "
            "over fresh draws of that component [nats], and the share of its stars that the "
            "model reproduces (its stars in the region where the component holds most of the "
            "density, over the truth's share there; 1 is perfect).", "",
            "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]),
            *("| " + " | ".join(row) + " |" for row in rows[1:]), "",
        ]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
