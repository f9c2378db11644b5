"""Select the star particles around the Sun and split them into training and test halves.

Positions are Galactocentric kpc (Sun on the −x axis, paper §2.1), velocities km/s,
masses M☉. The Sun comes as the validated :class:`~gflow_dist.frame.SolarFrame`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import InputError
from gflow_dist.frame import SolarFrame


def select_sphere(
    particles: ParticleSet,
    frame: SolarFrame,
    r_max_kpc: float,
    source: str = "",
) -> ParticleSet:
    """The particles strictly within ``r_max_kpc`` [kpc] of the Sun of ``frame`` (x, y, z [kpc]).

    ``source`` names the particles in errors (default: their provenance ``source``).

    Raises:
        InputError: ``r_max_kpc`` is not a positive finite number, or no particle lies
            inside the sphere.
    """
    if not np.isfinite(r_max_kpc) or r_max_kpc <= 0:
        raise InputError(f"galaxy.r_max_kpc must be a positive, finite number of kpc, "
                         f"got {r_max_kpc}")
    sun = np.asarray(frame.sun_position_kpc)
    distance = np.linalg.norm(particles.positions - sun, axis=1)
    inside = distance < r_max_kpc
    if not inside.any():
        name = source or particles.provenance.get("source", "the particle set")
        nearest = (
            f"the nearest particle is {distance.min():.4g} kpc away"
            if len(particles)
            else "the particle set is empty"
        )
        raise InputError(
            f"{name}: no particle within r_max = {r_max_kpc:g} kpc of the Sun at "
            f"{_fmt(sun)} kpc; {nearest}. Check that the particles are galaxy-centred and "
            "rotated (disk in xy, Sun on -x, +y rotation), in kpc, and the Sun position"
        )
    return particles.subset(inside)


@dataclass(frozen=True)
class SelectionSummary:
    """Facts about a selection around the Sun.

    Attributes:
        count: number of particles.
        max_speed_kms: largest Galactocentric speed |v| [km/s] (NaN when empty).
        total_mass_msun: summed mass [M☉], or None when the particles have no masses.
        sun_position_kpc: the Sun's (x, y, z) [kpc].
        r_max_kpc: the selection radius [kpc].
    """

    count: int
    max_speed_kms: float
    total_mass_msun: float | None
    sun_position_kpc: tuple[float, float, float]
    r_max_kpc: float

    def __str__(self) -> str:
        mass = (
            "no masses"
            if self.total_mass_msun is None
            else f"total mass {self.total_mass_msun:.4g} Msun"
        )
        return (
            f"{self.count:,} star particles within {self.r_max_kpc:g} kpc of the Sun at "
            f"{_fmt(np.asarray(self.sun_position_kpc))} kpc; max speed "
            f"{self.max_speed_kms:.1f} km/s; {mass}"
        )


def summarize(
    particles: ParticleSet, frame: SolarFrame, r_max_kpc: float
) -> SelectionSummary:
    """Summarize ``particles``, a selection around the Sun of ``frame`` within ``r_max_kpc`` [kpc].

    The particles are not reselected: pass the output of :func:`select_sphere`.
    """
    speeds = np.linalg.norm(particles.velocities, axis=1)
    return SelectionSummary(
        count=len(particles),
        max_speed_kms=float(speeds.max()) if len(particles) else float("nan"),
        total_mass_msun=None if particles.mass is None else float(particles.mass.sum()),
        sun_position_kpc=frame.sun_position_kpc,
        r_max_kpc=float(r_max_kpc),
    )


def split_train_test(
    particles: ParticleSet, seed: int, test_fraction: float = 0.5
) -> tuple[ParticleSet, ParticleSet]:
    """Split into (train, test) at random, 1:1 by default (paper §5.3).

    The test part gets floor(n · test_fraction) particles drawn by a
    ``numpy.random.default_rng(seed)`` permutation; the train part gets the rest. Both keep
    their particles in input order, with masses and provenance; together they are exactly
    the input.

    Raises:
        InputError: ``test_fraction`` is not strictly between 0 and 1, or either part
            would be empty.
    """
    if not 0 < test_fraction < 1:
        raise InputError(f"split.test_fraction must be strictly between 0 and 1, "
                         f"got {test_fraction}")
    n = len(particles)
    n_test = int(np.floor(n * test_fraction))
    if n_test == 0 or n_test == n:
        raise InputError(
            f"{particles.provenance.get('source', 'the particle set')}: cannot split {n} "
            f"particle(s) with split.test_fraction = {test_fraction:g}: one part would be empty; "
            "select more particles (larger r_max)"
        )
    order = np.random.default_rng(seed).permutation(n)
    return particles.subset(np.sort(order[n_test:])), particles.subset(np.sort(order[:n_test]))


def _fmt(vector: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in vector) + ")"
