"""KDE-MLE: EnBiD widths scaled by factors that maximise the held-out log-likelihood."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gflow_dist.baselines.enbid import leaf_kernels
from gflow_dist.baselines.kde_mle import (
    KdeMleUpsampler,
    golden_section_max,
    heldout_log_likelihood,
    split_holdout,
)
from gflow_dist.config import RunConfig, build_config
from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import InputError

SUN = (-8.0, 0.0, 0.02)
STEP = 0.05
"""ln α offset of the neighbours an optimum must beat."""


@pytest.fixture(scope="module")
def gaussian_particles() -> ParticleSet:
    """1500 draws of a known 6-D Gaussian centred on the Sun (well inside the window)."""
    rng = np.random.default_rng(12)
    mean = np.array([*SUN, 0.0, 220.0, 0.0])
    sigma = np.array([0.5, 0.5, 0.3, 30.0, 25.0, 20.0])
    return ParticleSet(mean + sigma * rng.standard_normal((1500, 6)))


@pytest.fixture(scope="module")
def fitted(gaussian_particles) -> KdeMleUpsampler:
    return KdeMleUpsampler.from_config(RunConfig()).fit(gaussian_particles, seed=4)


def test_golden_section_finds_the_maximum():
    calls = []

    def score(x: float) -> float:
        calls.append(x)
        return -((x - 0.7) ** 2)

    assert golden_section_max(score, -2.0, 3.0, 1e-6) == pytest.approx(0.7, abs=1e-6)
    assert len(calls) < 40


def test_fitted_alpha_is_a_held_out_optimum(fitted, gaussian_particles):
    assert fitted.alpha.shape == (2,)
    assert fitted.heldout_log_likelihood > fitted.heldout_log_likelihood_unscaled
    assert f"{fitted.alpha[1]:.3f}" in fitted.fit_summary()
    fit_part, holdout = split_holdout(gaussian_particles, 0.2, seed=4)
    base, _ = leaf_kernels(fit_part, 1 / 12, False, 6.0)

    def score(log_alpha: np.ndarray) -> float:
        return heldout_log_likelihood(base, holdout, fitted.window, np.exp(log_alpha), seed=4)

    best = np.log(fitted.alpha)
    assert score(best) == pytest.approx(fitted.heldout_log_likelihood, rel=1e-12)
    for axis in range(2):
        for sign in (-1, 1):
            neighbour = best.copy()
            neighbour[axis] += sign * STEP
            assert score(neighbour) < fitted.heldout_log_likelihood


def test_final_model_uses_the_fit_part_with_scaled_widths(fitted, gaussian_particles):
    fit_part, _ = split_holdout(gaussian_particles, 0.2, seed=4)
    base, _ = leaf_kernels(fit_part, 1 / 12, False, 6.0)
    assert len(fitted.kernels) == len(fit_part) == 1200
    factors = np.repeat(fitted.alpha, 3)
    np.testing.assert_allclose(fitted.kernels.sigmas, base.sigmas * factors, rtol=1e-12)
    spec = json.loads(json.dumps(fitted.spec()))
    assert spec["alpha"] == pytest.approx(list(fitted.alpha))
    assert spec["heldout_log_likelihood"] == fitted.heldout_log_likelihood


def test_one_global_factor(gaussian_particles):
    config = build_config({"kde_mle": {"per_space": False, "holdout_fraction": 0.25}})
    model = KdeMleUpsampler.from_config(config).fit(gaussian_particles, seed=1)
    assert model.alpha.shape == (1,)
    assert len(model.kernels) == 1125
    assert model.heldout_log_likelihood > model.heldout_log_likelihood_unscaled
    ratio = model.kernels.sigmas / leaf_kernels(split_holdout(gaussian_particles, 0.25, 1)[0],
                                                1 / 12, False, 6.0)[0].sigmas
    np.testing.assert_allclose(ratio, model.alpha[0], rtol=1e-12)


def test_samples_and_round_trip(fitted, tmp_path):
    stars = fitted.sample(3000, seed=2)
    assert stars.shape == (3000, 6) and fitted.window.contains(stars).all()
    np.testing.assert_array_equal(stars, fitted.sample(3000, seed=2))
    fitted.save(tmp_path / "kde")
    spec = json.loads((tmp_path / "kde" / "spec.json").read_text())
    assert spec["kind"] == "kde_mle"
    loaded = KdeMleUpsampler.from_saved(spec, tmp_path / "kde")
    np.testing.assert_array_equal(loaded.sample(3000, seed=2), stars)
    np.testing.assert_array_equal(loaded.log_prob(stars), fitted.log_prob(stars))
    np.testing.assert_array_equal(loaded.alpha, fitted.alpha)
    assert loaded.heldout_log_likelihood == fitted.heldout_log_likelihood
    assert np.isfinite(fitted.log_prob(stars)).all()


def test_too_few_particles_for_a_holdout(gaussian_particles):
    with pytest.raises(InputError, match="holdout_fraction"):
        KdeMleUpsampler(SUN, 3.5, holdout_fraction=0.1).fit(gaussian_particles.subset(
            np.arange(4)), seed=0)


def test_fit_is_deterministic(gaussian_particles, fitted):
    again = KdeMleUpsampler.from_config(RunConfig()).fit(gaussian_particles, seed=4)
    np.testing.assert_array_equal(again.alpha, fitted.alpha)
    assert math.isclose(again.window_mass, fitted.window_mass, rel_tol=0, abs_tol=0)
