"""The real EnBiD binary, py-ananke's kernel widths and Galaxia-style kernel sampling.

Tests that run the binary ask for the ``enbid`` fixture, which skips them when the
optional extra is missing; the kernel-mixture tests and the missing-extra error run always.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import numpy as np
import pytest
from scipy import stats

from gflow_dist.baselines import ananke
from gflow_dist.baselines.ananke import (
    KERNEL_NORM,
    AnankeUpsampler,
    EpanechnikovMixture,
    unit_kernel_draws,
)
from gflow_dist.baselines.enbid_binary import ananke_kernels, enbid_density
from gflow_dist.config import build_config
from gflow_dist.errors import GflowError, InputError
from gflow_dist.upsamplers.base import SPEC_FILE

SUN = (-8.0, 0.0, 0.02)
R_MAX = 3.5


@pytest.fixture(scope="module")
def enbid():
    return pytest.importorskip(
        "enbid_ananke", reason="the optional extra 'enbid' (enbid-ananke, GPL-2) is not "
        "installed: pip install 'gflow-dist[enbid]'")


@pytest.fixture(scope="module")
def fitted(enbid, mock_split):
    train, _ = mock_split
    start = time.perf_counter()
    model = AnankeUpsampler(SUN, R_MAX, neighbours=64).fit(train, seed=5)
    print(f"enbid_ananke fit on {len(train)} particles: {time.perf_counter() - start:.2f} s")
    return model


def epanechnikov_cdf(x: np.ndarray) -> np.ndarray:
    """CDF of p(x) ∝ (1 − x²)x⁵ on [0, 1]: (x⁶/6 − x⁸/8)·24."""
    return 4 * x**6 - 3 * x**8


def brute_force_density(centres, widths, points):
    scaled = (points[:, None, :] - centres[None]) / np.repeat(widths, 3, axis=1)[None]
    profile = np.clip(1 - (scaled**2).sum(axis=2), 0, None)
    return (KERNEL_NORM * profile / (widths[:, 0] * widths[:, 1]) ** 3).mean(axis=1)


def random_mixture(count: int, seed: int) -> EpanechnikovMixture:
    """Kernels whose widths span a factor 100 in both spaces, crowded so they overlap."""
    rng = np.random.default_rng(seed)
    centres = np.concatenate([rng.normal(0, 1, (count, 3)), rng.normal(0, 30, (count, 3))], 1)
    widths = np.stack([np.exp(rng.uniform(np.log(0.05), np.log(5), count)),
                       np.exp(rng.uniform(np.log(1.5), np.log(150), count))], axis=1)
    return EpanechnikovMixture(centres, widths)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "enbid_ananke", None)
    with pytest.raises(GflowError, match=r"pip install 'gflow-dist\[enbid\]' \(GPL-2\)"):
        enbid_density(np.zeros((100, 3)), np.ones(100), 64)


def test_unit_kernel_draws_follow_the_6d_epanechnikov_profile():
    draws = unit_kernel_draws(200_000, np.random.default_rng(0))
    radius = np.linalg.norm(draws, axis=1)
    assert radius.max() < 1
    assert stats.kstest(radius, epanechnikov_cdf).pvalue > 1e-3
    # isotropy: the position share of |u|² is Beta(3/2, 3/2) for a uniform 6-D direction
    share = (draws[:, :3] ** 2).sum(axis=1) / radius**2
    assert stats.kstest(share, stats.beta(1.5, 1.5).cdf).pvalue > 1e-3
    assert np.abs(draws.mean(axis=0)).max() < 0.01


def test_kernel_density_integrates_to_one():
    centre = np.array([[1.0, -2.0, 0.5, 30.0, 200.0, -10.0]])
    widths = np.array([[0.3, 25.0]])
    mixture = EpanechnikovMixture(centre, widths)
    rng = np.random.default_rng(1)
    half = np.repeat(widths[0], 3)
    box = centre + rng.uniform(-1, 1, (400_000, 6)) * half
    values = mixture.density(box) * np.prod(2 * half)
    assert abs(values.mean() - 1) < 4 * values.std() / np.sqrt(len(values))
    assert abs(values.mean() - 1) < 0.02


def test_mixture_density_matches_brute_force(monkeypatch):
    monkeypatch.setattr(ananke, "DENSITY_CHUNK", 257)  # several chunks, some groups missed
    mixture = random_mixture(300, seed=2)
    rng = np.random.default_rng(3)
    drawn, _ = mixture.sample(1500, rng)
    points = np.concatenate([drawn, rng.normal(0, [1, 1, 1, 30, 30, 30], (500, 6))])
    expected = brute_force_density(mixture.centres, mixture.widths, points)
    assert (expected[:1500] > 0).all() and (expected[1500:] == 0).any()
    np.testing.assert_allclose(mixture.density(points), expected, rtol=1e-12, atol=0)


def test_enbid_density_recovers_a_uniform_density(enbid, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rng = np.random.default_rng(4)
    scale = np.array([1.0, 1, 1, 100, 100, 100])
    points = rng.uniform(size=(3000, 6)) * scale  # mass density 2·3000 / 10⁶
    start = time.perf_counter()
    rho_6d = enbid_density(points, np.full(3000, 2.0), 64)
    rho_3d = enbid_density(points[:, :3], np.full(3000, 2.0), 64)
    print(f"EnBiD 6-D + 3-D on 3,000 particles: {time.perf_counter() - start:.2f} s")
    core = (np.abs(points / scale - 0.5) < 0.3).all(axis=1)
    core_3d = (np.abs(points[:, :3] - 0.5) < 0.3).all(axis=1)
    assert 0.7 < np.median(rho_6d[core]) * 1e6 / 6000 < 1.2
    assert 0.8 < np.median(rho_3d[core_3d]) / 6000 < 1.2
    assert list(tmp_path.iterdir()) == [scratch] and not list(scratch.iterdir())
    np.testing.assert_array_equal(enbid_density(points, np.full(3000, 2.0), 64), rho_6d)


def test_enbid_rejects_too_few_particles(enbid):
    with pytest.raises(InputError, match="enbid_ananke.neighbours"):
        enbid_density(np.zeros((50, 6)), np.ones(50), 64)


def test_kernels_follow_py_ananke(enbid, mock_split):
    train, _ = mock_split
    particles = train.phase_space[:1000]
    masses = train.mass[:1000]
    widths = ananke_kernels(particles, masses, 32)
    rho_pos = enbid_density(particles[:, :3], masses, 32)
    rho_vel = enbid_density(particles[:, 3:], masses, 32)
    rho_6d = enbid_density(particles, masses, 32)
    # the 6-D ellipsoid holds m/ρ₆ and keeps the ratio of the 3-D spheres' radii
    volume = np.pi**3 / 6 * widths[:, 0] ** 3 * widths[:, 1] ** 3
    np.testing.assert_allclose(volume, masses / rho_6d, rtol=1e-5)
    ratio_3d = np.cbrt(rho_vel / rho_pos)
    np.testing.assert_allclose(widths[:, 0] / widths[:, 1], ratio_3d, rtol=1e-5)


def test_stars_fall_in_their_parents_kernels(fitted):
    stars, parents = fitted.propose_with_parents(100_000, np.random.default_rng(6))
    mixture = fitted.mixture
    scaled = (stars - mixture.centres[parents]) / np.repeat(mixture.widths[parents], 3, axis=1)
    radius = np.linalg.norm(scaled, axis=1)
    assert radius.max() < 1
    assert stats.kstest(radius, epanechnikov_cdf).pvalue > 1e-3
    counts = np.bincount(parents, minlength=len(mixture))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_window_mass_matches_the_share_of_kept_proposals(fitted):
    proposals = fitted.propose(400_000, np.random.default_rng(7))
    kept = fitted.window.contains(proposals).mean()
    sigma = np.hypot(np.sqrt(kept * (1 - kept) / len(proposals)), fitted.window_mass_stderr)
    assert 0.5 < fitted.window_mass < 1
    assert abs(kept - fitted.window_mass) < 4 * sigma


def test_log_prob_is_the_window_normalised_mixture(fitted, mock_split):
    _, test = mock_split
    points = np.concatenate([fitted.sample(1000, seed=8), test.phase_space[:1000]])
    mixture = fitted.mixture
    expected = brute_force_density(mixture.centres, mixture.widths, points) / fitted.window_mass
    log_prob = fitted.log_prob(points)
    covered = expected > 0
    assert covered[:1000].all()
    np.testing.assert_allclose(log_prob[covered], np.log(expected[covered]), rtol=0, atol=1e-10)
    assert np.isneginf(log_prob[~covered]).all()
    outside = points[:5].copy()
    outside[:, 0] = SUN[0] + R_MAX + 0.01
    outside[:, 1:3] = SUN[1:]
    assert np.isneginf(fitted.log_prob(outside)).all()


def test_fit_and_sample_are_deterministic(enbid, fitted, mock_split):
    train, _ = mock_split
    again = AnankeUpsampler(SUN, R_MAX, neighbours=64).fit(train, seed=5)
    np.testing.assert_array_equal(again.mixture.widths, fitted.mixture.widths)
    assert again.window_mass == fitted.window_mass
    np.testing.assert_array_equal(again.sample(3000, seed=9), fitted.sample(3000, seed=9))
    assert not np.array_equal(fitted.sample(3000, seed=9), fitted.sample(3000, seed=10))


def test_save_and_load_round_trip(fitted, tmp_path):
    directory = fitted.save(tmp_path / "model", metadata={"run": "test"})
    spec = json.loads((directory / SPEC_FILE).read_text())
    assert spec["kind"] == "enbid_ananke" and spec["neighbours"] == 64
    loaded = AnankeUpsampler.from_saved(spec, directory)
    assert loaded.window == fitted.window and loaded.window_mass == fitted.window_mass
    stars = fitted.sample(2000, seed=11)
    np.testing.assert_array_equal(loaded.sample(2000, seed=11), stars)
    np.testing.assert_array_equal(loaded.log_prob(stars), fitted.log_prob(stars))


def test_from_config_reads_the_neighbours():
    config = build_config({"enbid_ananke": {"neighbours": 32}, "galaxy": {"r_max_kpc": 2.0}})
    model = AnankeUpsampler.from_config(config)
    assert model.neighbours == 32 and model.r_max_kpc == 2.0
    assert model.sun_position_kpc == config.galaxy.sun_position_kpc
