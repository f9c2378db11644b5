"""Tests of the mock galaxy: exact normalisation, exact sampling, conventions, validation."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy import integrate
from scipy.special import logsumexp

from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import ConfigError

DEFAULT = MockGalaxy()
# Off-axis Sun, small sphere, halo-heavy, rotating halo, constant dispersions, a heavier
# and wider stream on another track.
VARIANT = MockGalaxy(
    sun_position_kpc=(-6.0, 4.0, 0.3), r_max_kpc=2.0, thin_disk_weight=0.39,
    thick_disk_weight=0.2, moving_group_weight=0.1, halo_weight=0.3, halo_rotation_kms=40.0,
    thin_disk_dispersion_scale_kpc=math.inf, stream_weight=0.01,
    stream_point_kpc=(-6.2, 4.4, 0.1), stream_direction=(0.6, -0.2, -0.3),
    stream_width_kpc=0.12, stream_speed_kms=180.0, stream_dispersion_kms=5.0,
)
GALAXIES = {"default": DEFAULT, "variant": VARIANT}


def _log_normal(v: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    chi2 = np.sum((v - mean) ** 2, axis=1) / sigma**2
    return -0.5 * chi2 - 3 * math.log(sigma) - 1.5 * math.log(2 * math.pi)


def _stream_frame(galaxy: MockGalaxy) -> tuple[np.ndarray, float]:
    """The stream's unit axis and the Sun's coordinate along it (from its point)."""
    axis = np.asarray(galaxy.stream_direction) / np.linalg.norm(galaxy.stream_direction)
    sun_along = float((np.asarray(galaxy.sun_position_kpc) - galaxy.stream_point_kpc) @ axis)
    return axis, sun_along


def _stream_proposal(galaxy: MockGalaxy, n: int, rng: np.random.Generator) -> np.ndarray:
    """Tube draws: uniform along the stream's axis over ±r_max about the Sun's place on it,
    Gaussian across it (σ = 1.5 w), velocities N(speed·axis, (2σ_v)²)."""
    axis, sun_along = _stream_frame(galaxy)
    along = sun_along + galaxy.r_max_kpc * (2 * rng.random(n) - 1)
    across = 1.5 * galaxy.stream_width_kpc * rng.standard_normal((n, 3))
    across -= (across @ axis)[:, None] * axis  # a 2-D Gaussian in the plane across the axis
    v = galaxy.stream_speed_kms * axis + 2 * galaxy.stream_dispersion_kms * rng.standard_normal(
        (n, 3))
    return np.column_stack([galaxy.stream_point_kpc + along[:, None] * axis + across, v])


def _stream_proposal_log_q(galaxy: MockGalaxy, rows: np.ndarray) -> np.ndarray:
    axis, sun_along = _stream_frame(galaxy)
    relative = rows[:, :3] - galaxy.stream_point_kpc
    along = relative @ axis
    across2 = np.sum(relative**2, axis=1) - along**2
    width = 1.5 * galaxy.stream_width_kpc
    log_q = np.where(np.abs(along - sun_along) <= galaxy.r_max_kpc,
                     -math.log(2 * galaxy.r_max_kpc), -np.inf)
    log_q += -0.5 * across2 / width**2 - math.log(2 * math.pi * width**2)
    return log_q + _log_normal(rows[:, 3:], galaxy.stream_speed_kms * axis,
                               2 * galaxy.stream_dispersion_kms)


def _proposal(galaxy: MockGalaxy, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws from a broad, exactly normalised proposal q covering the sphere, and log q.

    97 %: positions uniform on the disc under the sphere × z from 0.7·Laplace(0, 0.35 kpc)
    + 0.3·uniform over the sphere's z range; velocities given position: isotropic Gaussians
    about (v_c − 20)·φ̂ (σ = 35, 70 km/s), about the moving group (σ = 12) and about 0
    (σ = 160), so that no component of p has much heavier tails than q. 3 %: the stream's
    tube (:func:`_stream_proposal`), which the broad part cannot reach.
    """
    broad = _broad_proposal(galaxy, n, seed)
    rng = np.random.default_rng(seed + 1)
    from_tube = rng.random(n) < 0.03
    rows = np.where(from_tube[:, None], _stream_proposal(galaxy, n, rng), broad)
    log_q = np.logaddexp(math.log(0.97) + _broad_log_q(galaxy, rows),
                         math.log(0.03) + _stream_proposal_log_q(galaxy, rows))
    return rows, log_q


def _broad_velocity_parts(galaxy: MockGalaxy, x: np.ndarray,
                          y: np.ndarray) -> list[tuple[float, np.ndarray, float]]:
    """(weight, mean, σ) of the broad proposal's velocity Gaussians at positions (x, y)."""
    radius = np.hypot(x, y)
    r_hat = np.column_stack([x / radius, y / radius, 0 * x])
    phi_hat = np.column_stack([y / radius, -x / radius, 0 * x])
    rot = (galaxy.circular_velocity_kms - 20.0) * phi_hat
    d_r, d_phi = galaxy.moving_group_velocity_offset_kms
    v_group = galaxy.circular_velocity_kms - galaxy.thin_disk_asymmetric_drift_kms + d_phi
    group = d_r * r_hat + v_group * phi_hat
    return [(0.4, rot, 35.0), (0.3, rot, 70.0), (0.15, group, 12.0), (0.15, 0 * rot, 160.0)]


def _broad_proposal(galaxy: MockGalaxy, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xs, ys, zs = galaxy.sun_position_kpc
    r = galaxy.r_max_kpc
    rho, ang = r * np.sqrt(rng.random(n)), 2 * np.pi * rng.random(n)
    x, y = xs + rho * np.cos(ang), ys + rho * np.sin(ang)
    laplace = rng.random(n) < 0.7
    z = np.where(laplace, rng.laplace(0.0, 0.35, n), rng.uniform(zs - r, zs + r, n))
    parts = _broad_velocity_parts(galaxy, x, y)
    choice = rng.choice(len(parts), size=n, p=[p[0] for p in parts])
    v = np.empty((n, 3))
    for k, (_, mean, sigma) in enumerate(parts):
        sel = choice == k
        v[sel] = mean[sel] + sigma * rng.standard_normal((sel.sum(), 3))
    return np.column_stack([x, y, z, v])


def _broad_log_q(galaxy: MockGalaxy, rows: np.ndarray) -> np.ndarray:
    xs, ys, zs = galaxy.sun_position_kpc
    r = galaxy.r_max_kpc
    x, y, z = rows[:, :3].T
    on_disc = (x - xs) ** 2 + (y - ys) ** 2 <= r**2
    log_qz = np.logaddexp(
        math.log(0.7) - math.log(2 * 0.35) - np.abs(z) / 0.35,
        np.where(np.abs(z - zs) <= r, math.log(0.3 / (2 * r)), -np.inf),
    )
    parts = _broad_velocity_parts(galaxy, x, y)
    log_qv = logsumexp([math.log(w) + _log_normal(rows[:, 3:], m, s) for w, m, s in parts],
                       axis=0)
    return np.where(on_disc, -math.log(math.pi * r**2), -np.inf) + log_qz + log_qv


@pytest.fixture(scope="module", params=list(GALAXIES))
def weighted(request: pytest.FixtureRequest) -> tuple[MockGalaxy, np.ndarray, np.ndarray]:
    """(galaxy, proposal points, importance weights p/q)."""
    galaxy = GALAXIES[request.param]
    points, log_q = _proposal(galaxy, 600_000, seed=1)
    return galaxy, points, np.exp(galaxy.log_prob(points) - log_q)


def test_density_integrates_to_one(weighted: tuple) -> None:
    _, _, w = weighted
    estimate, stderr = w.mean(), w.std() / math.sqrt(len(w))
    assert stderr < 0.01
    assert abs(estimate - 1.0) < 4 * stderr


@pytest.mark.parametrize("galaxy", [DEFAULT, VARIANT, MockGalaxy(thin_disk_scale_height_kpc=0.05)])
def test_quadrature_converges(galaxy: MockGalaxy) -> None:
    """Doubling every node count changes no Z_k by more than 1e-9 (relative)."""
    coarse, fine = galaxy.log_normalisers(), galaxy.log_normalisers(refine=2)
    np.testing.assert_allclose(fine, coarse, rtol=0, atol=1e-9)


def test_disk_normaliser_matches_independent_quadrature() -> None:
    """Z of the thin disk by adaptive 2-D quadrature over (x, y) with the z integral exact."""
    (xs, ys, zs), r = DEFAULT.sun_position_kpc, DEFAULT.r_max_kpc
    r_d, z0 = DEFAULT.thin_disk_scale_length_kpc, DEFAULT.thin_disk_scale_height_kpc

    def column(y: float, x: float) -> float:
        half = math.sqrt(max(r**2 - (x - xs) ** 2 - (y - ys) ** 2, 0.0))
        sech2_integral = z0 * (math.tanh((zs + half) / z0) - math.tanh((zs - half) / z0))
        return math.exp(-math.hypot(x, y) / r_d) * sech2_integral

    def chord(x: float) -> float:
        return math.sqrt(max(r**2 - (x - xs) ** 2, 0.0))

    z_ref, _ = integrate.dblquad(column, xs - r, xs + r, lambda x: ys - chord(x),
                                 lambda x: ys + chord(x), epsabs=0, epsrel=1e-9)
    assert math.exp(DEFAULT.log_normalisers()[0]) == pytest.approx(z_ref, rel=1e-7)


def _marginals(ps: np.ndarray) -> dict[str, np.ndarray]:
    radius = np.hypot(ps[:, 0], ps[:, 1])
    return {"R": radius, "z": ps[:, 2], "vx": ps[:, 3], "vy": ps[:, 4], "vz": ps[:, 5],
            "v_R": (ps[:, 0] * ps[:, 3] + ps[:, 1] * ps[:, 4]) / radius}


def test_sample_marginals_match_density(weighted: tuple) -> None:
    """Histograms of samples agree with histograms of p predicted by importance weights.

    20 equal-count bins per marginal; the statistic Σ z² is ≈ χ²(19) when sampler and
    density agree (a 5% error in a disk scale length gives Σ z² > 100).
    """
    galaxy, points, w = weighted
    samples = galaxy.sample(300_000, seed=5)
    for name, values in _marginals(samples).items():
        edges = np.quantile(values, np.linspace(0, 1, 21))
        edges[0], edges[-1] = -np.inf, np.inf
        p_sample = np.histogram(values, edges)[0] / len(values)
        var_sample = p_sample * (1 - p_sample) / len(values)
        bins = np.digitize(_marginals(points)[name], edges[1:-1])
        p_is = np.bincount(bins, weights=w, minlength=20) / len(w)
        var_is = np.array([np.var(w * (bins == b)) for b in range(20)]) / len(w)
        z_scores = (p_sample - p_is) / np.sqrt(var_sample + var_is)
        assert np.all(np.abs(z_scores) < 5) and np.sum(z_scores**2) < 60, (name, z_scores)


def test_sample_shape_sphere_and_determinism() -> None:
    a = DEFAULT.sample(20_000, seed=3)
    assert a.shape == (20_000, 6) and a.dtype == np.float64
    dist = np.linalg.norm(a[:, :3] - DEFAULT.sun_position_kpc, axis=1)
    assert dist.max() <= DEFAULT.r_max_kpc
    np.testing.assert_array_equal(a, DEFAULT.sample(20_000, seed=3))
    assert not np.array_equal(a, DEFAULT.sample(20_000, seed=4))
    assert np.all(np.isfinite(DEFAULT.log_prob(a)))
    assert DEFAULT.sample(0, seed=3).shape == (0, 6)


def test_thin_disk_rotates_toward_plus_y_at_the_sun() -> None:
    thin = MockGalaxy(thin_disk_weight=1.0, thick_disk_weight=0.0, moving_group_weight=0.0,
                      halo_weight=0.0, stream_weight=0.0)
    s = thin.sample(40_000, seed=1)
    near = s[np.linalg.norm(s[:, :3] - thin.sun_position_kpc, axis=1) < 0.5]
    expected = thin.circular_velocity_kms - thin.thin_disk_asymmetric_drift_kms
    stderr = thin.thin_disk_dispersions_kms[1] / math.sqrt(len(near))
    assert len(near) > 500
    assert abs(near[:, 4].mean() - expected) < 5 * stderr + 1.0  # + dispersion gradient
    assert abs(near[:, 3].mean()) < 5 * thin.thin_disk_dispersions_kms[0] / math.sqrt(len(near))
    assert DEFAULT.sample(10_000, seed=2)[:, 4].mean() > 150
    sun = np.array(DEFAULT.sun_position_kpc)
    prograde, retrograde = np.r_[sun, 0, expected, 0], np.r_[sun, 0, -expected, 0]
    log_p = DEFAULT.log_prob(np.array([prograde, retrograde]))
    assert log_p[0] > log_p[1] + 5


def test_moving_group_raises_density_at_its_velocity() -> None:
    """Hercules sits at v_R = +30 (U = −30): mirroring v_R drops p only when it is present."""
    v_phi = DEFAULT.circular_velocity_kms - DEFAULT.thin_disk_asymmetric_drift_kms - 50.0
    sun = list(DEFAULT.sun_position_kpc)
    rows = np.array([sun + [-30.0, v_phi, 0.0], sun + [30.0, v_phi, 0.0]])  # v_R = −v_x here
    no_group = MockGalaxy(thin_disk_weight=0.828, moving_group_weight=0.0)
    with_group, without = DEFAULT.log_prob(rows), no_group.log_prob(rows)
    assert with_group[0] - with_group[1] > 1.0
    assert without[0] == pytest.approx(without[1], abs=1e-9)


def test_log_prob_outside_sphere_and_bad_shape() -> None:
    sun = np.array(DEFAULT.sun_position_kpc)
    rows = np.array([np.r_[sun + [DEFAULT.r_max_kpc + 1e-6, 0, 0], 0, 220, 0],
                     np.r_[sun, 0, 220, 0]])
    out = DEFAULT.log_prob(rows)
    assert out[0] == -np.inf and np.isfinite(out[1])
    assert DEFAULT.log_prob(np.empty((0, 6))).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        DEFAULT.log_prob(np.zeros((3, 5)))


def test_particles_mass_and_provenance() -> None:
    particles = DEFAULT.particles(1000, seed=9, particle_mass_msun=2500.0)
    assert isinstance(particles, ParticleSet) and len(particles) == 1000
    np.testing.assert_array_equal(particles.phase_space, DEFAULT.sample(1000, seed=9))
    assert np.all(particles.mass == 2500.0)
    assert particles.provenance["source"] == "mock"
    assert particles.provenance["mock_seed"] == "9"
    params = json.loads(particles.provenance["mock_parameters"])
    rebuilt = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    assert MockGalaxy(**rebuilt) == DEFAULT
    assert params == json.loads(json.dumps(asdict(DEFAULT)))
    with pytest.raises(ConfigError, match="particle_mass_msun"):
        DEFAULT.particles(10, seed=0, particle_mass_msun=0.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"thin_disk_scale_length_kpc": -1.0}, "thin_disk_scale_length_kpc"),
        ({"thin_disk_scale_height_kpc": math.nan}, "thin_disk_scale_height_kpc"),
        ({"halo_dispersion_kms": 0.0}, "halo_dispersion_kms"),
        ({"thick_disk_dispersions_kms": (60.0, -1.0, 40.0)}, "thick_disk_dispersions_kms"),
        ({"sun_position_kpc": (-8.0, 0.0)}, "sun_position_kpc"),
        ({"moving_group_velocity_offset_kms": (1.0, 2.0, 3.0)}, "moving_group_velocity_offset_kms"),
        ({"r_max_kpc": 0.0}, "r_max_kpc"),
        ({"r_max_kpc": 8.5}, "r_max_kpc"),
        ({"thin_disk_weight": 0.9}, "thin_disk_weight"),
        ({"thin_disk_weight": 0.9, "halo_weight": -0.1}, "halo_weight"),
        ({"thin_disk_dispersion_scale_kpc": 0.0}, "thin_disk_dispersion_scale_kpc"),
        ({"circular_velocity_kms": "fast"}, "circular_velocity_kms"),
        ({"stream_direction": (0.0, 0.0, 0.0)}, "stream_direction"),
        ({"stream_point_kpc": (-8.0, 3.4, 0.0)}, "stream_point_kpc"),
        ({"stream_dispersion_kms": -1.0}, "stream_dispersion_kms"),
    ],
)
def test_bad_parameters_raise_config_error(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MockGalaxy(**kwargs)


@pytest.mark.parametrize("galaxy", [DEFAULT, VARIANT])
def test_stream_normaliser_matches_monte_carlo(galaxy: MockGalaxy) -> None:
    """Z of the stream's tube against the share of tube draws inside the sphere.

    Draws uniform along ±r_max of the axis about the Sun's place on it and Gaussian across
    it (σ = w) have density exp(−d⊥²/2w²)/(2π w² · 2 r_max) along the tube, so
    Z = 2π w² · 2 r_max · P(inside).
    """
    rng = np.random.default_rng(4)
    axis, sun_along = _stream_frame(galaxy)
    n, r, w = 2_000_000, galaxy.r_max_kpc, galaxy.stream_width_kpc
    along = sun_along + r * (2 * rng.random(n) - 1)
    across = w * rng.standard_normal((n, 3))
    across -= (across @ axis)[:, None] * axis
    points = galaxy.stream_point_kpc + along[:, None] * axis + across
    inside = np.mean(np.sum((points - galaxy.sun_position_kpc) ** 2, axis=1) <= r**2)
    z_mc = 2 * math.pi * w**2 * 2 * r * inside
    stderr = 2 * math.pi * w**2 * 2 * r * math.sqrt(inside * (1 - inside) / n)
    assert math.exp(galaxy.stream_log_normaliser()) == pytest.approx(z_mc, abs=4 * stderr)
    assert galaxy.stream_log_normaliser(96) == pytest.approx(galaxy.stream_log_normaliser(),
                                                             abs=1e-12)


def test_components_are_labelled_and_sum_to_the_density() -> None:
    """Each component's draws sit where its responsibility dominates; the stream is cold."""
    assert DEFAULT.component_names == ("thin_disk", "thick_disk", "moving_group", "halo",
                                       "stream")
    rows = DEFAULT.sample(5000, seed=8)
    np.testing.assert_allclose(logsumexp(DEFAULT.component_log_probs(rows), axis=0),
                               DEFAULT.log_prob(rows), rtol=0, atol=1e-12)
    stream = DEFAULT.sample_component("stream", 20_000, seed=2)
    responsibility = np.exp(DEFAULT.component_log_probs(stream)[-1] - DEFAULT.log_prob(stream))
    assert np.median(responsibility) > 0.999
    axis, _ = _stream_frame(DEFAULT)
    np.testing.assert_allclose(stream[:, 3:].mean(axis=0), DEFAULT.stream_speed_kms * axis,
                               atol=0.2)
    assert stream[:, 3:].std(axis=0) == pytest.approx([DEFAULT.stream_dispersion_kms] * 3,
                                                      rel=0.03)
    relative = stream[:, :3] - DEFAULT.stream_point_kpc
    across = np.sqrt(np.sum(relative**2, axis=1) - (relative @ axis) ** 2)
    # The distance from the axis of a 2-D Gaussian: E d² = 2 w².
    assert np.mean(across**2) == pytest.approx(2 * DEFAULT.stream_width_kpc**2, rel=0.03)
    assert np.linalg.norm(stream[:, :3] - DEFAULT.sun_position_kpc, axis=1).max() <= 3.5
    counts = np.bincount(np.argmax(DEFAULT.component_log_probs(rows), axis=0), minlength=5)
    assert 0 < counts[-1] < 40  # 0.2 % of 5000 stars
    with pytest.raises(ValueError, match="no component"):
        DEFAULT.sample_component("bulge", 10, seed=0)
