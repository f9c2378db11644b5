"""The real EnBiD with Ananke's kernels, sampled as Galaxia does (upsampler ``enbid_ananke``).

The Ananke mocks (Sanderson et al. 2020) feed EnBiD's phase-space densities into Galaxia
(Sharma et al. 2011), which spreads every star particle into stars with a 6-D kernel
(paper §1 and §4, where the paper replaces this by Gaussians on EnBiD's boxes). Here:

* widths (h_pos [kpc], h_vel [km/s]) per particle come from three runs of the EnBiD
  binary, as py-ananke computes them (:func:`~gflow_dist.baselines.enbid_binary.ananke_kernels`);
* a star picks its parent particle uniformly (the paper's ×500 upsampling), a direction û
  uniform on the 5-sphere (a normalised Gaussian 6-vector) and a scaled radius x from the
  6-D Epanechnikov profile p(x) ∝ (1 − x²)·x⁵ on [0, 1], drawn exactly as x = √t with
  t ~ Beta(3, 2) (t = x² has density ∝ (1 − t)·t²); then Δr = x·û[:3]·h_pos and
  Δv = x·û[3:]·h_vel;
* in scaled coordinates u = (Δr/h_pos, Δv/h_vel) that kernel has density
  K(u) = c·(1 − |u|²) on the unit 6-ball with c = 24/π³ (∫₀¹(1 − x²)x⁵dx = 1/24 and the
  5-sphere's area is π³), i.e. c·(1 − |u|²)/(h_pos³·h_vel³) in kpc⁻³ (km/s)⁻³.

The kernel widths were checked against py-ananke's source; Galaxia's C++ sampler was not
available to check, and the Epanechnikov profile is the one EnBiD used (TypeOfKernel 3).

Stars are kept only inside the selection window (sphere of r_max about the Sun, speed at
most the fastest train particle's), see :mod:`gflow_dist.sample.window`. ``log_prob`` is
therefore the kernel mixture divided by its mass inside the window, so it integrates to 1
over the window, and −inf outside it. That mass is exact for kernels wholly inside the
window (1) and counted from 256 drawn stars per kernel that straddles its edge.

The kernels have compact support and each holds about one particle's phase-space volume,
so the density is exactly zero in the gaps between them: held-out points there get −inf.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from gflow_dist.baselines.enbid_binary import ananke_kernels
from gflow_dist.config import RunConfig
from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import GflowError
from gflow_dist.sample.window import SelectionWindow
from gflow_dist.upsamplers.base import MemberRunner, Upsampler, run_members_here

KERNEL_NORM = 24 / np.pi**3
"""c in K(u) = c·(1 − |u|²): the 6-D Epanechnikov kernel's normalisation."""
WIDTH_CLASS_RATIO = np.sqrt(2.0)
"""Kernels whose h_pos and h_vel each fall in the same factor-√2 bin share one KD-tree."""
DENSITY_CHUNK = 16_384
WINDOW_DRAWS_PER_KERNEL = 256
WINDOW_DRAW_CHUNK = 1_000_000
WEIGHTS_FILE = "kernels.npz"


def unit_kernel_draws(count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 6) draws from the 6-D Epanechnikov kernel on the unit ball (module docstring)."""
    direction = rng.standard_normal((count, 6))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = np.sqrt(rng.beta(3.0, 2.0, size=count))
    return radius[:, None] * direction


class EpanechnikovMixture:
    """Equal-weight mixture of 6-D Epanechnikov kernels with per-kernel widths.

    Args:
        centres: (n, 6) kernel centres x, y, z [kpc], vx, vy, vz [km/s].
        widths: (n, 2) positive h_pos [kpc] and h_vel [km/s].

    The density is summed exactly over the kernels whose support holds a point. Kernels
    are grouped by width class; a group's centres sit in a KD-tree in coordinates divided
    by the group's largest widths, where every kernel of the group lies inside the unit
    ball about its centre, so one radius-1 search per group finds every candidate. Only
    points inside the group's bounding box, grown by those widths, are searched.
    """

    def __init__(self, centres: np.ndarray, widths: np.ndarray) -> None:
        if centres.ndim != 2 or centres.shape[1] != 6 or widths.shape != (len(centres), 2):
            raise GflowError(f"kernel centres must be (n, 6) and widths (n, 2), got "
                             f"{centres.shape} and {widths.shape}")
        if not (np.isfinite(widths) & (widths > 0)).all():
            raise GflowError("kernel widths must be positive and finite")
        self.centres = np.asarray(centres, dtype=np.float64)
        self.widths = np.asarray(widths, dtype=np.float64)
        classes = np.floor(np.log(self.widths) / np.log(WIDTH_CLASS_RATIO)).astype(np.int64)
        group_of = np.unique(classes, axis=0, return_inverse=True)[1].reshape(-1)
        self.groups: list[tuple[np.ndarray, np.ndarray, cKDTree, np.ndarray]] = []
        for group in range(group_of.max() + 1):
            members = np.flatnonzero(group_of == group)
            scale = np.repeat(self.widths[members].max(axis=0), 3)
            centres = self.centres[members]
            reach = np.stack([centres.min(axis=0) - scale, centres.max(axis=0) + scale])
            self.groups.append((members, scale, cKDTree(centres / scale), reach))

    def __len__(self) -> int:
        return len(self.centres)

    def kernel_values(self, points: np.ndarray, kernels: np.ndarray) -> np.ndarray:
        """Density [kpc⁻³ (km/s)⁻³] of kernel ``kernels[i]`` at ``points[i]``."""
        widths = self.widths[kernels]
        scaled = (points - self.centres[kernels]) / np.repeat(widths, 3, axis=1)
        profile = np.clip(1.0 - np.einsum("ij,ij->i", scaled, scaled), 0.0, None)
        return KERNEL_NORM * profile / (widths[:, 0] * widths[:, 1]) ** 3

    def density(self, points: np.ndarray) -> np.ndarray:
        """Mixture density [kpc⁻³ (km/s)⁻³] at (m, 6) points; 0 outside every kernel."""
        total = np.zeros(len(points))
        for start in range(0, len(points), DENSITY_CHUNK):
            chunk = points[start:start + DENSITY_CHUNK]
            for members, scale, tree, reach in self.groups:
                near = np.flatnonzero(((chunk >= reach[0]) & (chunk <= reach[1])).all(axis=1))
                if not len(near):
                    continue
                pairs = cKDTree(chunk[near] / scale).sparse_distance_matrix(
                    tree, 1.0, output_type="ndarray")
                rows = near[pairs["i"]]
                values = self.kernel_values(chunk[rows], members[pairs["j"]])
                total[start:start + len(chunk)] += np.bincount(rows, values,
                                                               minlength=len(chunk))
        return total / len(self)

    def sample(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(count, 6) draws and the (count,) index of each one's kernel (chosen uniformly)."""
        parents = rng.integers(len(self), size=count)
        offsets = unit_kernel_draws(count, rng) * np.repeat(self.widths[parents], 3, axis=1)
        return self.centres[parents] + offsets, parents


def window_mass(mixture: EpanechnikovMixture, window: SelectionWindow,
                rng: np.random.Generator) -> tuple[float, float]:
    """The mixture's probability mass inside ``window`` and its standard error.

    Kernels wholly inside the window count 1 and those wholly outside 0; for each kernel
    straddling its edge the share of ``WINDOW_DRAWS_PER_KERNEL`` draws that
    ``window.contains`` keeps is counted.
    """
    distance = np.linalg.norm(mixture.centres[:, :3] - np.asarray(window.sun_position_kpc),
                              axis=1)
    speed = np.linalg.norm(mixture.centres[:, 3:], axis=1)
    h_pos, h_vel = mixture.widths.T
    inside = (distance + h_pos <= window.r_max_kpc) & (speed + h_vel <= window.max_speed_kms)
    outside = (distance - h_pos >= window.r_max_kpc) | (speed - h_vel >= window.max_speed_kms)
    fractions = inside.astype(np.float64)
    straddling = np.flatnonzero(~inside & ~outside)
    per_chunk = max(1, WINDOW_DRAW_CHUNK // WINDOW_DRAWS_PER_KERNEL)
    for start in range(0, len(straddling), per_chunk):
        kernels = np.repeat(straddling[start:start + per_chunk], WINDOW_DRAWS_PER_KERNEL)
        draws = mixture.centres[kernels] + unit_kernel_draws(len(kernels), rng) * np.repeat(
            mixture.widths[kernels], 3, axis=1)
        kept = window.contains(draws).reshape(-1, WINDOW_DRAWS_PER_KERNEL)
        fractions[straddling[start:start + per_chunk]] = kept.mean(axis=1)
    shares = fractions[straddling]
    variance = (shares * (1 - shares) / WINDOW_DRAWS_PER_KERNEL).sum()
    return float(fractions.mean()), float(np.sqrt(variance) / len(mixture))


class AnankeUpsampler(Upsampler):
    """EnBiD widths from the real binary, Galaxia's kernel sampling (kind ``enbid_ananke``).

    Args:
        sun_position_kpc: centre of the selection sphere [kpc].
        r_max_kpc: its radius [kpc].
        neighbours: EnBiD's smoothing neighbours ngb (py-ananke's default is 64).
    """

    kind = "enbid_ananke"
    config_sections = ("enbid_ananke",)

    def __init__(self, sun_position_kpc: tuple[float, float, float], r_max_kpc: float,
                 neighbours: int = 64) -> None:
        self.sun_position_kpc = tuple(float(v) for v in sun_position_kpc)
        self.r_max_kpc = float(r_max_kpc)
        self.neighbours = int(neighbours)
        self.window = SelectionWindow(self.sun_position_kpc, self.r_max_kpc)
        self.mixture: EpanechnikovMixture | None = None
        self.window_mass = 1.0
        self.window_mass_stderr = 0.0

    @classmethod
    def from_config(cls, config: RunConfig) -> AnankeUpsampler:
        return cls(config.galaxy.sun_position_kpc, config.galaxy.r_max_kpc,
                   config.enbid_ananke.neighbours)

    def fit(self, particles: ParticleSet, seed: int, workdir: str | Path | None = None,
            runner: MemberRunner = run_members_here) -> AnankeUpsampler:
        """Run EnBiD three times for the widths, then measure the in-window mass.

        Particles without masses count as equal masses. ``workdir`` and ``runner`` are
        unused: EnBiD runs in seconds in a temporary folder.
        """
        masses = np.ones(len(particles)) if particles.mass is None else particles.mass
        widths = ananke_kernels(particles.phase_space, masses, self.neighbours)
        max_speed = float(np.linalg.norm(particles.velocities, axis=1).max())
        self.window = SelectionWindow(self.sun_position_kpc, self.r_max_kpc, max_speed)
        self.mixture = EpanechnikovMixture(particles.phase_space.copy(), widths)
        self.window_mass, self.window_mass_stderr = window_mass(
            self.mixture, self.window, np.random.default_rng([seed, len(particles)]))
        return self

    def _require_fitted(self) -> EpanechnikovMixture:
        if self.mixture is None:
            raise RuntimeError("the enbid_ananke upsampler is not fitted: call fit() or load a "
                               "model")
        return self.mixture

    def propose_with_parents(self, count: int,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(count, 6) candidate stars and the index of each one's parent particle."""
        return self._require_fitted().sample(count, rng)

    def propose(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.propose_with_parents(count, rng)[0]

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        """ln density [kpc⁻³ (km/s)⁻³] normalised over the window; −inf outside it and in
        the gaps between kernels."""
        mixture = self._require_fitted()
        result = np.full(len(phase_space), -np.inf)
        inside = self.window.contains(phase_space)
        with np.errstate(divide="ignore"):
            result[inside] = (np.log(mixture.density(phase_space[inside]))
                              - np.log(self.window_mass))
        return result

    def spec(self) -> dict[str, Any]:
        mixture = self._require_fitted()
        return {
            "neighbours": self.neighbours,
            "window": asdict(self.window),
            "window_mass": self.window_mass,
            "window_mass_stderr": self.window_mass_stderr,
            "kernels": len(mixture),
        }

    def save_weights(self, directory: Path) -> None:
        mixture = self._require_fitted()
        np.savez(directory / WEIGHTS_FILE, centres=mixture.centres, widths=mixture.widths)

    @classmethod
    def from_saved(cls, spec: dict[str, Any], directory: Path) -> AnankeUpsampler:
        window = spec["window"]
        model = cls(window["sun_position_kpc"], window["r_max_kpc"], spec["neighbours"])
        model.window = SelectionWindow(model.sun_position_kpc, model.r_max_kpc,
                                       float(window["max_speed_kms"]))
        with np.load(Path(directory) / WEIGHTS_FILE, allow_pickle=False) as weights:
            model.mixture = EpanechnikovMixture(weights["centres"], weights["widths"])
        model.window_mass = float(spec["window_mass"])
        model.window_mass_stderr = float(spec["window_mass_stderr"])
        return model
