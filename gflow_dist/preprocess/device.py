"""Inverses of the preprocessing (paper eqs. 9–11) as float64 torch kernels.

The same maps as :class:`~gflow_dist.preprocess.transforms.Preprocessor`'s
``positions_inverse`` and ``velocities_inverse``, evaluated on whatever device the input
tensor lives on, in float64 (the inverse of eq. 10 squeezes R³ into the unit ball, so a
float32 tanh would lose the stars near the boundary of the selection sphere).

References:
    arXiv:2211.11765, §3.3, eqs. 9–11.
"""

from __future__ import annotations

import torch

from gflow_dist.preprocess.transforms import _SERIES_RADIUS, Preprocessor


def _vector(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def _tanh_over_norm(norm: torch.Tensor) -> torch.Tensor:
    """tanh(|w|)/|w|, continuous at |w| = 0 (series 1 − |w|²/3 below ``_SERIES_RADIUS``)."""
    small = norm < _SERIES_RADIUS
    safe = torch.where(small, torch.ones_like(norm), norm)
    return torch.where(small, 1.0 - norm**2 / 3.0, torch.tanh(safe) / safe)


def positions_inverse(preprocessor: Preprocessor, s: torch.Tensor) -> torch.Tensor:
    """Inverse of eqs. 9–11: (n, 3) preprocessed positions to positions [kpc], float64.

    Undoes eq. 11 (w = s σ_w + μ_w), eq. 10 (u = ŵ tanh|w|) and eq. 9
    (r = u r_max c + r☉), in the order of the numpy version.
    """
    s = s.to(torch.float64)
    w = s * _vector(preprocessor.position_std, s) + _vector(preprocessor.position_mean, s)
    norm = torch.sqrt(w[:, 0] ** 2 + w[:, 1] ** 2 + w[:, 2] ** 2)
    u = w * _tanh_over_norm(norm)[:, None]
    scale = preprocessor.r_max_kpc * preprocessor.boundary_factor
    return u * scale + _vector(preprocessor.sun_position_kpc, s)


def velocities_inverse(preprocessor: Preprocessor, s: torch.Tensor) -> torch.Tensor:
    """Inverse of eq. 11: (n, 3) standardised velocities to velocities [km/s], float64."""
    s = s.to(torch.float64)
    return s * _vector(preprocessor.velocity_std, s) + _vector(preprocessor.velocity_mean, s)
