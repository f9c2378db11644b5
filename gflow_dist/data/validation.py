"""Checks run on every particle load; failures name the source, the column or rows, the fix.

Rows are 0-based particle indices in the order the source stores them.
"""

from __future__ import annotations

import numpy as np

from gflow_dist.data.particles import MASS_COLUMN, PHASE_SPACE_COLUMNS, ParticleSet
from gflow_dist.data.populations import (
    ALPHA_FE_RANGE,
    FEH_RANGE,
    SOLAR_METALLICITY,
    UNIVERSE_AGE_GYR,
)
from gflow_dist.errors import InputError

SHOWN_ROWS = 5
"""How many offending row indices an error message lists."""

MPC_MEDIAN_RADIUS_KPC = 0.1
"""Median distance from the origin [kpc] below which positions are taken to be in Mpc.

A galaxy-centred Milky Way analogue has a median star-particle radius of a few kpc (the
disk scale length is ~2.5 kpc, the stellar disk spans ~30 kpc). The same particles read
in Mpc have a median radius of ~0.001-0.03, while no Milky Way-like galaxy concentrates
half its stars within 100 pc of the centre.
"""

SI_OR_CGS_MEDIAN_RADIUS = 1e12
"""Median distance from the origin above which positions are taken to be in m or cm.

1 kpc is 3.1e19 m or 3.1e21 cm, so a galaxy of 1-30 kpc has a median radius of 1e19-1e23
in those units; 1e12 kpc is far beyond any simulation box (~1e5 kpc), and 1e12 m is
below a parsec, so the gap between the two readings is wide on both sides.
"""

NOT_KMS_MEDIAN_SPEED = 1e4
"""Median speed above which velocities are taken to be in m/s or cm/s, not km/s.

Star particles move at 10-600 km/s (median ~200 km/s); the same speeds are 1e4-6e5 m/s
and 1e6-6e7 cm/s. No galaxy has a median stellar speed of 1e4 km/s (3% of light speed).
"""

DEFAULT_MAX_SPEED_KMS = 3000.0
"""Default ``galaxy.max_speed_kms``: the fastest Galactocentric speed |v| [km/s] accepted.

1% of the speed of light and five times the Milky Way's escape speed near the Sun
(~550 km/s); the fastest known hypervelocity stars move at ~1,700 km/s. A faster particle
is a corrupt value or a unit slip, and its stars would be drawn faster still.
"""

MAX_RADIUS_KPC = 1e6
"""Largest distance from the galaxy centre [kpc] accepted for a particle (1 Gpc).

Larger than any simulation box a galaxy is taken from (TNG300: ~3e5 kpc); a particle
beyond it is a corrupt value or a unit slip.
"""

MASS_RANGE_MSUN = (1e-3, 1e10)
"""Accepted star particle masses [M☉], inclusive.

Star-by-star simulations resolve single stars down to ~0.08 M☉ (brown dwarfs to ~0.01);
the coarsest cosmological runs have star particles of ~1e7-1e8 M☉. Outside the range a
mass is a unit slip (g, code units, 1e10 M☉/h) or a corrupt value.
"""

REFERENCE_RADIUS_KPC = 8.0
"""Typical median radius [kpc]: the suspected length unit is the one closest to it (log scale)."""

REFERENCE_SPEED_KMS = 200.0
"""Typical median speed [km/s]: the suspected velocity unit is the one closest to it (log scale)."""

_LENGTH_UNITS_IN_KPC = {"m": 1.0 / 3.0856775814913673e19, "cm": 1.0 / 3.0856775814913673e21}
_SPEED_UNITS_IN_KMS = {"m/s": 1e-3, "cm/s": 1e-5}


def validate_particles(particles: ParticleSet, source: str,
                       max_speed_kms: float = DEFAULT_MAX_SPEED_KMS) -> None:
    """Raise InputError if ``particles`` (read from ``source``) hold unusable values.

    Checks, in order: NaN/inf in any column, non-positive masses, positions or velocities
    that look like the wrong unit (kpc and km/s expected), then each particle's bounds:
    distance from the centre up to :data:`MAX_RADIUS_KPC`, speed up to ``max_speed_kms``
    [km/s] (``galaxy.max_speed_kms``), mass within :data:`MASS_RANGE_MSUN`; duplicate
    6-D rows; and the stellar populations (:func:`check_populations`).
    """
    for j, name in enumerate(PHASE_SPACE_COLUMNS):
        _check_finite(particles.phase_space[:, j], name, source)
    if particles.mass is not None:
        _check_finite(particles.mass, MASS_COLUMN, source)
        bad = np.flatnonzero(particles.mass <= 0)
        if bad.size:
            raise InputError(
                f"{source}: column '{MASS_COLUMN}' has {bad.size} non-positive values "
                f"at rows {_rows(bad)}; star particle masses must be > 0 Msun: fix the "
                "mass field upstream or drop those particles"
            )
    if len(particles):
        _check_units(particles, source)
        _check_bounds(particles, source, max_speed_kms)
        _check_duplicates(particles.phase_space, source)
    check_populations(particles, source)


def check_populations(particles: ParticleSet, source: str) -> None:
    """Raise InputError unless the population columns are complete and physical.

    Age and feh come together or not at all; every row has every population value (a
    missing one is NaN); ages are in Gyr, 0 < age ≤ the universe's age at the snapshot
    (provenance ``universe_age_gyr``, else :data:`UNIVERSE_AGE_GYR`); [Fe/H] is a
    logarithmic abundance within :data:`FEH_RANGE`, not a metal mass fraction Z; [α/Fe]
    within :data:`ALPHA_FE_RANGE`; initial masses within :data:`MASS_RANGE_MSUN`.
    """
    populations = particles.populations
    if not populations:
        return
    lacking = [name for name in ("age", "feh") if name not in populations]
    if lacking:
        has = ", ".join(f"'{name}'" for name in populations)
        raise InputError(f"{source}: has {has} but no '{lacking[0]}' column; stellar "
                         "populations need both age [Gyr] and feh [dex]: add the missing "
                         "column or drop the population columns")
    for name, values in populations.items():
        missing = np.flatnonzero(np.isnan(values))
        if missing.size:
            raise InputError(
                f"{source}: column '{name}' has no value (NaN or empty) at {missing.size} of "
                f"{values.size} rows {_rows(missing)}; populations must be given for every "
                "particle or not at all: fill them upstream or drop the column")
        _check_finite(values, name, source)
    universe = float(particles.provenance.get("universe_age_gyr", UNIVERSE_AGE_GYR))
    age = populations["age"]
    median = float(np.median(age))
    if median > universe:
        unit, factor = ("yr", "1e9") if median > 1e6 else ("Myr", "1e3")
        raise InputError(f"{source}: column 'age' has a median of {median:.4g}, older than "
                         f"the universe ({universe:.2f} Gyr); it looks like it is in {unit}: "
                         f"give ages in Gyr (divide by {factor})")
    _check_range(age, "age", source, (0.0, universe), "Gyr", open_low=True)
    feh = populations["feh"]
    if feh.min() >= 0.0 and feh.max() <= 0.1 and np.median(feh) < 0.05:
        raise InputError(
            f"{source}: column 'feh' holds values in [0, 0.1] (median {np.median(feh):.4g}), "
            "like a metal mass fraction Z rather than [Fe/H] in dex; give "
            f"[Fe/H] = log10(Z / {SOLAR_METALLICITY}) (scaled-solar, Asplund et al. 2009)")
    _check_range(feh, "feh", source, FEH_RANGE, "dex")
    if "alpha_fe" in populations:
        _check_range(populations["alpha_fe"], "alpha_fe", source, ALPHA_FE_RANGE, "dex")
    if "mass_initial" in populations:
        _check_range(populations["mass_initial"], "mass_initial", source, MASS_RANGE_MSUN,
                     "Msun")


def _check_range(values: np.ndarray, name: str, source: str, bounds: tuple[float, float],
                 unit: str, open_low: bool = False) -> None:
    low, high = bounds
    outside = (values <= low if open_low else values < low) | (values > high)
    bad = np.flatnonzero(outside)
    if bad.size:
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise InputError(
            f"{source}: column '{name}' has {bad.size} values outside {interval} {unit} at "
            f"rows {_rows(bad)} (first: {values[bad[0]]:.6g}); fix them upstream or drop "
            "those particles")


def _rows(index: np.ndarray) -> str:
    shown = ", ".join(str(i) for i in index[:SHOWN_ROWS])
    return f"[{shown}{', ...' if index.size > SHOWN_ROWS else ''}]"


def _check_finite(values: np.ndarray, name: str, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        n_nan = int(np.isnan(values[bad]).sum())
        raise InputError(
            f"{source}: column '{name}' has {bad.size} non-finite values "
            f"({n_nan} NaN, {bad.size - n_nan} inf) at rows {_rows(bad)}; "
            "fix or drop these particles upstream"
        )


def _closest(median: float, units: dict[str, float], reference: float) -> tuple[str, float]:
    """The unit (and its factor to kpc or km/s) that puts ``median`` closest to ``reference``."""
    unit = min(units, key=lambda u: abs(np.log10(median * units[u] / reference)))
    return unit, units[unit]


def _check_units(particles: ParticleSet, source: str) -> None:
    radius = float(np.median(np.linalg.norm(particles.positions, axis=1)))
    if radius < MPC_MEDIAN_RADIUS_KPC:
        raise InputError(
            f"{source}: columns 'x', 'y', 'z' look like Mpc, not kpc: the median distance "
            f"from the galaxy centre is {radius:.3g} (a galaxy in kpc has a few kpc); "
            "multiply positions by 1000 to convert to kpc (and check the galaxy is centred)"
        )
    if radius > SI_OR_CGS_MEDIAN_RADIUS:
        unit, factor = _closest(radius, _LENGTH_UNITS_IN_KPC, REFERENCE_RADIUS_KPC)
        raise InputError(
            f"{source}: columns 'x', 'y', 'z' look like {unit}, not kpc: the median distance "
            f"from the galaxy centre is {radius:.3g}; multiply positions by {factor:.10g} "
            "to convert to kpc"
        )
    speed = float(np.median(np.linalg.norm(particles.velocities, axis=1)))
    if speed > NOT_KMS_MEDIAN_SPEED:
        unit, factor = _closest(speed, _SPEED_UNITS_IN_KMS, REFERENCE_SPEED_KMS)
        raise InputError(
            f"{source}: columns 'vx', 'vy', 'vz' look like {unit}, not km/s: the median "
            f"speed is {speed:.3g}; multiply velocities by {factor:g} to convert to km/s"
        )


def _check_bounds(particles: ParticleSet, source: str, max_speed_kms: float) -> None:
    radius = np.linalg.norm(particles.positions, axis=1)
    bad = np.flatnonzero(radius > MAX_RADIUS_KPC)
    if bad.size:
        raise InputError(
            f"{source}: columns 'x', 'y', 'z': {bad.size} particle(s) lie farther than "
            f"{MAX_RADIUS_KPC:g} kpc from the galaxy centre (row {bad[0]}: "
            f"{radius[bad[0]]:.3g} kpc; rows {_rows(bad)}); fix those positions upstream or "
            "drop the particles"
        )
    speed = np.linalg.norm(particles.velocities, axis=1)
    bad = np.flatnonzero(speed > max_speed_kms)
    if bad.size:
        raise InputError(
            f"{source}: columns 'vx', 'vy', 'vz': {bad.size} particle(s) move faster than "
            f"galaxy.max_speed_kms = {max_speed_kms:g} km/s (row {bad[0]}: "
            f"{speed[bad[0]]:.3g} km/s; rows {_rows(bad)}); fix those velocities upstream, "
            "drop the particles, or raise galaxy.max_speed_kms if they are real"
        )
    if particles.mass is None:
        return
    low, high = MASS_RANGE_MSUN
    bad = np.flatnonzero((particles.mass < low) | (particles.mass > high))
    if bad.size:
        raise InputError(
            f"{source}: column '{MASS_COLUMN}': {bad.size} mass(es) outside the plausible "
            f"{low:g}-{high:g} Msun of a star particle (row {bad[0]}: "
            f"{particles.mass[bad[0]]:.3g}; rows {_rows(bad)}); check the mass unit (Msun "
            "expected) or fix those masses upstream"
        )


def _check_duplicates(phase_space: np.ndarray, source: str) -> None:
    _, first, inverse = np.unique(phase_space, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    repeated = np.ones(len(phase_space), dtype=bool)
    repeated[first] = False
    dup = np.flatnonzero(repeated)
    if dup.size:
        pairs = ", ".join(f"row {r} = row {first[inverse[r]]}" for r in dup[:SHOWN_ROWS])
        raise InputError(
            f"{source}: {dup.size} particle(s) repeat an earlier identical 6-D row "
            f"(x, y, z, vx, vy, vz) ({pairs}{', ...' if dup.size > SHOWN_ROWS else ''}); "
            "deduplicate the particles upstream (gflow-dist does not drop them silently)"
        )
