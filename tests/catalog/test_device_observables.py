"""The torch observables and ``_healpix_29`` against the numpy path, astropy and hats.

Tolerances are those of tests/catalog/test_observables.py (see its docstring): angles as a
separation ≤ 1e-11 rad + 1e-13 kpc / d, distances to 1e-12 relative + 1e-13 kpc, velocities
to 1e-9 of the total speed (+ the axis rounding near the poles) + 1e-9 absolute.
"""

from __future__ import annotations

import astropy.units as u
import cdshealpix
import numpy as np
import pytest
import torch
from astropy.coordinates import ICRS, CartesianRepresentation
from hats.pixel_math.spatial_index import compute_spatial_index

from gflow_dist.catalog.device_healpix import device_index
from gflow_dist.catalog.device_observables import observables_tensor, spatial_index_tensor
from gflow_dist.catalog.observables import (
    OBSERVABLE_COLUMNS,
    observables,
    observables_astropy,
)
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.errors import GflowError
from gflow_dist.frame import SolarFrame
from tests.catalog.test_observables import assert_agree_with_astropy, unit_vectors

FRAME = SolarFrame()


@pytest.fixture(scope="module")
def stars():
    """Mock-galaxy stars, then stars near both celestial poles and near ra = 0/360."""
    rng = np.random.default_rng(21)
    galaxy = MockGalaxy().sample(3000, seed=5)
    ra = np.concatenate([rng.uniform(0, 360, 400), 360 - 10 ** rng.uniform(-12, -3, 100),
                         10 ** rng.uniform(-12, -3, 100)])
    dec = np.concatenate([90 - 10 ** rng.uniform(-9, -2, 200), -90 + 10 ** rng.uniform(-9, -2, 200),
                          rng.uniform(-60, 60, 200)])
    distance = 10 ** rng.uniform(-3, 1, 600)
    rep = CartesianRepresentation((unit_vectors(ra % 360, dec) * distance[:, None]).T * u.kpc)
    gc = ICRS(rep).transform_to(FRAME.astropy_frame()).cartesian.xyz.to_value(u.kpc).T
    edges = np.column_stack([gc, rng.normal(0.0, 80.0, (600, 3)) + (0.0, 220.0, 0.0)])
    return np.concatenate([galaxy, edges])


def test_observables_tensor_matches_numpy_and_astropy(stars):
    got = observables_tensor(torch.from_numpy(stars), FRAME)
    assert tuple(got) == OBSERVABLE_COLUMNS
    assert all(column.dtype == torch.float64 for column in got.values())
    got = {name: column.numpy() for name, column in got.items()}
    assert_agree_with_astropy(got, observables(stars, FRAME))
    assert_agree_with_astropy(got, observables_astropy(stars, FRAME))


def test_a_star_at_the_sun_gives_what_numpy_gives():
    rows = np.zeros((2, 6))
    rows[:, :3] = FRAME.sun_position_kpc
    rows[:, 3:] = (10.0, 200.0, 5.0)
    rows[1, 0] += 1.0
    got = observables_tensor(torch.from_numpy(rows), FRAME)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = observables(rows, FRAME)
    assert torch.isnan(got["pmra"][0]) and torch.isinf(got["parallax"][0])
    for name in OBSERVABLE_COLUMNS:
        np.testing.assert_allclose(got[name].numpy(), expected[name], rtol=1e-12, atol=1e-12)


def test_bad_shape_is_refused():
    with pytest.raises(GflowError, match=r"\(n, 6\)"):
        observables_tensor(torch.zeros(3, 5), FRAME)


def _assert_index_equals_hats(ra, dec):
    expected = np.asarray(compute_spatial_index(ra, dec), np.int64)
    ra_t, dec_t = torch.from_numpy(np.asarray(ra, np.float64)), torch.from_numpy(dec)
    np.testing.assert_array_equal(spatial_index_tensor(ra_t, dec_t).numpy(), expected)
    raw, near_boundary, valid = device_index(ra_t, dec_t)
    assert valid.all()
    differs = raw.numpy() != expected  # the device path alone differs only where flagged
    assert not np.any(differs & ~near_boundary.numpy())
    return near_boundary.numpy()


def test_healpix_index_equals_hats_on_a_million_random_points():
    rng = np.random.default_rng(29)
    ra = rng.uniform(0, 360, 1_000_000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 1_000_000)))
    near_boundary = _assert_index_equals_hats(ra, dec)
    assert near_boundary.mean() < 2e-4  # the hats fallback stays rare


def test_healpix_index_equals_hats_on_special_points():
    transition = np.degrees(np.arcsin(2 / 3))
    decs = [90.0, -90.0, 0.0, transition, -transition, 45.0, -45.0, 89.999999, -89.999999]
    decs += [np.nextafter(d, side) for d in (transition, -transition) for side in (0, 100)]
    ras = [0.0, -0.0, 360.0, np.nextafter(360.0, 0), 1e-300, 720.5, -45.0, -1e-20]
    ras += list(np.arange(0, 360, 45.0)) + [np.nextafter(a, s) for a in np.arange(45, 360, 45.0)
                                          for s in (0, 360)]
    ra, dec = (grid.ravel() for grid in np.meshgrid(ras, decs))
    _assert_index_equals_hats(ra, dec)


@pytest.mark.parametrize("order", [0, 3, 10, 29])
def test_healpix_index_equals_hats_at_pixel_centres_and_corners(order):
    rng = np.random.default_rng(order)
    pixels = np.arange(12 * 4**order) if order <= 3 else rng.integers(0, 12 * 4**order, 3000)
    pixels = pixels.astype(np.uint64)
    points = [cdshealpix.nested.healpix_to_lonlat(pixels, order, dx=0.5, dy=0.5),
              cdshealpix.nested.healpix_to_lonlat(pixels, order, dx=0.0, dy=0.0)]
    lon, lat = cdshealpix.nested.vertices(pixels, order)
    points.append((lon.ravel(), lat.ravel()))
    ra = np.concatenate([p[0].deg for p in points])
    dec = np.concatenate([p[1].deg for p in points])
    near_boundary = _assert_index_equals_hats(ra, dec)
    assert near_boundary.any()  # corners lie on cell boundaries: the fallback is exercised


def test_rows_without_an_index_get_minus_one():
    ra = torch.tensor([10.0, np.nan, 10.0, np.inf, 10.0])
    dec = torch.tensor([np.nan, 10.0, 90.5, 0.0, 10.0])
    got = spatial_index_tensor(ra, dec)
    assert got[:4].tolist() == [-1, -1, -1, -1]
    assert got[4] == int(compute_spatial_index(np.array([10.0]), np.array([10.0]))[0])
