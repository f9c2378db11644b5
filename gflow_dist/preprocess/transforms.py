"""The preprocessing of paper eqs. 9–11, with exact inverses and log-Jacobians.

Positions go through three maps, in order:

- eq. 9, centring and scaling: u = (r − r☉) / (r_max · c), which puts the selection
  sphere inside the open unit ball (c = 1.000001 keeps particles off its surface);
- eq. 10, the radial map: w = û · atanh|u|, which stretches the open ball onto R³;
- eq. 11, standardisation: s = (w − μ_w) / σ_w, with μ and σ of the train particles.

Velocities are standardised only (eq. 11). A density learned in the preprocessed space
converts to physical units with ``log p(r, v) = log p(s_r, s_v) + log|det ∂s/∂(r, v)|``,
so the log-Jacobians here are those of the forward maps, in units of ln(kpc⁻³ (km/s)⁻³).

References:
    arXiv:2211.11765, §3.3, eqs. 9–11.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BOUNDARY_FACTOR = 1.000001
"""The paper's c in eq. 9."""

_SERIES_RADIUS = 1e-4
"""Below this |u|, atanh(ρ)/ρ uses its series 1 + ρ²/3 to stay exact near the origin."""


def _atanh_over_rho(rho: np.ndarray) -> np.ndarray:
    """atanh(ρ)/ρ, continuous at ρ = 0."""
    safe = np.where(rho < _SERIES_RADIUS, 0.5, rho)  # placeholder inside (0, 1)
    return np.where(rho < _SERIES_RADIUS, 1.0 + rho**2 / 3.0, np.arctanh(safe) / safe)


def _tanh_over_norm(norm: np.ndarray) -> np.ndarray:
    """tanh(|w|)/|w|, continuous at |w| = 0."""
    safe = np.where(norm < _SERIES_RADIUS, 1.0, norm)
    return np.where(norm < _SERIES_RADIUS, 1.0 - norm**2 / 3.0, np.tanh(safe) / safe)


def ball_to_space(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 10: map the open unit ball onto R³ by w = û · atanh|u|.

    Args:
        u: (n, 3) points with |u| < 1.

    Returns:
        w: (n, 3) mapped points, and the (n,) log|det ∂w/∂u| =
        −ln(1 − ρ²) + 2 ln(atanh ρ / ρ) with ρ = |u|.
    """
    rho = np.linalg.norm(u, axis=1)
    ratio = _atanh_over_rho(rho)
    log_det = -np.log1p(-(rho**2)) + 2.0 * np.log(ratio)
    return u * ratio[:, None], log_det


def space_to_ball(w: np.ndarray) -> np.ndarray:
    """Inverse of eq. 10: u = ŵ · tanh|w|."""
    norm = np.linalg.norm(w, axis=1)
    return w * _tanh_over_norm(norm)[:, None]


@dataclass(frozen=True)
class Preprocessor:
    """Eqs. 9–11 fitted to a set of train particles.

    Attributes:
        sun_position_kpc: r☉, the centre of the selection sphere [kpc].
        r_max_kpc: radius of the selection sphere [kpc].
        position_mean, position_std: μ and σ of the radially mapped positions (eq. 11),
            dimensionless.
        velocity_mean, velocity_std: μ and σ of the velocities [km/s].
        boundary_factor: the paper's c in eq. 9.
    """

    sun_position_kpc: tuple[float, float, float]
    r_max_kpc: float
    position_mean: tuple[float, float, float]
    position_std: tuple[float, float, float]
    velocity_mean: tuple[float, float, float]
    velocity_std: tuple[float, float, float]
    boundary_factor: float = BOUNDARY_FACTOR

    @classmethod
    def fit(
        cls,
        phase_space: np.ndarray,
        sun_position_kpc: tuple[float, float, float],
        r_max_kpc: float,
    ) -> Preprocessor:
        """Fit the standardisation of eq. 11 to (n, 6) train particles [kpc, km/s]."""
        u = (phase_space[:, :3] - np.asarray(sun_position_kpc)) / (r_max_kpc * BOUNDARY_FACTOR)
        w, _ = ball_to_space(u)
        velocities = phase_space[:, 3:]
        return cls(
            sun_position_kpc=tuple(float(v) for v in sun_position_kpc),
            r_max_kpc=float(r_max_kpc),
            position_mean=tuple(w.mean(axis=0).tolist()),
            position_std=tuple(w.std(axis=0).tolist()),
            velocity_mean=tuple(velocities.mean(axis=0).tolist()),
            velocity_std=tuple(velocities.std(axis=0).tolist()),
        )

    @property
    def _scale(self) -> float:
        return self.r_max_kpc * self.boundary_factor

    def positions_forward(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eqs. 9–11 on (n, 3) positions [kpc].

        Returns the preprocessed positions and log|det ∂s/∂r| [ln kpc⁻³] per row. Rows on
        or outside the sphere's boundary give non-finite values.
        """
        u = (r - np.asarray(self.sun_position_kpc)) / self._scale
        w, log_det_radial = ball_to_space(u)
        std = np.asarray(self.position_std)
        s = (w - np.asarray(self.position_mean)) / std
        log_det = log_det_radial - 3.0 * np.log(self._scale) - np.log(std).sum()
        return s, log_det

    def positions_inverse(self, s: np.ndarray) -> np.ndarray:
        """Inverse of eqs. 9–11: preprocessed positions to (n, 3) positions [kpc]."""
        w = s * np.asarray(self.position_std) + np.asarray(self.position_mean)
        return space_to_ball(w) * self._scale + np.asarray(self.sun_position_kpc)

    def velocities_forward(self, v: np.ndarray) -> tuple[np.ndarray, float]:
        """Eq. 11 on (n, 3) velocities [km/s]; returns them and log|det| [ln (km/s)⁻³]."""
        std = np.asarray(self.velocity_std)
        return (v - np.asarray(self.velocity_mean)) / std, float(-np.log(std).sum())

    def velocities_inverse(self, s: np.ndarray) -> np.ndarray:
        """Inverse of eq. 11: standardised velocities to (n, 3) velocities [km/s]."""
        return s * np.asarray(self.velocity_std) + np.asarray(self.velocity_mean)

    def to_dict(self) -> dict[str, object]:
        """JSON-safe parameters, for a model's spec file."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocessor:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
