"""Absolute scores against a known density, and the simplest reference density model.

When the galaxy's true density is known (the built-in mock galaxy), the KL divergence
KL(truth ‖ model) = E_truth[log p − log q] is estimated on held-out particles, which are
draws from the truth. A single Gaussian fitted in the preprocessed space (eqs. 9–11) is
the floor any flow must clear.
"""

from __future__ import annotations

import numpy as np

from gflow_dist.data.particles import ParticleSet
from gflow_dist.preprocess import Preprocessor


def kl_divergence(log_true: np.ndarray, log_model: np.ndarray) -> tuple[float, float]:
    """KL(truth ‖ model) [nats] and its standard error, from log-densities at truth draws."""
    gap = np.asarray(log_true) - np.asarray(log_model)
    return float(gap.mean()), float(gap.std(ddof=1) / np.sqrt(len(gap)))


def preprocessed_gaussian_log_prob(train: ParticleSet, held_out: ParticleSet,
                                   sun_position_kpc: tuple[float, float, float],
                                   r_max_kpc: float) -> np.ndarray:
    """ln density [kpc⁻³ (km/s)⁻³] of ``held_out`` under one 6-D Gaussian fitted to ``train``.

    The Gaussian lives in the preprocessed space, so mapped back it is a proper density on
    the selection sphere, like the CNF's.
    """
    preprocessor = Preprocessor.fit(train.phase_space, sun_position_kpc, r_max_kpc)

    def preprocessed(particles: ParticleSet) -> tuple[np.ndarray, np.ndarray]:
        s_r, log_det_r = preprocessor.positions_forward(particles.positions)
        s_v, log_det_v = preprocessor.velocities_forward(particles.velocities)
        return np.hstack([s_r, s_v]), log_det_r + log_det_v

    fit_rows, _ = preprocessed(train)
    mean, covariance = fit_rows.mean(axis=0), np.cov(fit_rows, rowvar=False)
    rows, log_det = preprocessed(held_out)
    centred = rows - mean
    mahalanobis = np.einsum("ij,jk,ik->i", centred, np.linalg.inv(covariance), centred)
    log_norm = np.linalg.slogdet(covariance)[1] + rows.shape[1] * np.log(2 * np.pi)
    return -0.5 * (mahalanobis + log_norm) + log_det
