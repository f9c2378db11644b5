"""The evaluation's figures: classifier-output histograms and fine-structure panels.

Histograms like the paper's Figs. 6, A2 and A3: each upsampler's held-out stars are
histogrammed in the classifier output p(C|x); the test particles are overlaid as black
markers with 1σ Poisson error bars. A good upsampler's histogram lies on the test
particles. For a labelled truth (the mock galaxy), panels of the moving group and the cold
stream show whether an upsampler keeps them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from gflow_dist.data.mock import MockGalaxy  # noqa: E402
from gflow_dist.evaluate.comparisons import MultiModelResult  # noqa: E402

BINS = np.linspace(0.0, 1.0, 41)


def _save(figure: plt.Figure, path: Path, dpi: int) -> None:
    """Write the PNG through a hidden file renamed over ``path``: a process killed while
    writing leaves the old figure (or none), never a truncated one."""
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, dpi=dpi, format="png")
    os.replace(partial, path)


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
    _save(figure, path, dpi=110)
    plt.close(figure)
    return path


LOCAL_RADIUS_KPC = 1.0
"""The vx–vy panels show the stars within this distance of the Sun."""

STREAM_WINDOW_KMS = 30.0
"""The stream-track panels show the stars this close to the stream's mean velocity."""


def fine_structure_panels(galaxy: MockGalaxy, stars: Mapping[str, np.ndarray], seed: int,
                          path: Path) -> Path:
    """vx–vy near the Sun and the stream's track: the truth and each upsampler side by side.

    Top row: the Galactocentric (vx, vy) of the stars within ``LOCAL_RADIUS_KPC`` of the
    Sun, where the moving group sits below the disk's rotation (paper Fig. 1). Bottom row:
    the stars moving within ``STREAM_WINDOW_KMS`` of the stream's mean velocity, by place
    along its axis and distance from it. The truth column has as many fresh draws as the
    first upsampler has stars.
    """
    n = len(next(iter(stars.values())))
    columns = {"truth": galaxy.sample(n, seed), **stars}
    figure, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 7.6),
                                squeeze=False)
    v_bins = (np.linspace(-200, 200, 101), np.linspace(0, 400, 101))
    for column, (name, rows) in enumerate(columns.items()):
        near = np.linalg.norm(rows[:, :3] - galaxy.sun_position_kpc, axis=1) < LOCAL_RADIUS_KPC
        top, bottom = axes[0, column], axes[1, column]
        top.hist2d(rows[near, 3], rows[near, 4], bins=v_bins, norm=LogNorm(), cmap="viridis")
        top.set(title=f"{name}: {near.sum():,} stars < {LOCAL_RADIUS_KPC:g} kpc",
                xlabel="vx [km/s]", ylabel="vy [km/s]")
        if "stream" not in galaxy.component_names:
            bottom.set_axis_off()
            continue
        comoving = (np.linalg.norm(rows[:, 3:] - galaxy.stream_velocity_kms, axis=1)
                    < STREAM_WINDOW_KMS)
        along, across = galaxy.stream_coordinates(rows[comoving, :3])
        bottom.scatter(along, across, s=2, alpha=0.5)
        bottom.set(title=f"{name}: {comoving.sum():,} stars comoving with the stream",
                   xlabel="along the stream [kpc]", ylabel="from its axis [kpc]",
                   xlim=(-galaxy.r_max_kpc, galaxy.r_max_kpc),
                   ylim=(0, 2.0))
    figure.suptitle("Fine structure: the moving group (top) and the cold stream (bottom: "
                    f"stars within {STREAM_WINDOW_KMS:g} km/s of its mean velocity)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path, dpi=100)
    plt.close(figure)
    return path
