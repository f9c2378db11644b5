"""Exact stellar populations of the mock galaxy: p(age, [Fe/H] | x, v) in closed form.

Each component k of :class:`~gflow_dist.data.mock.MockGalaxy` has its own population
density h_k(age, feh), and a star's population depends on its phase space only through
its component:

    p(age, feh | x, v) = Σ_k f_k(x, v) h_k(age, feh) / Σ_k f_k(x, v),

with f_k = w_k p_k(x, v) the component terms of the phase-space density
(:meth:`MockGalaxy.component_log_probs`). Each h_k is an age distribution times an
age–metallicity relation, both Gaussians truncated to the physical range so that h_k
integrates to one exactly:

    h_k = TN(age; μ_k, σ_k; 0, T) · TN(feh; a_k + b_k·age, s_k; −5, 1.5),

T = 13.8 Gyr (:data:`~gflow_dist.data.populations.UNIVERSE_AGE_GYR`), TN a normal density
renormalised to its interval. The parameters (:data:`COMPONENT_POPULATIONS`) are round
numbers in the ranges of the Milky Way's populations (e.g. Bland-Hawthorn & Gerhard 2016,
ARA&A 54, 529, §5–6): a young, solar, slowly enriching thin disk; an old, [Fe/H] ≈ −0.5
thick disk; a Hercules-like moving group of intermediate age; an old metal-poor halo; and
a very metal-poor (−2.2), old, chemically narrow stream, like those of disrupted globular
clusters.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np
from scipy.special import logsumexp, ndtr, ndtri

from gflow_dist.data.populations import FEH_RANGE, UNIVERSE_AGE_GYR

AGE_RANGE_GYR = (0.0, UNIVERSE_AGE_GYR)


class Population(NamedTuple):
    """h_k: age ~ TN(age_mean_gyr, age_sigma_gyr) on :data:`AGE_RANGE_GYR` [Gyr], and
    [Fe/H] | age ~ TN(feh_at_age_zero + feh_per_gyr·age, feh_sigma) on ``FEH_RANGE`` [dex]."""

    age_mean_gyr: float
    age_sigma_gyr: float
    feh_at_age_zero: float
    """[Fe/H] of a star born today on the component's age–metallicity relation [dex]."""
    feh_per_gyr: float
    """Slope d[Fe/H]/d(age) [dex/Gyr]; negative: older stars are more metal-poor."""
    feh_sigma: float
    """Scatter of [Fe/H] about the relation [dex]."""


COMPONENT_POPULATIONS: dict[str, Population] = {
    "thin_disk": Population(4.0, 2.5, 0.10, -0.05, 0.20),
    "thick_disk": Population(10.0, 1.5, -0.10, -0.04, 0.25),
    "moving_group": Population(6.0, 2.0, 0.15, -0.04, 0.15),
    "halo": Population(12.0, 1.0, -1.50, 0.00, 0.50),
    "stream": Population(12.5, 0.3, -2.20, 0.00, 0.08),
}
"""h_k of each mock component, keyed as :data:`~gflow_dist.data.mock.COMPONENT_NAMES`."""


class ComponentDensity(Protocol):
    """What the populations need of a mock galaxy."""

    component_names: tuple[str, ...]

    def component_log_probs(self, phase_space: np.ndarray) -> np.ndarray: ...


def _log_truncated_normal(x: np.ndarray, mean: np.ndarray | float, sigma: float,
                          bounds: tuple[float, float]) -> np.ndarray:
    """ln TN(x; mean, σ) on ``bounds`` (−inf outside; the lower bound of ages is open)."""
    low, high = ((np.asarray(b, dtype=np.float64) - mean) / sigma for b in bounds)
    log_mass = np.log(ndtr(high) - ndtr(low))
    z = (x - mean) / sigma
    log_pdf = -0.5 * z**2 - 0.5 * np.log(2.0 * np.pi) - np.log(sigma) - log_mass
    return np.where((x > bounds[0]) & (x <= bounds[1]), log_pdf, -np.inf)


def _draw_truncated_normal(uniform: np.ndarray, mean: np.ndarray | float, sigma: float,
                           bounds: tuple[float, float]) -> np.ndarray:
    """Inverse-CDF draws of TN(mean, σ) on ``bounds`` (lower bound open) from uniforms in
    [0, 1)."""
    low, high = (ndtr((np.asarray(b, dtype=np.float64) - mean) / sigma) for b in bounds)
    draws = mean + sigma * ndtri(low + uniform * (high - low))
    return np.clip(draws, np.nextafter(bounds[0], np.inf), bounds[1])


def log_h(population: Population, age: np.ndarray, feh: np.ndarray) -> np.ndarray:
    """ln h_k(age [Gyr], feh [dex]) [ln(Gyr⁻¹ dex⁻¹)]."""
    mean_feh = population.feh_at_age_zero + population.feh_per_gyr * age
    return (_log_truncated_normal(age, population.age_mean_gyr, population.age_sigma_gyr,
                                  AGE_RANGE_GYR)
            + _log_truncated_normal(feh, mean_feh, population.feh_sigma, FEH_RANGE))


def population_log_prob(galaxy: ComponentDensity, phase_space: np.ndarray, age: np.ndarray,
                        feh: np.ndarray) -> np.ndarray:
    """ln p(age, feh | x, v) [ln(Gyr⁻¹ dex⁻¹)] of (n, 6) rows (module docstring); NaN where
    the phase-space density is zero (outside the selection sphere)."""
    log_f = galaxy.component_log_probs(phase_space)
    log_hs = np.stack([log_h(COMPONENT_POPULATIONS[name], age, feh)
                       for name in galaxy.component_names])
    with np.errstate(invalid="ignore"):
        return logsumexp(log_f + log_hs, axis=0) - logsumexp(log_f, axis=0)


def sample_populations(galaxy: ComponentDensity, phase_space: np.ndarray,
                       seed: int) -> dict[str, np.ndarray]:
    """Exact draws of (age [Gyr], feh [dex]) given each row's phase space.

    A row's component is drawn from its membership probabilities f_k / Σ f_k, then its
    population from h_k, with three uniforms per row from ``numpy.random.default_rng(
    [seed, 1])``: a function of (rows, seed) only, and of a stream apart from the one
    that drew the phase space.
    """
    log_f = galaxy.component_log_probs(phase_space)
    membership = np.exp(log_f - logsumexp(log_f, axis=0))
    uniforms = np.random.default_rng([seed, 1]).random((3, len(phase_space)))
    component = (uniforms[0] > np.cumsum(membership, axis=0)).sum(axis=0)
    component = np.minimum(component, len(galaxy.component_names) - 1)
    age, feh = np.empty(len(phase_space)), np.empty(len(phase_space))
    for k, name in enumerate(galaxy.component_names):
        rows = component == k
        population = COMPONENT_POPULATIONS[name]
        age[rows] = _draw_truncated_normal(uniforms[1, rows], population.age_mean_gyr,
                                           population.age_sigma_gyr, AGE_RANGE_GYR)
        mean_feh = population.feh_at_age_zero + population.feh_per_gyr * age[rows]
        feh[rows] = _draw_truncated_normal(uniforms[2, rows], mean_feh, population.feh_sigma,
                                           FEH_RANGE)
    return {"age": age, "feh": feh}
