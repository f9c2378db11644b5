"""The EnBiD binary (Sharma & Steinmetz 2006) and py-ananke's kernel widths built from it.

EnBiD ships in the optional ``enbid`` extra, the GPL-2 package ``enbid-ananke``: a Python
wrapper around prebuilt ``Enbid.3d`` / ``Enbid.6d`` executables. ``enbid_ananke.enbid``
writes the particles as a GADGET-1 file (float32, positions re-centred on their densest
half, which EnBiD's translation-invariant estimate does not notice) plus a parameter file
into the folder ``name``, runs the executable there, and reads back one density per
particle: with masses, a mass density in the input's units (M☉ kpc⁻³, M☉ (km/s)⁻³ or
M☉ kpc⁻³ (km/s)⁻³). Its defaults are an adaptive-metric spherical Epanechnikov kernel
(TypeOfSmoothing 3, TypeOfKernel 3) with boundary and kernel-bias corrections. Every run
here happens in a temporary folder that is removed afterwards.

The kernel widths follow py-ananke's ``KernelsDriver.__enbid_kernel_estimator``
(github.com/athob/py-ananke, ``src/ananke/KernelsDriver.py``, read at commit
12d776287624840f64ba25a38905fe21333e7c46): three EnBiD runs with masses, on positions, on
velocities and on the 6-D phase space; h = cbrt(m / (4/3·π·ρ₃)) in each 3-D space; then
both widths are scaled by f = ((m/ρ₆) / (π³/6 · h_pos³ · h_vel³))^(1/6), so that the
6-D ellipsoid with semi-axes (h_pos, h_vel), of volume π³/6 · h_pos³ · h_vel³, holds the
phase-space volume m/ρ₆ that EnBiD assigns to the particle.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gflow_dist.errors import GflowError, InputError

INSTALL_HINT = "install the optional extra: pip install 'gflow-dist[enbid]' (GPL-2)"


def _enbid_function():
    try:
        from enbid_ananke import enbid
    except ImportError as err:
        raise GflowError(f"the real EnBiD (upsampler 'enbid_ananke') needs the package "
                         f"enbid-ananke ({err}); {INSTALL_HINT}") from None
    return enbid


def enbid_density(points: np.ndarray, masses: np.ndarray, neighbours: int) -> np.ndarray:
    """EnBiD's mass density at every particle, in the input's units.

    Args:
        points: (n, 3) positions [kpc] or velocities [km/s], or (n, 6) phase-space rows
            (x, y, z, vx, vy, vz); EnBiD reads them as float32.
        masses: (n,) positive particle masses [M☉].
        neighbours: EnBiD's ``DesNumNgb`` smoothing neighbours; must be below n.

    Returns:
        (n,) float64 densities: M☉ per unit volume of ``points``' space.
    """
    enbid = _enbid_function()
    points = np.asarray(points, dtype=np.float64)
    masses = np.asarray(masses, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (3, 6):
        raise InputError(f"EnBiD points must have shape (n, 3) or (n, 6), got {points.shape}")
    if masses.shape != (len(points),) or not (masses > 0).all():
        raise InputError(f"EnBiD masses must be {len(points)} positive values")
    if not np.isfinite(points).all():
        raise InputError("EnBiD points must be finite; drop or fix the NaN/inf rows")
    if not 2 <= neighbours < len(points):
        raise InputError(f"enbid_ananke.neighbours ({neighbours}) must be at least 2 and below "
                         f"the number of particles ({len(points)}); lower it or give more "
                         "particles")
    velocities = points[:, 3:] if points.shape[1] == 6 else None
    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="gflow-enbid-") as folder:
        try:
            with contextlib.redirect_stdout(log):
                density = enbid(points[:, :3], velocities=velocities, mass=masses,
                                name=Path(folder) / "run", ngb=neighbours, verbose=True)
        except (subprocess.CalledProcessError, OSError) as err:
            tail = "\n".join(log.getvalue().splitlines()[-15:])
            raise GflowError(f"the EnBiD binary failed on {len(points)} particles in "
                             f"{points.shape[1]}-D ({err}); its last output:\n{tail}") from None
    density = np.asarray(density, dtype=np.float64)
    if density.shape != (len(points),) or not (np.isfinite(density) & (density > 0)).all():
        raise GflowError(f"EnBiD returned {density.shape} densities with non-positive or "
                         "non-finite values; duplicated particles are a common cause "
                         "(remove them at ingest)")
    return density


def ananke_kernels(phase_space: np.ndarray, masses: np.ndarray,
                   neighbours: int) -> np.ndarray:
    """py-ananke's per-particle kernel widths from three EnBiD runs (module docstring).

    Args:
        phase_space: (n, 6) rows x, y, z [kpc], vx, vy, vz [km/s].
        masses: (n,) positive masses [M☉]; only m/ρ enters, so their scale cancels.
        neighbours: EnBiD's smoothing neighbours (``enbid_ananke.neighbours``).

    Returns:
        (n, 2) widths: h_pos [kpc] and h_vel [km/s].
    """
    masses = np.asarray(masses, dtype=np.float64)
    masses = masses / masses.mean()
    rho_pos = enbid_density(phase_space[:, :3], masses, neighbours)
    rho_vel = enbid_density(phase_space[:, 3:], masses, neighbours)
    rho_6d = enbid_density(phase_space, masses, neighbours)
    widths_3d = np.cbrt(masses[:, None] / (4 / 3 * np.pi * np.stack([rho_pos, rho_vel], axis=1)))
    ellipsoid_volume = np.pi**3 / 6 * np.prod(widths_3d**3, axis=1)
    factor = ((masses / rho_6d) / ellipsoid_volume) ** (1 / 6)
    return factor[:, None] * widths_3d
