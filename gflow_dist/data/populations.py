"""Stellar populations of star particles: ages and abundances from simulation fields.

Arepo/Auriga snapshots store, per star particle (Vogelsberger et al. 2013, MNRAS 436,
3031; Grand et al. 2017, MNRAS 467, 179):

- ``GFM_StellarFormationTime``: the scale factor a at birth (≤ 0 marks wind cells);
- ``GFM_Metals``: mass fractions of H, He, C, N, O, Ne, Mg, Si, Fe, in that order
  (:data:`ARRAY_ELEMENTS`), and ``GFM_Metallicity``: the total metal mass fraction Z;
- ``GFM_InitialMass``: the particle's mass at birth, in the units of ``Masses``.

Ages come from the snapshot's own cosmology (Header ``Omega0``, ``OmegaLambda``,
``HubbleParam``, ``Time``) through astropy: age = t(a_snapshot) − t(a_birth) [Gyr].
Abundances are relative to the Sun's photosphere of Asplund, Grevesse, Sauval & Scott
(2009, ARA&A 47, 481; Table 1): [X/Y] = log10(X_X/X_Y) − log10(X_X/X_Y)☉ for mass
fractions X, with the solar ratio n_X/n_Y = 10^(log ε_X − log ε_Y) times the ratio of
the atoms' masses (IUPAC 2013 standard atomic weights). [α/Fe] takes O, Mg and Si as the
α elements (their summed mass fractions). Without ``GFM_Metals``, [Fe/H] is the scaled-solar
log10(Z/Z☉) with Z☉ = 0.0134 (Asplund et al. 2009, §3.12), and [α/Fe] is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy import units
from astropy.cosmology import LambdaCDM

from gflow_dist.errors import InputError

ARRAY_ELEMENTS = ("H", "He", "C", "N", "O", "Ne", "Mg", "Si", "Fe")
"""Column order of Arepo's ``GFM_Metals`` (Illustris, Auriga and TNG snapshots)."""

SOLAR_LOG_EPSILON = {"H": 12.0, "O": 8.69, "Mg": 7.60, "Si": 7.51, "Fe": 7.50}
"""Solar photospheric abundances log ε_X = log10(n_X/n_H) + 12 (Asplund et al. 2009)."""

ATOMIC_MASS = {"H": 1.008, "O": 15.999, "Mg": 24.305, "Si": 28.085, "Fe": 55.845}
"""Standard atomic weights [u] (IUPAC 2013, abridged)."""

SOLAR_METALLICITY = 0.0134
"""Z☉, the Sun's present photospheric metal mass fraction (Asplund et al. 2009)."""

ALPHA_ELEMENTS = ("O", "Mg", "Si")

FEH_RANGE = (-5.0, 1.5)
"""Accepted [Fe/H] [dex]: from the most metal-poor stars known to twice the most
metal-rich. A simulated particle with less iron (none at all, for the first stars) is
floored at −5 by the Arepo reader, which counts them in the provenance."""

ALPHA_FE_RANGE = (-1.0, 1.5)
"""Accepted [α/Fe] [dex]."""

UNIVERSE_AGE_GYR = 13.8
"""Upper bound on ages [Gyr] where a source gives no cosmology (Planck 2018: 13.787 Gyr)."""


def solar_log_mass_ratio(numerator: tuple[str, ...], denominator: str) -> float:
    """log10 of the Sun's mass-fraction ratio Σ X_numerator / X_denominator."""
    def mass(element: str) -> float:
        return 10.0 ** SOLAR_LOG_EPSILON[element] * ATOMIC_MASS[element]
    return float(np.log10(sum(mass(e) for e in numerator) / mass(denominator)))


def bracket(metals: np.ndarray, numerator: tuple[str, ...], denominator: str) -> np.ndarray:
    """[numerator/denominator] [dex] from ``GFM_Metals`` rows (n, 9) of mass fractions;
    −inf where the numerator's mass fraction is zero."""
    columns = [ARRAY_ELEMENTS.index(e) for e in numerator]
    top = metals[:, columns].sum(axis=1)
    bottom = metals[:, ARRAY_ELEMENTS.index(denominator)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(top / bottom) - solar_log_mass_ratio(numerator, denominator)


def snapshot_cosmology(header: dict[str, float]) -> LambdaCDM:
    """The ΛCDM of a snapshot's Header (no radiation, as Arepo's integration has none)."""
    return LambdaCDM(H0=100.0 * header["HubbleParam"], Om0=header["Omega0"],
                     Ode0=header["OmegaLambda"])


def ages_gyr(birth_scale_factor: np.ndarray, header: dict[str, float]) -> tuple[np.ndarray, float]:
    """Ages [Gyr] at the snapshot of stars born at scale factors ``birth_scale_factor``,
    and the universe's age at the snapshot [Gyr]."""
    cosmology = snapshot_cosmology(header)
    now = float(cosmology.age(1.0 / header["Time"] - 1.0).to_value(units.Gyr))
    born = cosmology.age(1.0 / birth_scale_factor - 1.0).to_value(units.Gyr)
    return now - born, now


def arepo_populations(path: Path, formation: np.ndarray | None, metals: np.ndarray | None,
                      metallicity: np.ndarray | None, initial_mass_msun: np.ndarray | None,
                      header: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Population columns of born star particles from their Arepo fields (module docstring).

    Args:
        path: the snapshot, for error messages.
        formation: ``GFM_StellarFormationTime`` (scale factors > 0), or None.
        metals: ``GFM_Metals`` (n, 9) mass fractions, or None.
        metallicity: ``GFM_Metallicity`` Z, or None.
        initial_mass_msun: ``GFM_InitialMass`` in M☉, or None.
        header: the snapshot's Header attributes.

    Returns:
        The columns (none unless both an age and a metallicity can be derived) and
        provenance facts: the cosmology, the solar abundances, floored [Fe/H] counts.
    """
    if formation is None or (metals is None and metallicity is None):
        return {}, {}
    missing = [k for k in ("Omega0", "OmegaLambda", "HubbleParam", "Time") if k not in header]
    if missing:
        raise InputError(f"{path}: Header lacks {', '.join(missing)}, needed to turn "
                         "GFM_StellarFormationTime into ages; add them to the snapshot")
    age, universe_age = ages_gyr(formation, header)
    if metals is not None:
        feh = bracket(metals, ("Fe",), "H")
        columns = {"age": age, "alpha_fe": bracket(metals, ALPHA_ELEMENTS, "Fe")}
        source = "GFM_Metals (Fe/H mass ratio)"
    else:
        with np.errstate(divide="ignore"):
            feh = np.log10(metallicity / SOLAR_METALLICITY)
        columns = {"age": age}
        source = f"GFM_Metallicity, scaled-solar log10(Z/{SOLAR_METALLICITY})"
    floored = feh < FEH_RANGE[0]
    columns["feh"] = np.where(floored, FEH_RANGE[0], feh)
    if "alpha_fe" in columns:  # undefined without iron: solar, as for the floored stars
        columns["alpha_fe"] = np.where(floored, 0.0, columns["alpha_fe"])
    if initial_mass_msun is not None:
        columns["mass_initial"] = initial_mass_msun
    facts = {
        "universe_age_gyr": repr(universe_age),
        "cosmology": (f"LambdaCDM H0={100 * header['HubbleParam']:g} Om0={header['Omega0']:g} "
                      f"Ode0={header['OmegaLambda']:g}"),
        "feh_source": source,
        "solar_abundances": "Asplund et al. 2009 (ARA&A 47, 481)",
        "feh_floored_to_-5": str(int(floored.sum())),
    }
    return columns, facts
