"""Galactocentric phase space → Gaia-like observables as float64 torch kernels.

The closed forms of :mod:`gflow_dist.catalog.observables` (``_fill_batch``), evaluated on
whatever device the input tensor lives on: heliocentric ICRS offsets r = Aᵀ(x − x⊙),
v = Aᵀ(u − v⊙) with A = ``frame.icrs_to_galactocentric`` (paper §2.1), then spherical
coordinates, parallax, proper motions and radial velocity, and Galactic (l, b) through
``frame.icrs_to_galactic``. Units as there: ra, dec, l, b [deg]; distance [kpc];
parallax [mas]; pmra = μ_α cos δ and pmdec [mas/yr]; radial_velocity [km/s]. The
``_healpix_29`` column comes from :func:`spatial_index_tensor`
(:mod:`gflow_dist.catalog.device_healpix`), re-exported here.
"""

from __future__ import annotations

import math

import torch

from gflow_dist.catalog.device_healpix import spatial_index_tensor
from gflow_dist.catalog.observables import KMS_PER_KPC_MASYR, OBSERVABLE_COLUMNS
from gflow_dist.errors import GflowError
from gflow_dist.frame import SolarFrame

__all__ = ["observables_tensor", "spatial_index_tensor"]

RAD_TO_DEG = 180.0 / math.pi


def _longitude_deg(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """atan2 in degrees wrapped to [0, 360); a tiny negative angle that rounds to 360 is 0."""
    lon = torch.atan2(y, x) * RAD_TO_DEG
    lon = torch.where(lon < 0.0, lon + 360.0, lon)
    return torch.where(lon == 360.0, 0.0, lon)


def _latitude_deg(z: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    return torch.atan2(z, rho) * RAD_TO_DEG


def observables_tensor(phase_space: torch.Tensor, frame: SolarFrame) -> dict[str, torch.Tensor]:
    """The columns of :func:`~gflow_dist.catalog.observables.observables`, as float64 tensors.

    Args:
        phase_space: (n, 6) Galactocentric (x, y, z [kpc], vx, vy, vz [km/s]), any float
            dtype, on any device.
        frame: the Solar frame.

    Returns:
        ``OBSERVABLE_COLUMNS`` → (n,) float64 tensors on the input's device. A row exactly at
        the Sun has no direction: like the numpy path, its proper motions and radial velocity
        are NaN and its parallax infinite.

    Raises:
        GflowError: ``phase_space`` is not (n, 6).
    """
    if phase_space.ndim != 2 or phase_space.shape[1] != 6:
        raise GflowError(f"phase_space must have shape (n, 6) [kpc, km/s], "
                         f"got {tuple(phase_space.shape)}")
    ps = phase_space.double()
    to_icrs = ps.new_tensor(frame.icrs_to_galactocentric.T)
    to_galactic = ps.new_tensor(frame.icrs_to_galactic)
    position = (ps[:, :3] - ps.new_tensor(frame.sun_position_kpc)) @ to_icrs.T
    velocity = (ps[:, 3:] - ps.new_tensor(frame.sun_velocity_kms)) @ to_icrs.T
    x, y, z = position.unbind(dim=1)  # heliocentric ICRS [kpc]
    ux, uy, uz = velocity.unbind(dim=1)  # heliocentric ICRS [km/s]
    rho2 = x * x + y * y
    rho = torch.sqrt(rho2)
    distance = torch.sqrt(rho2 + z * z)
    radial = x * ux + y * uy
    gx, gy, gz = (position @ to_galactic.T).unbind(dim=1)
    out = {name: ps[:, index] for index, name in enumerate(("x", "y", "z", "vx", "vy", "vz"))}
    out.update({
        "ra": _longitude_deg(y, x),
        "dec": _latitude_deg(z, rho),
        "distance": distance,
        "parallax": 1.0 / distance,
        "radial_velocity": (radial + z * uz) / distance,
        # μ_α* = (ê_α·u)/d, μ_δ = (ê_δ·u)/d with ê_α = (−y, x, 0)/ρ, ê_δ = (−xz, −yz, ρ²)/(ρd).
        "pmra": (x * uy - y * ux) / (rho * distance * KMS_PER_KPC_MASYR),
        "pmdec": (rho2 * uz - z * radial) / (rho * distance * distance * KMS_PER_KPC_MASYR),
        "l": _longitude_deg(gy, gx),
        "b": _latitude_deg(gz, torch.hypot(gx, gy)),
    })
    return {name: out[name] for name in OBSERVABLE_COLUMNS}
