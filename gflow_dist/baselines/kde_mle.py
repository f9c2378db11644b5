"""Adaptive KDE with maximum-likelihood bandwidth factors (kind ``kde_mle``).

The strongest kernel baseline of the GalaxyFlow v2 paper (arXiv:2211.11765v2): EnBiD's
adaptive widths (:mod:`gflow_dist.baselines.enbid`) multiplied by one global factor α, or
by one factor for positions and one for velocities (``per_space``), with α chosen to
maximise the log-likelihood of held-out train particles.

Fit. A seeded ``holdout_fraction`` of the train particles is held out; the tree and
kernels are built on the rest (the fit part), and

    ℓ(α) = mean over held-out x of ln p_W(x; α),   p_W = mixture(σ·α) / P_W(α)

is maximised, p_W being the window-normalised density that ``log_prob`` returns (P_W, the
in-window mass, is estimated with the same seeded draws for every α, so ℓ is a smooth
function of α up to steps far below the differences the search resolves). The search is
a golden-section search over ln α ∈ [ln ⅛, ln 8]; ``per_space`` alternates 1-D searches
over the position and the velocity factor (coordinate ascent). Golden-section needs only
comparisons, so held-out points that no kernel reaches (ℓ = −inf at small α) are handled
without special cases, which a parabolic method such as Brent's is not.

The final model keeps the fit part's kernels with the fitted α. Rebuilding the tree on all
train particles would shrink every leaf (sides scale roughly as N^(−1/6)) and shift the
optimum, so the held-out score would no longer describe the model that is returned.

References:
    arXiv:2211.11765v2, §4 and the kernel baselines of its results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gflow_dist.baselines.enbid import KernelUpsampler, leaf_kernels, window_mass
from gflow_dist.baselines.gaussian_kernels import GaussianKernels
from gflow_dist.config import RunConfig
from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import InputError
from gflow_dist.sample.window import SelectionWindow
from gflow_dist.upsamplers.base import MemberRunner, run_members_here

LOG_ALPHA_BOUNDS = (math.log(1 / 8), math.log(8))
"""Search interval of ln α."""
LOG_ALPHA_TOLERANCE = 0.01
"""The golden-section search stops when the bracket of ln α is narrower than this."""
ROUNDS = 3
"""Alternating passes over the position and velocity factors (``per_space``)."""
REFINE_HALF_WIDTH = 0.5
"""Passes after the first search ln α within this distance of the previous optimum."""
SEARCH_WINDOW_DRAWS = 64
"""Draws per window-straddling kernel for P_W(α) inside the search."""
_GOLDEN = (math.sqrt(5) - 1) / 2


def golden_section_max(score: Callable[[float], float], low: float, high: float,
                       tolerance: float) -> float:
    """The argument in [low, high] that maximises a unimodal ``score`` (to ``tolerance``)."""
    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    score_c, score_d = score(c), score(d)
    while b - a > tolerance:
        if score_c >= score_d:
            b, d, score_d = d, c, score_c
            c = b - _GOLDEN * (b - a)
            score_c = score(c)
        else:
            a, c, score_c = c, d, score_d
            d = a + _GOLDEN * (b - a)
            score_d = score(d)
    return c if score_c >= score_d else d


def axis_factors(alpha: Sequence[float]) -> np.ndarray:
    """(6,) per-axis width factors from one global α or (α_position, α_velocity)."""
    alpha = np.asarray(alpha, dtype=np.float64)
    return np.repeat(alpha, 6 // len(alpha))


def heldout_log_likelihood(kernels: GaussianKernels, holdout: np.ndarray,
                           window: SelectionWindow, alpha: Sequence[float], seed: int) -> float:
    """ℓ(α): mean ln p_W of the held-out (n, 6) rows under the kernels with σ·α."""
    scaled = kernels.scaled(axis_factors(alpha))
    mass, _ = window_mass(scaled, window, seed, SEARCH_WINDOW_DRAWS)
    if mass <= 0:
        return -math.inf
    return float(np.mean(scaled.log_prob(holdout))) - math.log(mass)


def fit_alpha(kernels: GaussianKernels, holdout: np.ndarray, window: SelectionWindow,
              per_space: bool, seed: int) -> tuple[np.ndarray, float]:
    """(α, ℓ(α)): the width factors that maximise the held-out log-likelihood."""
    log_alpha = np.zeros(2 if per_space else 1)

    def score_at(axis: int) -> Callable[[float], float]:
        def score(value: float) -> float:
            trial = log_alpha.copy()
            trial[axis] = value
            return heldout_log_likelihood(kernels, holdout, window, np.exp(trial), seed)
        return score

    low, high = LOG_ALPHA_BOUNDS
    for round_index in range(ROUNDS if per_space else 1):
        previous = log_alpha.copy()
        for axis in range(len(log_alpha)):
            a, b = low, high
            if round_index > 0:
                a = max(low, log_alpha[axis] - REFINE_HALF_WIDTH)
                b = min(high, log_alpha[axis] + REFINE_HALF_WIDTH)
            log_alpha[axis] = golden_section_max(score_at(axis), a, b, LOG_ALPHA_TOLERANCE)
        if np.abs(log_alpha - previous).max() < LOG_ALPHA_TOLERANCE:
            break
    alpha = np.exp(log_alpha)
    return alpha, heldout_log_likelihood(kernels, holdout, window, alpha, seed)


def split_holdout(particles: ParticleSet, fraction: float,
                  seed: int) -> tuple[ParticleSet, np.ndarray]:
    """(fit part, held-out (n, 6) rows): a seeded random ``fraction`` is held out."""
    n_holdout = round(fraction * len(particles))
    if n_holdout < 1 or len(particles) - n_holdout < 2:
        raise InputError(f"kde_mle.holdout_fraction = {fraction} holds out {n_holdout} of "
                         f"{len(particles)} particles; α needs at least one held-out and two "
                         "fit particles: give more particles or change kde_mle.holdout_fraction")
    shuffled = np.random.default_rng([seed, len(particles)]).permutation(len(particles))
    return (particles.subset(np.sort(shuffled[n_holdout:])),
            particles.phase_space[np.sort(shuffled[:n_holdout])])


class KdeMleUpsampler(KernelUpsampler):
    """EnBiD kernels with maximum-likelihood width factors (kind ``kde_mle``).

    Args:
        sun_position_kpc, r_max_kpc, variance_factor, mass_weighted, truncation_sigma:
            as :class:`~gflow_dist.baselines.enbid.EnbidUpsampler`.
        per_space: one factor for positions and one for velocities (False: one global).
        holdout_fraction: share of the train particles that scores α.

    After ``fit``, ``alpha`` holds the factors (1 or 2 values), ``heldout_log_likelihood``
    the held-out mean ln p_W at α and ``heldout_log_likelihood_unscaled`` the one at α = 1.
    """

    kind = "kde_mle"
    config_sections = ("kde_mle", "enbid")

    def __init__(self, sun_position_kpc: Sequence[float], r_max_kpc: float,
                 variance_factor: float = 1 / 12, mass_weighted: bool = False,
                 truncation_sigma: float = 6.0, per_space: bool = True,
                 holdout_fraction: float = 0.2) -> None:
        super().__init__(sun_position_kpc, r_max_kpc, variance_factor, mass_weighted,
                         truncation_sigma)
        self.per_space = bool(per_space)
        self.holdout_fraction = float(holdout_fraction)
        self.alpha = np.ones(2 if per_space else 1)
        self.heldout_log_likelihood = math.nan
        self.heldout_log_likelihood_unscaled = math.nan

    @classmethod
    def from_config(cls, config: RunConfig) -> KdeMleUpsampler:
        enbid, kde = config.enbid, config.kde_mle
        return cls(config.galaxy.sun_position_kpc, config.galaxy.r_max_kpc,
                   enbid.variance_factor, enbid.mass_weighted, enbid.truncation_sigma,
                   kde.per_space, kde.holdout_fraction)

    def fit(self, particles: ParticleSet, seed: int, workdir: str | Path | None = None,
            runner: MemberRunner = run_members_here) -> KdeMleUpsampler:
        """Hold out particles, build kernels on the rest, fit α; ``workdir``/``runner`` unused."""
        self._set_window(particles)
        fit_part, holdout = split_holdout(particles, self.holdout_fraction, seed)
        base, self.tree_depth = leaf_kernels(fit_part, self.variance_factor,
                                             self.mass_weighted, self.truncation_sigma)
        self.heldout_log_likelihood_unscaled = heldout_log_likelihood(
            base, holdout, self.window, np.ones(1), seed)
        self.alpha, self.heldout_log_likelihood = fit_alpha(base, holdout, self.window,
                                                            self.per_space, seed)
        self._set_kernels(base.scaled(axis_factors(self.alpha)), seed)
        return self

    def fit_summary(self) -> str:
        factors = ", ".join(f"{a:.3f}" for a in self.alpha)
        names = "(position, velocity)" if len(self.alpha) == 2 else "(global)"
        return (f"bandwidth factors α {names} = {factors}; held-out mean log-likelihood "
                f"{self.heldout_log_likelihood:.4f} nats (α = 1: "
                f"{self.heldout_log_likelihood_unscaled:.4f})")

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "per_space": self.per_space,
                "holdout_fraction": self.holdout_fraction,
                "alpha": [float(a) for a in self.alpha],
                "heldout_log_likelihood": self.heldout_log_likelihood,
                "heldout_log_likelihood_unscaled": self.heldout_log_likelihood_unscaled}

    @classmethod
    def from_saved(cls, spec: dict[str, Any], directory: Path) -> KdeMleUpsampler:
        window = spec["window"]
        model = cls(window["sun_position_kpc"], window["r_max_kpc"], spec["variance_factor"],
                    spec["mass_weighted"], spec["truncation_sigma"], spec["per_space"],
                    spec["holdout_fraction"])
        model._restore(spec, directory)
        model.alpha = np.asarray(spec["alpha"], dtype=np.float64)
        model.heldout_log_likelihood = float(spec["heldout_log_likelihood"])
        model.heldout_log_likelihood_unscaled = float(spec["heldout_log_likelihood_unscaled"])
        return model
