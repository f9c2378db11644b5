"""The mock galaxy's exact populations: each h_k and each conditional integrate to one, and
the draws follow the density and pass the particle checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gflow_dist.data.mock_populations import (
    AGE_RANGE_GYR,
    COMPONENT_POPULATIONS,
    log_h,
    population_log_prob,
    sample_populations,
)
from gflow_dist.data.particles import ParticleSet
from gflow_dist.data.populations import FEH_RANGE
from gflow_dist.data.validation import check_populations


def _grid(n_age=1400, n_feh=1300):
    """Midpoint grid over the population box and its cell area [Gyr dex]."""
    age_edges = np.linspace(*AGE_RANGE_GYR, n_age + 1)
    feh_edges = np.linspace(*FEH_RANGE, n_feh + 1)
    age = 0.5 * (age_edges[1:] + age_edges[:-1])
    feh = 0.5 * (feh_edges[1:] + feh_edges[:-1])
    cell = np.diff(age_edges)[0] * np.diff(feh_edges)[0]
    a, f = np.meshgrid(age, feh, indexing="ij")
    return a.ravel(), f.ravel(), cell


@pytest.mark.parametrize("name", sorted(COMPONENT_POPULATIONS))
def test_each_component_population_integrates_to_one(name):
    age, feh, cell = _grid()
    total = np.exp(log_h(COMPONENT_POPULATIONS[name], age, feh)).sum() * cell
    assert total == pytest.approx(1.0, abs=2e-3)


def test_the_conditional_integrates_to_one_at_every_phase_space_point(mock_galaxy):
    rows = mock_galaxy.sample(5, seed=3)
    rows = np.vstack([rows, mock_galaxy.sample_component("stream", 2, seed=4)])
    age, feh, cell = _grid(700, 650)
    for row in rows:
        log_p = population_log_prob(mock_galaxy, np.repeat(row[None], len(age), 0), age, feh)
        assert np.exp(log_p).sum() * cell == pytest.approx(1.0, abs=5e-3)


def test_stream_stars_draw_the_streams_population(mock_galaxy):
    stream_rows = mock_galaxy.sample_component("stream", 4000, seed=5)
    drawn = sample_populations(mock_galaxy, stream_rows, seed=6)
    population = COMPONENT_POPULATIONS["stream"]
    assert stats.kstest(drawn["feh"], stats.norm(population.feh_at_age_zero,
                                                 population.feh_sigma).cdf).pvalue > 1e-3
    assert stats.kstest(drawn["age"], stats.norm(population.age_mean_gyr,
                                                 population.age_sigma_gyr).cdf).pvalue > 1e-3


def test_draws_depend_on_phase_space_as_the_conditional_says(mock_galaxy):
    """Draws score higher under their own row's conditional than under a wrong population
    model or under another row's conditional."""
    rows = mock_galaxy.sample(20_000, seed=7)
    drawn = sample_populations(mock_galaxy, rows, seed=8)
    log_p = population_log_prob(mock_galaxy, rows, drawn["age"], drawn["feh"])
    assert np.isfinite(log_p).all()
    # The same draws scored under a wrong model (the halo's h for every star) must do worse.
    wrong = log_h(COMPONENT_POPULATIONS["halo"], drawn["age"], drawn["feh"])
    assert log_p.mean() > wrong.mean() + 1.0
    # Shuffling populations across stars breaks the dependence on phase space: on average
    # the true conditional of the row must beat that of a random other row.
    shuffled = population_log_prob(mock_galaxy, rows[::-1], drawn["age"], drawn["feh"])
    assert log_p.mean() > shuffled.mean()


def test_drawn_populations_are_valid_particle_populations_and_reproducible(mock_galaxy):
    particles = mock_galaxy.particles(3000, seed=11)
    drawn = sample_populations(mock_galaxy, particles.phase_space, seed=11)
    check_populations(ParticleSet(particles.phase_space, particles.mass, {}, drawn), "mock")
    again = sample_populations(mock_galaxy, particles.phase_space, seed=11)
    np.testing.assert_array_equal(again["age"], drawn["age"])
    assert (drawn["age"] > 0).all() and (drawn["age"] <= AGE_RANGE_GYR[1]).all()
