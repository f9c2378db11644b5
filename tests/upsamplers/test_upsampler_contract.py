"""The contract every upsampler keeps, checked for each one the config can name.

Each is built from a run config (small budgets), fitted on the mock galaxy's 2,000 train
particles, and checked for: sample shape and the selection window; the mean velocity and
spread in z of the mock's truth; determinism for a seed; a save/load round trip through
the registry; and, for those with a density, that it integrates to 1 over the window.
"""

from __future__ import annotations

import numpy as np
import pytest

from gflow_dist import upsamplers
from gflow_dist.config import UPSAMPLER_NAMES, build_config

SMALL_BUDGETS = {
    "cnf": {"ensemble_size": 1, "max_epochs": 3, "solver_steps": 4, "compile": False,
            "refine": False},
    "maf": {"ensemble_size": 1, "max_epochs": 3, "refine": False},
}

TRUTH_DRAWS = 400_000
"""Exact mock draws the samples' moments are compared with."""


def _needs_extra(name: str) -> None:
    if name == "enbid_ananke":
        pytest.importorskip("enbid_ananke", reason="the GPL-2 'enbid' extra is not installed")


@pytest.fixture(scope="module", params=UPSAMPLER_NAMES)
def fitted(request, mock_split):
    name = request.param
    _needs_extra(name)
    config = build_config({"upsamplers": [name], **{k: v for k, v in SMALL_BUDGETS.items()
                                                     if k == name}})
    train_half, _ = mock_split
    return upsamplers.create(name, config).fit(train_half, seed=3)


@pytest.fixture(scope="module")
def truth(mock_galaxy):
    """(TRUTH_DRAWS, 6) exact draws from the mock galaxy the train particles come from."""
    return mock_galaxy.sample(TRUTH_DRAWS, seed=99)


def test_samples_have_the_shape_units_and_window(fitted, mock_split, truth):
    """kpc and km/s, like the particles: the mean velocity and the spread in z are the
    mock's to 4 standard errors, which count the noise of the 3,000 stars, of the 2,000
    particles the model learnt from and of the truth's draws.

    Not every moment holds to that: the kernel upsamplers (enbid, kde_mle) widen σ(vx)
    by half and, losing kernel mass over the window's edge, shift ⟨x⟩ by 5 to 8 errors.
    """
    stars = fitted.sample(3000, seed=1, batch_size=1024)
    assert stars.shape == (3000, 6) and stars.dtype == np.float64
    assert fitted.window.contains(stars).all()
    train_half, _ = mock_split
    per_star = 1 / len(stars) + 1 / len(train_half) + 1 / len(truth)
    velocity = truth[:, 3:]
    mean_error = velocity.std(axis=0) * np.sqrt(per_star)
    offset = stars[:, 3:].mean(axis=0) - velocity.mean(axis=0)
    assert (np.abs(offset) < 4 * mean_error).all(), f"mean velocity off by {offset} km/s"
    z = truth[:, 2]
    fourth_moment = ((z - z.mean()) ** 4).mean()
    spread_error = np.sqrt((fourth_moment - z.var() ** 2) * per_star) / (2 * z.std())
    spread = stars[:, 2].std()
    assert abs(spread - z.std()) < 4 * spread_error, f"spread in z {spread} kpc, not {z.std()}"


def test_a_seed_fixes_the_draw(fitted):
    first = fitted.sample(1500, seed=7, batch_size=512)
    np.testing.assert_array_equal(first, fitted.sample(1500, seed=7, batch_size=512))
    assert not np.array_equal(first, fitted.sample(1500, seed=8, batch_size=512))


def test_save_and_load_round_trip(fitted, mock_split, tmp_path):
    fitted.save(tmp_path / fitted.kind, metadata={"note": "contract"})
    loaded = upsamplers.load(tmp_path / fitted.kind)
    assert type(loaded) is type(fitted)
    np.testing.assert_array_equal(loaded.sample(500, seed=2), fitted.sample(500, seed=2))
    test_stars = mock_split[1].phase_space[:300]
    if fitted.has_density:
        np.testing.assert_array_equal(loaded.log_prob(test_stars), fitted.log_prob(test_stars))
    else:
        with pytest.raises(NotImplementedError, match="has no density"):
            loaded.log_prob(test_stars)


def test_density_integrates_to_one_over_the_window(fitted, mock_galaxy):
    """Importance sampling from g = (truth + broad + model) / 3, so q/g ≤ 3 stays bounded."""
    if not fitted.has_density:
        pytest.skip(f"{fitted.kind} has no density to integrate")
    n = 4000
    rng = np.random.default_rng(0)
    truth = mock_galaxy.sample(n, seed=5)
    centre = np.concatenate([fitted.window.sun_position_kpc, truth[:, 3:].mean(axis=0)])
    scale = np.concatenate([[fitted.window.r_max_kpc] * 3, 2 * truth[:, 3:].std(axis=0)])
    broad = centre + scale * rng.standard_normal((n, 6))
    model = fitted.sample(n, seed=6)
    points = np.concatenate([truth, broad, model])

    def log_broad(x):
        return -0.5 * (((x - centre) / scale) ** 2).sum(1) - np.log(scale).sum() \
            - 3 * np.log(2 * np.pi)

    log_q = fitted.log_prob(points)
    log_g = np.logaddexp.reduce([mock_galaxy.log_prob(points), log_broad(points), log_q],
                                axis=0) - np.log(3)
    ratio = np.exp(log_q - log_g)
    integral, error = ratio.mean(), ratio.std() / np.sqrt(len(ratio))
    print(f"{fitted.kind}: ∫q = {integral:.4f} ± {error:.4f}")
    assert abs(integral - 1) < max(4 * error, 0.01)
