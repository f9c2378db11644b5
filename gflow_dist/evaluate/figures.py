"""Classifier-output histograms like the paper's Figs. 6, A2 and A3.

Each upsampler's held-out stars are histogrammed in the classifier output p(C|x); the test
particles are overlaid as black markers with 1σ Poisson error bars. A good upsampler's
histogram lies on the test particles.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gflow_dist.evaluate.classifier_tests import MultiModelResult  # noqa: E402

BINS = np.linspace(0.0, 1.0, 41)


def _density_with_errors(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts, _ = np.histogram(values, BINS)
    norm = len(values) * np.diff(BINS)
    return counts / norm, np.sqrt(counts) / norm


def classifier_histograms(result: MultiModelResult, path: Path) -> Path:
    """Write the histograms of p(C|x) to ``path`` (PNG); one panel per class when N > 2."""
    names = result.names
    probabilities = np.exp(result.classifier.log_posterior(result.classifier.validation_rows))
    labels = result.classifier.validation_labels
    test = np.exp(result.test_log_posterior)
    panels = [1] if len(names) == 2 else list(range(len(names)))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    centres = 0.5 * (BINS[1:] + BINS[:-1])
    for axis, column in zip(axes[0], panels, strict=True):
        for c, name in enumerate(names):
            axis.hist(probabilities[labels == c, column], BINS, density=True, histtype="step",
                      linewidth=1.6, label=f"{name} stars")
        density, error = _density_with_errors(test[:, column])
        axis.errorbar(centres, density, yerr=error, fmt="o", color="black", markersize=3,
                      label="test particles")
        axis.set_xlabel(f"classifier output p({names[column]} | x, v)")
        axis.set_ylabel("density")
        axis.set_yscale("log")
        axis.legend(fontsize=8)
    figure.suptitle("Multi-model classifier test: " + " vs ".join(names))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
