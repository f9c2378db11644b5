"""``_healpix_29`` on any torch device, equal to hats' ``compute_spatial_index``.

hats hands (ra, dec) [deg] to astropy's ``Longitude``/``Latitude`` (ra wrapped into
[0°, 360°)), converts them to radians (× π/180) and calls cdshealpix's ``hash`` at order 29.
That hash is the nested HEALPix index of Górski et al. 2005 (ApJ 622, 759): z = sin δ
splits the sphere at |z| = 2/3 into an equatorial zone, mapped by the cylindrical
equal-area projection, and two polar caps, mapped by Collignon's projection, here with
√(3(1 − |z|)) written √6 cos(|δ|/2 + π/4) as cdshealpix does; the projected point is
rotated by 45° into one of the 12 base pixels, scaled by nside = 2²⁹, truncated to integer
cell coordinates (i, j), and the index is the base pixel in the top bits above the bits of
i and j interleaved (Z-order).

This module repeats every float64 operation of that chain in the same order, so the result
can differ only through sin and cos: cdshealpix gets them from glibc, which is not
correctly rounded (errors up to ~0.502 ulp), while torch uses SLEEF on CPU and CUDA's own
on GPUs; the values differ by an ulp in ~0.2 % of arguments, and no device-side formula can
reproduce glibc's roundings. An ulp of sin moves the scaled cell coordinates by < 1e-6 of a
cell, so a row can come out different only when a coordinate lies within that of an integer.
Rows within :data:`BOUNDARY_MARGIN` of one (~4e-5 of random rows) are recomputed by hats on
the CPU, which makes the result equal to hats' everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hats.pixel_math.spatial_index import SPATIAL_INDEX_ORDER, compute_spatial_index

DEG_TO_RAD = math.pi / 180.0
"""astropy's degree → radian scale, applied by one multiplication."""

BOUNDARY_MARGIN = 1e-5
"""Cells: scaled coordinates this close to an integer are handed to hats (see above)."""

_HALF_NSIDE = float(2 ** (SPATIAL_INDEX_ORDER - 1))
_NSIDE_MINUS_1 = 2**SPATIAL_INDEX_ORDER - 1
_FOUR_OVER_PI = 4.0 / math.pi
_QUARTER_PI = math.pi / 4.0
_SQRT6 = math.sqrt(6.0)
_TRANSITION_LATITUDE = math.asin(2.0 / 3.0)
"""δ at |z| = 2/3, the equatorial zone's edge [rad]."""


def _wrap_degrees(ra_deg: torch.Tensor) -> torch.Tensor:
    """astropy's ``Longitude`` wrapping into [0°, 360°), operation for operation."""
    outside = (ra_deg < 0.0) | (ra_deg >= 360.0)
    wraps = torch.div(ra_deg, 360.0, rounding_mode="floor")
    shift = outside & torch.isfinite(wraps) & (wraps != 0.0)
    lon = torch.where(shift, ra_deg - wraps * 360.0, ra_deg)
    lon = torch.where(lon >= 360.0, lon - 360.0, lon)
    return torch.where(lon < 0.0, lon + 360.0, lon)


def _interleave(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Z-order: the bits of i in the even places, those of j in the odd ones."""
    def spread(v: torch.Tensor) -> torch.Tensor:
        for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF),
                            (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333),
                            (1, 0x5555555555555555)):
            v = (v | (v << shift)) & mask
        return v
    return spread(i) | (spread(j) << 1)


def _cell_coordinate(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """⌊value · nside/2⌋ as cdshealpix truncates it (≥ 0, at most nside − 1), and whether
    the scaled value lies within :data:`BOUNDARY_MARGIN` of an integer."""
    scaled = value * _HALF_NSIDE
    near = (scaled - torch.round(scaled)).abs() < BOUNDARY_MARGIN
    cell = torch.clamp(torch.clamp(scaled, min=0.0).to(torch.int64), max=_NSIDE_MINUS_1)
    return cell, near


def device_index(ra_deg: torch.Tensor,
                 dec_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cdshealpix's order-29 hash computed on the device, without the hats fallback.

    Returns:
        (n,) int64 indices, the (n,) bool rows that may differ from hats (a cell coordinate
        within :data:`BOUNDARY_MARGIN` of an integer), and the (n,) bool rows with an index
        at all (finite ra and dec, |dec| ≤ 90°).
    """
    ra_deg, dec_deg = ra_deg.double(), dec_deg.double()
    lon = _wrap_degrees(ra_deg) * DEG_TO_RAD
    lat = dec_deg * DEG_TO_RAD
    valid = torch.isfinite(lon) & torch.isfinite(lat) & (dec_deg.abs() <= 90.0)
    x = lon.abs() * _FOUR_OVER_PI  # lon = (x_pm1 + 1) π/4 + quarter · π/2
    odd = torch.where(valid, x, 0.0).to(torch.int64) | 1
    negative = torch.signbit(lon)
    quarter = torch.where(negative, 3 - ((odd & 7) >> 1), (odd & 7) >> 1)
    x_pm1 = torch.where(negative, odd - x, x - odd)
    polar = lat.abs() > _TRANSITION_LATITUDE
    north = lat > 0.0
    # Polar caps: √(3(1 − |z|)) = √6 cos(δ/2 ± π/4), + in the north, − in the south.
    cap_root = _SQRT6 * torch.cos(torch.where(north, 0.5 * lat + _QUARTER_PI,
                                              0.5 * lat - _QUARTER_PI))
    # Equatorial zone: y = (3/2) z, then the 45° rotation picks the base pixel.
    y_pm1 = torch.sin(lat) * 1.5
    q01 = (x_pm1 > y_pm1).to(torch.int64)
    q12 = (x_pm1 >= -y_pm1).to(torch.int64)
    q013 = q01 + (1 - q12)
    l_proj = torch.where(polar, x_pm1 * cap_root, x_pm1 - (q01 + q12 - 1).double())
    h_proj = torch.where(polar, torch.where(north, 2.0 - cap_root, cap_root),
                         y_pm1 + q013.double())
    base = torch.where(polar, torch.where(north, quarter, quarter + 8),
                       (q013 << 2) + ((quarter + (q01 & q12)) & 3))
    i, near_i = _cell_coordinate(h_proj + l_proj)
    j, near_j = _cell_coordinate(h_proj - l_proj)
    index = (base << (2 * SPATIAL_INDEX_ORDER)) | _interleave(i, j)
    return index, valid & (near_i | near_j), valid


def spatial_index_tensor(ra_deg: torch.Tensor, dec_deg: torch.Tensor) -> torch.Tensor:
    """Nested HEALPix index at order 29 (hats' ``_healpix_29``) of each (ra, dec) [deg].

    Computed on the inputs' device; the few rows next to a cell boundary are recomputed by
    hats on the CPU (module docstring), so the result equals
    ``hats.pixel_math.spatial_index.compute_spatial_index``. Rows with a non-finite ra or
    dec, or |dec| > 90°, where hats raises or gives no meaningful index, get −1.

    Returns:
        (n,) int64 indices in [0, 12 · 4²⁹), or −1.
    """
    index, near_boundary, valid = device_index(ra_deg, dec_deg)
    rows = torch.nonzero(near_boundary).squeeze(1)
    if len(rows):
        exact = compute_spatial_index(ra_deg[rows].double().cpu().numpy(),
                                      dec_deg[rows].double().cpu().numpy())
        index[rows] = torch.from_numpy(np.asarray(exact, np.int64)).to(index.device)
    return torch.where(valid, index, -1)
