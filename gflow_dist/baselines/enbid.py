"""The paper's simplified EnBiD upsampler (kind ``enbid``, paper §4).

Fitting builds EnBiD's entropy tree on the train particles in 6-D phase space
(:mod:`gflow_dist.baselines.entropy_tree`) and puts on each particle a diagonal Gaussian
with σ_ik² = variance_factor · L_ik², L_ik the side of its leaf box along axis k
(:mod:`gflow_dist.baselines.gaussian_kernels`; variance_factor = 1/12, the variance of a
uniform distribution over the box). A star is drawn from a uniformly chosen particle's
kernel (or in proportion to mass), and stars outside the selection window are redrawn
(``draw_in_window``).

Density. The kernels leak out of the window, and the stars are the mixture restricted to
it, so ``log_prob`` returns the mixture density divided by its mass inside the window,
p_W(x) = p(x) / P(W) for x in W and −inf outside: a density that integrates to 1 over the
window (the sphere of radius r_max around the Sun, and speeds up to the fastest train
particle's), and exactly the density of ``sample``'s stars. P(W) = Σ_i w_i P_i(W) is exact
(1 or 0) for kernels whose truncation box lies wholly inside or outside the window, and
estimated with ``window_draws`` seeded draws per kernel for the others; its standard error
is kept in ``spec()``.

References:
    arXiv:2211.11765, §4 and Appendix B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gflow_dist.baselines.entropy_tree import build_leaf_boxes
from gflow_dist.baselines.gaussian_kernels import GaussianKernels
from gflow_dist.config import RunConfig
from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import GflowError, InputError
from gflow_dist.sample.window import SelectionWindow
from gflow_dist.upsamplers.base import MemberRunner, Upsampler, run_members_here

WEIGHTS_FILE = "kernels.npz"
WINDOW_DRAWS = 256
"""Draws per window-straddling kernel when estimating the window mass P(W)."""
_MASS_CHUNK = 4096


def window_mass(kernels: GaussianKernels, window: SelectionWindow, seed: int,
                draws_per_kernel: int = WINDOW_DRAWS) -> tuple[float, float]:
    """(P(W), its standard error): the share of the mixture's draws inside ``window``.

    Kernels whose truncation box (μ ± tσ) lies wholly inside the window count 1, wholly
    outside 0; each other kernel's share is the fraction of ``draws_per_kernel`` seeded
    draws from it that land inside. The same seed gives the same draws (common random
    numbers when comparing kernels that differ only in σ).
    """
    reach = kernels.truncation_sigma * kernels.sigmas
    offset = np.abs(kernels.centres[:, :3] - np.asarray(window.sun_position_kpc))
    far_pos = np.linalg.norm(offset + reach[:, :3], axis=1)
    near_pos = np.linalg.norm(np.maximum(offset - reach[:, :3], 0.0), axis=1)
    speed = np.abs(kernels.centres[:, 3:])
    far_speed = np.linalg.norm(speed + reach[:, 3:], axis=1)
    near_speed = np.linalg.norm(np.maximum(speed - reach[:, 3:], 0.0), axis=1)
    share = ((far_pos < window.r_max_kpc) & (far_speed <= window.max_speed_kms)).astype(float)
    straddling = np.flatnonzero((share == 0) & (near_pos < window.r_max_kpc)
                                & (near_speed <= window.max_speed_kms))
    rng = np.random.default_rng([seed, len(kernels)])
    for first in range(0, len(straddling), _MASS_CHUNK):
        chosen = straddling[first:first + _MASS_CHUNK]
        z = kernels.standard_draws(len(chosen) * draws_per_kernel, rng)
        parent = np.repeat(chosen, draws_per_kernel)
        draws = kernels.centres[parent] + kernels.sigmas[parent] * z
        share[chosen] = window.contains(draws).reshape(-1, draws_per_kernel).mean(axis=1)
    weights = (np.full(len(kernels), 1 / len(kernels)) if kernels.weights is None
               else kernels.weights)
    variance = (weights**2 * share * (1 - share)).sum() / draws_per_kernel
    return float(weights @ share), math.sqrt(variance)


def leaf_kernels(particles: ParticleSet, variance_factor: float, mass_weighted: bool,
                 truncation_sigma: float) -> tuple[GaussianKernels, int]:
    """EnBiD kernels on ``particles`` (σ_ik² = variance_factor·L_ik²) and the tree depth."""
    boxes = build_leaf_boxes(particles.phase_space)
    weights = None
    if mass_weighted:
        if particles.mass is None or not (particles.mass > 0).all():
            raise InputError("enbid.mass_weighted needs a positive mass for every particle; "
                             "set enbid.mass_weighted: false or give the particles masses")
        weights = particles.mass / particles.mass.sum()
    sigmas = math.sqrt(variance_factor) * boxes.sides
    return GaussianKernels(particles.phase_space, sigmas, weights, truncation_sigma), boxes.depth


class KernelUpsampler(Upsampler):
    """A fitted mixture of Gaussian kernels restricted to the selection window.

    Shared by ``enbid`` and ``kde_mle``: sampling, the window-normalised density and
    weights-only saving. Subclasses set ``kernels``, ``window`` and ``window_mass`` in fit.
    """

    kind: ClassVar[str]

    def __init__(self, sun_position_kpc: Sequence[float], r_max_kpc: float,
                 variance_factor: float = 1 / 12, mass_weighted: bool = False,
                 truncation_sigma: float = 6.0) -> None:
        self.sun_position_kpc = tuple(float(v) for v in sun_position_kpc)
        self.r_max_kpc = float(r_max_kpc)
        self.variance_factor = float(variance_factor)
        self.mass_weighted = bool(mass_weighted)
        self.truncation_sigma = float(truncation_sigma)
        self.window = SelectionWindow(self.sun_position_kpc, self.r_max_kpc)
        self.kernels: GaussianKernels | None = None
        self.window_mass = math.nan
        self.window_mass_stderr = math.nan
        self.tree_depth = 0

    def _require_fitted(self) -> GaussianKernels:
        if self.kernels is None:
            raise GflowError(f"the {self.kind} upsampler is not fitted: call fit() or load one")
        return self.kernels

    def _set_window(self, particles: ParticleSet) -> None:
        max_speed = float(np.linalg.norm(particles.velocities, axis=1).max())
        self.window = SelectionWindow(self.sun_position_kpc, self.r_max_kpc, max_speed)

    def _set_kernels(self, kernels: GaussianKernels, seed: int) -> None:
        self.kernels = kernels
        self.window_mass, self.window_mass_stderr = window_mass(kernels, self.window, seed)
        if self.window_mass <= 0:
            raise GflowError(f"no {self.kind} kernel reaches the selection window {self.window}")

    def propose(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(count, 6) draws from the kernel mixture, before the window is applied."""
        return self._require_fitted().sample(count, rng)

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        """ln p_W [kpc⁻³ (km/s)⁻³]: the mixture over its window mass; −inf outside the window."""
        kernels = self._require_fitted()
        phase_space = np.asarray(phase_space, dtype=np.float64)
        result = np.full(len(phase_space), -np.inf)
        inside = self.window.contains(phase_space)
        result[inside] = kernels.log_prob(phase_space[inside]) - math.log(self.window_mass)
        return result

    def spec(self) -> dict[str, Any]:
        kernels = self._require_fitted()
        return {
            "variance_factor": self.variance_factor,
            "mass_weighted": self.mass_weighted,
            "truncation_sigma": self.truncation_sigma,
            "window": asdict(self.window),
            "window_mass": self.window_mass,
            "window_mass_stderr": self.window_mass_stderr,
            "kernels": len(kernels),
            "tree_depth": self.tree_depth,
        }

    def save_weights(self, directory: Path) -> None:
        kernels = self._require_fitted()
        arrays = {"centres": kernels.centres, "sigmas": kernels.sigmas}
        if kernels.weights is not None:
            arrays["weights"] = kernels.weights
        np.savez(Path(directory) / WEIGHTS_FILE, **arrays)

    def _restore(self, spec: dict[str, Any], directory: Path) -> None:
        window = spec["window"]
        self.window = SelectionWindow(tuple(window["sun_position_kpc"]), window["r_max_kpc"],
                                      window["max_speed_kms"])
        with np.load(Path(directory) / WEIGHTS_FILE, allow_pickle=False) as saved:
            weights = saved["weights"] if "weights" in saved else None
            self.kernels = GaussianKernels(saved["centres"], saved["sigmas"], weights,
                                           self.truncation_sigma)
        self.window_mass = float(spec["window_mass"])
        self.window_mass_stderr = float(spec["window_mass_stderr"])
        self.tree_depth = int(spec["tree_depth"])


class EnbidUpsampler(KernelUpsampler):
    """The simplified EnBiD upsampler of paper §4 (kind ``enbid``).

    Args:
        sun_position_kpc: centre of the selection sphere [kpc].
        r_max_kpc: its radius [kpc].
        variance_factor: σ_ik² / L_ik² (1/12: a uniform distribution over the leaf box).
        mass_weighted: draw parent particles in proportion to mass (paper: uniformly).
        truncation_sigma: kernels are truncated at χ² ≤ truncation_sigma².
    """

    kind = "enbid"
    config_sections = ("enbid",)

    @classmethod
    def from_config(cls, config: RunConfig) -> EnbidUpsampler:
        enbid = config.enbid
        return cls(config.galaxy.sun_position_kpc, config.galaxy.r_max_kpc,
                   enbid.variance_factor, enbid.mass_weighted, enbid.truncation_sigma)

    def fit(self, particles: ParticleSet, seed: int, workdir: str | Path | None = None,
            runner: MemberRunner = run_members_here) -> EnbidUpsampler:
        """Build the tree and kernels on every train particle; ``workdir``/``runner`` unused."""
        self._set_window(particles)
        kernels, self.tree_depth = leaf_kernels(particles, self.variance_factor,
                                                self.mass_weighted, self.truncation_sigma)
        self._set_kernels(kernels, seed)
        return self

    @classmethod
    def from_saved(cls, spec: dict[str, Any], directory: Path) -> EnbidUpsampler:
        window = spec["window"]
        model = cls(window["sun_position_kpc"], window["r_max_kpc"], spec["variance_factor"],
                    spec["mass_weighted"], spec["truncation_sigma"])
        model._restore(spec, directory)
        return model
