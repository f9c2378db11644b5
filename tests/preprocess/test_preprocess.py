"""Tests of the preprocessing of paper eqs. 9–11: inverses, log-Jacobians, normalisation.

The log-Jacobians are checked against finite differences of the numpy functions
themselves (fourth-order central differences in float64), not against a re-derivation,
and the density transform is checked by integrating a known density over the sphere.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate

from gflow_dist.preprocess import Preprocessor, ball_to_space, space_to_ball
from gflow_dist.preprocess.transforms import BOUNDARY_FACTOR

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- strategies

_unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False)
directions = (
    st.tuples(_unit, _unit, _unit)
    .map(np.array)
    .filter(lambda d: np.linalg.norm(d) > 0.1)
    .map(lambda d: d / np.linalg.norm(d))
)
# |u| spans the series branch (ρ < 1e-4), the switch at 1e-4 and the boundary region.
radii = st.one_of(
    st.floats(1e-12, 1e-4),
    st.floats(0.5e-4, 2e-4),
    st.floats(1e-4, 0.999),
    st.floats(0.99, 0.999),
)
ball_points = st.tuples(radii, directions).map(lambda t: t[0] * t[1])
ball_arrays = st.lists(ball_points, min_size=1, max_size=12).map(np.array)


def _triple(lo: float, hi: float):
    return st.tuples(*[st.floats(lo, hi, allow_nan=False) for _ in range(3)])


preprocessors = st.builds(
    Preprocessor,
    sun_position_kpc=_triple(-10.0, 10.0),
    r_max_kpc=st.floats(0.3, 10.0),
    position_mean=_triple(-1.0, 1.0),
    position_std=_triple(0.1, 3.0),
    velocity_mean=_triple(-300.0, 300.0),
    velocity_std=_triple(5.0, 200.0),
)

PAPER_LIKE = Preprocessor(
    sun_position_kpc=(-8.0, 0.0, 0.02), r_max_kpc=3.5,
    position_mean=(0.1, -0.2, 0.05), position_std=(0.8, 0.6, 0.7),
    velocity_mean=(-10.0, 200.0, 0.5), velocity_std=(40.0, 30.0, 25.0),
)


def _scale(pre: Preprocessor) -> float:
    return pre.r_max_kpc * pre.boundary_factor


def _positions(pre: Preprocessor, u: np.ndarray) -> np.ndarray:
    """Physical positions [kpc] of ball points u (eq. 9 inverted)."""
    return np.asarray(pre.sun_position_kpc) + u * _scale(pre)


def _fd_jacobian(f, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(n, 3, 3) Jacobian of row-wise f by fourth-order central differences, step h per row."""
    jac = np.empty((len(x), 3, 3))
    for j in range(3):
        step = np.zeros_like(x)
        step[:, j] = h
        jac[:, :, j] = (
            f(x - 2 * step) - 8 * f(x - step) + 8 * f(x + step) - f(x + 2 * step)
        ) / (12 * h[:, None])
    return jac


def _log_normal(s: np.ndarray) -> np.ndarray:
    return -0.5 * np.sum(s**2, axis=1) - 1.5 * math.log(2 * math.pi)


def _uniform_ball(rng: np.random.Generator, n: int) -> np.ndarray:
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1)[:, None]
    return d * rng.uniform(size=(n, 1)) ** (1 / 3)


# ----------------------------------------------------------------------------- round trips


@SETTINGS
@given(u=ball_arrays)
def test_ball_map_round_trip(u):
    w, log_det = ball_to_space(u)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(log_det))
    back = space_to_ball(w)
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    assert np.all(np.abs(back - u) <= 1e-13 * norm + 1e-300)
    # The map is radial: it keeps directions and increases radii (atanh ρ ≥ ρ).
    assert np.all(np.linalg.norm(w, axis=1) >= np.linalg.norm(u, axis=1) * (1 - 1e-15))
    np.testing.assert_allclose(
        w / np.linalg.norm(w, axis=1, keepdims=True), u / norm, rtol=0, atol=1e-14
    )


@SETTINGS
@given(w=st.lists(st.tuples(*[st.floats(-4.0, 4.0)] * 3), min_size=1, max_size=12)
       .map(np.array))
def test_space_map_round_trip(w):
    u = space_to_ball(w)
    assert np.all(np.linalg.norm(u, axis=1) < 1.0)
    back, _ = ball_to_space(u)
    np.testing.assert_allclose(back, w, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(pre=preprocessors, u=ball_arrays)
def test_positions_round_trip(pre, u):
    r = _positions(pre, u)
    s, log_det = pre.positions_forward(r)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(log_det))
    back = pre.positions_inverse(s)
    size = np.abs(np.asarray(pre.sun_position_kpc)).max() + _scale(pre)
    np.testing.assert_allclose(back, r, rtol=0, atol=1e-12 * size)


@SETTINGS
@given(pre=preprocessors,
       v=st.lists(st.tuples(*[st.floats(-1500.0, 1500.0)] * 3), min_size=1, max_size=12)
       .map(np.array))
def test_velocities_round_trip(pre, v):
    s, _ = pre.velocities_forward(v)
    np.testing.assert_allclose(pre.velocities_inverse(s), v, rtol=1e-12, atol=1e-9)


def test_centre_maps_exactly():
    pre = PAPER_LIKE
    s, log_det = pre.positions_forward(np.array([pre.sun_position_kpc]))
    expected = -np.asarray(pre.position_mean) / np.asarray(pre.position_std)
    np.testing.assert_allclose(s[0], expected, rtol=1e-15)
    assert log_det[0] == pytest.approx(
        -3 * math.log(_scale(pre)) - np.log(pre.position_std).sum(), abs=1e-14
    )
    np.testing.assert_allclose(pre.positions_inverse(s), [pre.sun_position_kpc], atol=1e-15)


# ----------------------------------------------------------------------------- log-Jacobians


@SETTINGS
@given(pre=preprocessors, u=ball_arrays)
def test_position_log_det_matches_finite_differences(pre, u):
    """log|det ∂s/∂r| against fourth-order central differences of positions_forward."""
    r = _positions(pre, u)
    rho = np.linalg.norm((r - np.asarray(pre.sun_position_kpc)) / _scale(pre), axis=1)
    h = 1e-3 * np.minimum(1.0, 1.0 - rho) * _scale(pre)  # stencil stays inside the ball
    jac = _fd_jacobian(lambda x: pre.positions_forward(x)[0], r, h)
    sign, fd_log_det = np.linalg.slogdet(jac)
    _, log_det = pre.positions_forward(r)
    assert np.all(sign > 0), "the map preserves orientation"
    np.testing.assert_allclose(log_det, fd_log_det, rtol=1e-9, atol=1e-7)


@SETTINGS
@given(u=ball_arrays)
def test_ball_log_det_matches_finite_differences(u):
    """log|det ∂w/∂u| of eq. 10; near the centre the stencil stays in the series branch."""
    rho = np.linalg.norm(u, axis=1)
    h = np.minimum(1e-3 * (1.0 - rho), rho / 4)
    jac = _fd_jacobian(lambda x: ball_to_space(x)[0], u, h)
    fd_log_det = np.linalg.slogdet(jac)[1]
    _, log_det = ball_to_space(u)
    # Tight near the centre, where any error in the series 1 + ρ²/3 would show.
    tol = np.where(rho < 1e-4, 1e-13, 1e-7)
    assert np.all(np.abs(log_det - fd_log_det) <= tol), (log_det - fd_log_det, rho)


@pytest.mark.parametrize("rho", [0.0, 1e-12, 1e-8, 9.9999e-5, 1e-4, 1.00001e-4, 1e-3])
def test_ball_map_is_smooth_across_the_series_switch(rho):
    """Value and log-Jacobian near ρ = 1e-4 agree with the exact expressions to rounding.

    Reference: atanh(ρ)/ρ − 1 = ρ²/3 + ρ⁴/5 + ρ⁶/7 + …, exact to float64 for ρ ≤ 1e-3.
    """
    u = np.array([[rho, 0.0, 0.0]])
    w, log_det = ball_to_space(u)
    excess = rho**2 / 3 + rho**4 / 5 + rho**6 / 7 + rho**8 / 9
    assert w[0, 0] == pytest.approx(rho * (1 + excess), rel=1e-15, abs=0)
    exact = -math.log1p(-(rho**2)) + 2 * math.log1p(excess)
    assert log_det[0] == pytest.approx(exact, rel=1e-12, abs=2.3e-16)
    assert space_to_ball(w)[0, 0] == pytest.approx(rho, rel=1e-15, abs=0)


@SETTINGS
@given(pre=preprocessors)
def test_velocity_log_det_is_minus_sum_log_std(pre):
    v = np.array([[1.0, -2.0, 3.0], [100.0, 200.0, -300.0]])
    s, log_det = pre.velocities_forward(v)
    assert log_det == pytest.approx(-np.log(pre.velocity_std).sum(), rel=1e-14, abs=1e-14)
    jac = _fd_jacobian(lambda x: pre.velocities_forward(x)[0], v, np.full(2, 1.0))
    np.testing.assert_allclose(np.linalg.slogdet(jac)[1], log_det, atol=1e-10)


# ----------------------------------------------------------------------------- densities


def test_transformed_normal_density_integrates_to_one_monte_carlo():
    """p(r) = N(s(r)) |det ∂s/∂r| integrates to 1 over the ball of radius r_max · c.

    Uniform Monte Carlo in the ball, independent of the transform; its standard error is
    small enough that a log-Jacobian off by a constant 0.05 fails.
    """
    pre = PAPER_LIKE
    rng = np.random.default_rng(12345)
    n = 1_000_000
    r = _positions(pre, _uniform_ball(rng, n))
    s, log_det = pre.positions_forward(r)
    p = np.exp(_log_normal(s) + log_det)
    volume = 4 / 3 * math.pi * _scale(pre) ** 3
    integral = volume * p.mean()
    stderr = volume * p.std() / math.sqrt(n)
    assert stderr < 0.005, "the check must be able to see a constant error of 0.05"
    assert abs(integral - 1.0) < 5 * stderr, (integral, stderr)
    for offset in (-0.05, 0.05):
        assert abs(integral * math.exp(offset) - 1.0) > 5 * stderr


@pytest.mark.parametrize("sigma, r_max", [(0.7, 3.5), (1.3, 1.0), (0.3, 8.0)])
def test_transformed_normal_density_integrates_to_one_radially(sigma, r_max):
    """Isotropic case, integrated radially by quadrature to 1e-8: catches a constant error."""
    pre = Preprocessor(
        sun_position_kpc=(-8.0, 0.0, 0.02), r_max_kpc=r_max, position_mean=(0.0, 0.0, 0.0),
        position_std=(sigma,) * 3, velocity_mean=(0.0, 0.0, 0.0), velocity_std=(1.0,) * 3,
    )
    direction = np.array([0.3, -0.4, math.sqrt(1 - 0.25)])
    sun = np.asarray(pre.sun_position_kpc)

    def shell(t: float) -> float:
        s, log_det = pre.positions_forward((sun + t * direction)[None, :])
        return 4 * math.pi * t**2 * math.exp(_log_normal(s)[0] + log_det[0])

    with np.errstate(over="ignore"):
        integral, error = integrate.quad(shell, 0.0, _scale(pre), epsabs=1e-11,
                                         epsrel=1e-11, limit=200)
    assert error < 1e-9
    assert integral == pytest.approx(1.0, abs=1e-8)


def test_velocity_density_is_the_normal_in_physical_units():
    """N(s_v) · exp(log_det) is the normal with the fitted mean and std, in (km/s)⁻³."""
    from scipy.stats import multivariate_normal

    pre = PAPER_LIKE
    v = np.random.default_rng(3).normal(size=(200, 3)) * 80 + [0, 200, 0]
    s, log_det = pre.velocities_forward(v)
    expected = multivariate_normal(pre.velocity_mean, np.diag(np.square(pre.velocity_std)))
    np.testing.assert_allclose(_log_normal(s) + log_det, expected.logpdf(v), rtol=1e-12)


# ----------------------------------------------------------------------------- fitting


def _train_set(seed: int, n: int, sun, r_max: float) -> np.ndarray:
    """Disk-like particles inside the sphere, with a drifted, anisotropic velocity."""
    rng = np.random.default_rng(seed)
    u = _uniform_ball(rng, 4 * n)
    u = u[np.abs(u[:, 2]) < 0.25 * rng.uniform(size=len(u)) ** 0.5][:n]
    positions = np.asarray(sun) + u * r_max
    velocities = rng.normal(size=(len(u), 3)) * [35.0, 25.0, 18.0] + [5.0, 210.0, -1.0]
    return np.hstack([positions, velocities])


@pytest.mark.parametrize("seed, sun, r_max", [
    (0, (-8.0, 0.0, 0.02), 3.5),
    (1, (-8.122, 0.0, 0.0208), 3.5),
    (2, (3.0, -2.0, 0.5), 1.0),
])
def test_fit_standardises_the_train_data(seed, sun, r_max):
    data = _train_set(seed, 20_000, sun, r_max)
    pre = Preprocessor.fit(data, sun, r_max)
    assert pre.sun_position_kpc == tuple(float(x) for x in sun)
    assert pre.r_max_kpc == r_max
    assert pre.boundary_factor == BOUNDARY_FACTOR
    s, log_det = pre.positions_forward(data[:, :3])
    sv, _ = pre.velocities_forward(data[:, 3:])
    for transformed in (s, sv):
        np.testing.assert_allclose(transformed.mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(transformed.std(axis=0), 1.0, rtol=1e-12)
    assert np.all(np.isfinite(log_det))
    np.testing.assert_allclose(pre.positions_inverse(s), data[:, :3], atol=1e-12)
    np.testing.assert_allclose(pre.velocities_inverse(sv), data[:, 3:], atol=1e-10)
    # The fit is a deterministic function of the data.
    assert Preprocessor.fit(data, sun, r_max) == pre


def test_fit_stores_plain_floats():
    data = _train_set(4, 1000, (-8.0, 0.0, 0.02), 3.5)
    pre = Preprocessor.fit(data, np.array([-8.0, 0.0, 0.02]), np.float64(3.5))
    for name, value in pre.to_dict().items():
        values = value if isinstance(value, tuple) else (value,)
        assert all(type(x) is float for x in values), name


@SETTINGS
@given(pre=preprocessors)
def test_dict_round_trip(pre):
    data = pre.to_dict()
    assert Preprocessor.from_dict(data) == pre
    through_json = json.loads(json.dumps(data))
    again = Preprocessor.from_dict(through_json)
    assert again == pre
    r = _positions(pre, np.array([[0.3, -0.2, 0.1], [0.0, 0.0, 0.9]]))
    np.testing.assert_array_equal(again.positions_forward(r)[0], pre.positions_forward(r)[0])


def test_dict_is_json_safe_and_named():
    data = json.loads(json.dumps(PAPER_LIKE.to_dict()))
    assert set(data) == {"sun_position_kpc", "r_max_kpc", "position_mean", "position_std",
                         "velocity_mean", "velocity_std", "boundary_factor"}
    assert data["boundary_factor"] == BOUNDARY_FACTOR


# ----------------------------------------------------------------------------- boundary


def test_points_on_or_outside_the_ball_give_non_finite_values():
    """Documented behaviour: rows with |r − r☉| ≥ r_max · c come out non-finite (no raise).

    Exactly on r_max · c the radial map is infinite; beyond it atanh is NaN. Finite rows in
    the same call are unaffected.
    """
    pre = Preprocessor(
        sun_position_kpc=(0.0, 0.0, 0.0), r_max_kpc=2.0, position_mean=(0.0, 0.0, 0.0),
        position_std=(1.0, 1.0, 1.0), velocity_mean=(0.0, 0.0, 0.0),
        velocity_std=(1.0, 1.0, 1.0),
    )
    scale = _scale(pre)
    r = np.array([
        [scale, 0.0, 0.0],          # on the boundary of the ball: |u| == 1 exactly
        [0.0, -1.0001 * scale, 0.0],  # just outside
        [3.0 * scale, 1.0, 1.0],    # far outside
        [0.5, 0.5, 0.5],            # inside
    ])
    with np.errstate(all="ignore"):
        s, log_det = pre.positions_forward(r)
    assert not np.all(np.isfinite(s[0])) and not np.isfinite(log_det[0])
    assert not np.any(np.isfinite(s[1:3])) and not np.any(np.isfinite(log_det[1:3]))
    assert np.all(np.isfinite(s[3])) and np.isfinite(log_det[3])


def test_points_on_the_selection_sphere_stay_finite():
    """c = 1.000001 keeps |r − r☉| = r_max (and a little beyond) inside the open ball."""
    pre = PAPER_LIKE
    sun = np.asarray(pre.sun_position_kpc)
    directions = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0], [0.6, 0.0, -0.8]])
    for radius in (pre.r_max_kpc, pre.r_max_kpc * (1 + 5e-7)):
        s, log_det = pre.positions_forward(sun + radius * directions)
        assert np.all(np.isfinite(s)) and np.all(np.isfinite(log_det))
        w_norm = np.linalg.norm(s * pre.position_std + pre.position_mean, axis=1)
        assert np.all(w_norm < 10.0)  # atanh(1/c) ≈ 7.6


def test_inverse_never_leaves_the_closed_ball():
    """Far tails of s map to just inside r_max · c (which is outside r_max by 3.5e-6 kpc)."""
    pre = PAPER_LIKE
    s = np.array([[1e3, 0, 0], [0, -1e8, 0], [30.0, 30.0, -30.0], [5.0, 5.0, 5.0]])
    r = pre.positions_inverse(s)
    distance = np.linalg.norm(r - np.asarray(pre.sun_position_kpc), axis=1)
    assert np.all(np.isfinite(r))
    assert np.all(distance <= _scale(pre) * (1 + 1e-15))


def test_inverse_of_non_finite_is_non_finite():
    with np.errstate(all="ignore"):
        r = PAPER_LIKE.positions_inverse(np.array([[np.inf, 0, 0], [np.nan, 0, 0]]))
    assert not np.any(np.all(np.isfinite(r), axis=1))


def test_points_near_the_centre_raise_no_floating_point_warnings():
    u = np.array([[1e-6, 0.0, 0.0], [0.3, 0.2, 0.1]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            w, log_det = ball_to_space(u)
            space_to_ball(w)
            PAPER_LIKE.positions_forward(_positions(PAPER_LIKE, u))
    assert np.all(np.isfinite(log_det))
