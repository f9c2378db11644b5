"""Galactocentric → ICRS/Galactic observables: the numpy fast path against astropy and by hand.

Tolerances. Both paths work in float64 from the same Galactocentric inputs, whose positions
carry a rounding of ε·|x_gc| ≈ 2e-15 kpc; a star at heliocentric distance d therefore has a
direction known only to ~2e-15/d rad. Angles (ra, dec and l, b) must agree as an angular
separation ≤ 1e-11 rad (2 μas, well below Gaia's best precision) + 1e-13 kpc / d; distances
to 1e-12 relative + 1e-13 kpc; proper motions and radial velocities to 1e-9 of the total
(proper-motion or heliocentric) speed + 1e-13 kpc / d of it, plus 1e-9 absolute; near the
poles the axes of pmra and pmdec turn with ra, known to ~1e-13 kpc / (d cos δ), which
widens their relative tolerance by that much.
"""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import ICRS, CartesianDifferential, CartesianRepresentation

import gflow_dist.catalog.observables as obs
from gflow_dist.catalog.observables import (
    COLUMN_UNITS,
    KMS_PER_KPC_MASYR,
    OBSERVABLE_COLUMNS,
    observables,
    observables_astropy,
)
from gflow_dist.config import build_config
from gflow_dist.errors import GflowError
from gflow_dist.frame import GALCEN_ICRS_DEG, SolarFrame

FRAME = SolarFrame()
ROUNDING_KPC = 1e-13


def unit_vectors(lon_deg, lat_deg):
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def separation_rad(lon1, lat1, lon2, lat2):
    chord = np.linalg.norm(unit_vectors(lon1, lat1) - unit_vectors(lon2, lat2), axis=1)
    return 2 * np.arcsin(chord / 2)


def _stars_at(ra_deg, dec_deg, distance_kpc, rng):
    """Galactocentric rows of stars at given ICRS positions, with disk-like velocities."""
    rep = CartesianRepresentation(
        (unit_vectors(ra_deg, dec_deg) * distance_kpc[:, None]).T * u.kpc)
    gc = ICRS(rep).transform_to(FRAME.astropy_frame()).cartesian.xyz.to_value(u.kpc).T
    velocity = rng.normal(0.0, 80.0, (len(gc), 3)) + (0.0, 220.0, 0.0)
    return np.column_stack([gc, velocity])


@pytest.fixture(scope="module")
def awkward_stars():
    """Stars anywhere on the sky, near both poles, near ra = 0/360, and very close by."""
    rng = np.random.default_rng(7)
    n = 2000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    distance = 10 ** rng.uniform(-3, 1, n)
    ra[:200], dec[:200] = rng.uniform(0, 360, 200), 90 - 10 ** rng.uniform(-9, -2, 200)
    ra[200:400], dec[200:400] = rng.uniform(0, 360, 200), -90 + 10 ** rng.uniform(-9, -2, 200)
    ra[400:600] = np.where(rng.random(200) < 0.5, 1, 360) - 10 ** rng.uniform(-12, -3, 200)
    distance[600:800] = 10 ** rng.uniform(-7, -4, 200)
    return _stars_at(ra % 360, dec, distance, rng)


def assert_agree_with_astropy(fast, slow):
    """Fast-path observables ``fast`` equal astropy's ``slow`` to the stated tolerances."""
    distance = slow["distance"]
    rounding = ROUNDING_KPC / distance
    for lon, lat in (("ra", "dec"), ("l", "b")):
        assert np.all((fast[lon] >= 0) & (fast[lon] < 360))
        sep = separation_rad(fast[lon], fast[lat], slow[lon], slow[lat])
        assert np.all(sep <= 1e-11 + rounding), (lon, sep.max())
    assert np.all(np.abs(fast["distance"] - distance) <= 1e-12 * distance + ROUNDING_KPC)
    np.testing.assert_allclose(fast["parallax"], 1.0 / fast["distance"], rtol=1e-15)
    pm_total = np.hypot(slow["pmra"], slow["pmdec"])
    helio_speed = np.hypot(pm_total * KMS_PER_KPC_MASYR * distance, slow["radial_velocity"])
    # The axes ê_α, ê_δ are only defined to within the ra rounding ~ rounding / cos δ.
    axis_rounding = rounding / np.cos(np.radians(slow["dec"]))
    for name, scale, slack in (("pmra", pm_total, axis_rounding),
                               ("pmdec", pm_total, axis_rounding),
                               ("radial_velocity", helio_speed, rounding)):
        err = np.abs(fast[name] - slow[name])
        assert np.all(err <= (1e-9 + slack) * scale + 1e-9), (name, (err / scale).max())
    for name in ("x", "y", "z", "vx", "vy", "vz"):
        np.testing.assert_array_equal(fast[name], slow[name])


def test_fast_path_matches_astropy_everywhere(awkward_stars):
    fast, slow = observables(awkward_stars, FRAME), observables_astropy(awkward_stars, FRAME)
    assert set(fast) == set(OBSERVABLE_COLUMNS) and set(slow) == set(OBSERVABLE_COLUMNS)
    assert_agree_with_astropy(fast, slow)


def test_the_sun_sits_exactly_where_configured():
    frame = SolarFrame((-8.3, 0.0, 0.0271), (12.0, 240.0, 8.0))
    at_sun = ICRS(CartesianRepresentation([0.0, 0.0, 0.0] * u.kpc,
                                          differentials=CartesianDifferential([0, 0, 0] * u.km
                                                                              / u.s)))
    gc = at_sun.transform_to(frame.astropy_frame())
    np.testing.assert_allclose(gc.cartesian.xyz.to_value(u.kpc), frame.sun_position_kpc,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(gc.velocity.d_xyz.to_value(u.km / u.s), frame.sun_velocity_kms,
                               rtol=0, atol=1e-9)
    rotation = frame.icrs_to_galactocentric
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-14)
    assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-14)


def test_star_toward_the_galactic_centre_by_hand():
    """Stars on the Sun–centre line lie toward astropy's Galactic centre, (l, b) ≈ (0°, 0°)."""
    sun = np.array(FRAME.sun_position_kpc)
    toward_centre = -sun / np.linalg.norm(sun)
    rows = np.zeros((2, 6))
    rows[0, :3] = sun + 1.0 * toward_centre
    rows[1, :3] = 0.0  # the Galactic centre itself, at rest
    out = observables(rows, FRAME)
    np.testing.assert_allclose(out["distance"], [1.0, FRAME.galcen_distance_kpc], rtol=1e-14)
    sep = separation_rad(out["ra"], out["dec"], *np.repeat([GALCEN_ICRS_DEG], 2, axis=0).T)
    assert np.all(sep < 1e-12)
    np.testing.assert_allclose(out["l"], 0.0, atol=1e-4)
    np.testing.assert_allclose(out["b"], 0.0, atol=1e-4)
    # At rest, the star moves at −v⊙ relative to the Sun: rv = −v⊙·n̂.
    v_sun = np.array(FRAME.sun_velocity_kms)
    assert out["radial_velocity"][1] == pytest.approx(-v_sun @ toward_centre, rel=1e-12)


def test_stars_at_rest_move_at_minus_the_solar_velocity():
    """Hand calculation: u = −v⊙, so rv = −v⊙·n̂ and |μ| = |u − rv n̂| / (4.74047 d)."""
    rng = np.random.default_rng(3)
    rows = np.zeros((50, 6))
    rows[:, :3] = np.array(FRAME.sun_position_kpc) + rng.normal(0.0, 1.5, (50, 3))
    out = observables(rows, FRAME)
    offset = rows[:, :3] - FRAME.sun_position_kpc
    distance = np.linalg.norm(offset, axis=1)
    direction = offset / distance[:, None]
    helio = -np.array(FRAME.sun_velocity_kms)
    rv = direction @ helio
    transverse = np.linalg.norm(helio - rv[:, None] * direction, axis=1)
    np.testing.assert_allclose(out["distance"], distance, rtol=1e-14)
    np.testing.assert_allclose(out["radial_velocity"], rv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.hypot(out["pmra"], out["pmdec"]),
                               transverse / (4.740470463533348 * distance), rtol=1e-12)


def test_proper_motion_constant_is_one_au_per_julian_year():
    assert KMS_PER_KPC_MASYR == pytest.approx(149_597_870.7 / (365.25 * 86400), rel=1e-15)


def test_batches_do_not_change_the_result(monkeypatch, awkward_stars):
    whole = observables(awkward_stars, FRAME)
    monkeypatch.setattr(obs, "BATCH_ROWS", 333)
    batched = observables(awkward_stars, FRAME)
    for name in OBSERVABLE_COLUMNS:
        np.testing.assert_array_equal(batched[name], whole[name])


@pytest.mark.parametrize("position", [(-8.0, 0.1, 0.02), (8.0, 0.0, 0.0), (0.0, 0.0, 1.0)])
def test_a_sun_off_the_negative_x_axis_is_refused(position):
    with pytest.raises(GflowError, match=r"galaxy\.sun_position_kpc"):
        SolarFrame(position)


def test_bad_inputs_are_refused():
    with pytest.raises(GflowError, match=r"galaxy\.sun_velocity_kms"):
        SolarFrame((-8.0, 0.0, 0.0), (1.0, math.nan, 0.0))
    with pytest.raises(GflowError, match=r"\(n, 6\)"):
        observables(np.zeros((3, 5)), FRAME)


def test_frame_from_config_and_metadata():
    config = build_config({"galaxy": {"sun_position_kpc": [-8.122, 0.0, 0.0208],
                                      "sun_velocity_kms": [12.9, 245.6, 7.78]}})
    frame = config.galaxy.frame
    assert frame.sun_position_kpc == (-8.122, 0.0, 0.0208)
    meta = frame.to_metadata()
    assert all(isinstance(value, str) for value in meta.values())
    assert float(meta["galcen_ra_deg"]) == GALCEN_ICRS_DEG[0]
    assert float(meta["galcen_dec_deg"]) == GALCEN_ICRS_DEG[1]
    assert float(meta["galcen_distance_kpc"]) == pytest.approx(math.hypot(8.122, 0.0208))
    assert meta["roll_deg"] == "0.0" and meta["astropy_version"]
    astropy_frame = frame.astropy_frame()
    assert astropy_frame.galcen_distance.to_value(u.kpc) == float(meta["galcen_distance_kpc"])
    assert astropy_frame.z_sun.to_value(u.kpc) == pytest.approx(0.0208, rel=1e-15)


def test_column_units_follow_the_schema():
    assert list(COLUMN_UNITS) == ["star_id", "x", "y", "z", "vx", "vy", "vz", "ra", "dec",
                                  "distance", "parallax", "pmra", "pmdec", "radial_velocity",
                                  "l", "b", "_healpix_29"]
    for unit in COLUMN_UNITS.values():
        u.Unit(unit)  # every unit string parses in astropy
