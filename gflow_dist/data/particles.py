"""The star-particle set that flows between pipeline stages.

Conventions (paper §2.1): Galactocentric Cartesian coordinates with the disk in the
xy plane, the Sun on the −x axis, z out of the disk and the local disk motion along +y.
Positions are in kpc, velocities in km/s and masses in solar masses. Particles may carry
stellar populations (:data:`POPULATION_COLUMNS`): age [Gyr], [Fe/H] and [α/Fe] [dex], and
the initial mass [M☉].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

POSITION_COLUMNS = ("x", "y", "z")
VELOCITY_COLUMNS = ("vx", "vy", "vz")
PHASE_SPACE_COLUMNS = POSITION_COLUMNS + VELOCITY_COLUMNS
MASS_COLUMN = "mass"
POPULATION_COLUMNS = ("age", "feh", "alpha_fe", "mass_initial")
"""Optional per-particle population columns: age [Gyr], [Fe/H] [dex], [α/Fe] [dex] and the
initial (birth) mass [M☉]. A source gives age and feh together, or neither."""


@dataclass(frozen=True)
class ParticleSet:
    """Star particles in 6-D phase space.

    Attributes:
        phase_space: (n, 6) float64 array of x, y, z [kpc], vx, vy, vz [km/s].
        mass: (n,) float64 array of particle masses [M☉], or None when the source has none.
        provenance: free-form key/value facts about where the particles came from
            (source path, content hash, ...), carried into every output's metadata.
        populations: (n,) float64 arrays keyed by :data:`POPULATION_COLUMNS` names; empty
            when the source has no stellar populations.
    """

    phase_space: np.ndarray
    mass: np.ndarray | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    populations: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.phase_space.ndim != 2 or self.phase_space.shape[1] != 6:
            raise ValueError(
                f"phase_space must have shape (n, 6), got {self.phase_space.shape}"
            )
        if self.mass is not None and self.mass.shape != (len(self.phase_space),):
            raise ValueError(
                f"mass must have shape ({len(self.phase_space)},), got {self.mass.shape}"
            )
        for name, values in self.populations.items():
            if name not in POPULATION_COLUMNS or values.shape != (len(self.phase_space),):
                raise ValueError(f"population column {name!r} of shape {values.shape}: "
                                 f"expected one of {POPULATION_COLUMNS} of shape "
                                 f"({len(self.phase_space)},)")

    def __len__(self) -> int:
        return len(self.phase_space)

    @property
    def positions(self) -> np.ndarray:
        """(n, 3) positions [kpc]."""
        return self.phase_space[:, :3]

    @property
    def velocities(self) -> np.ndarray:
        """(n, 3) velocities [km/s]."""
        return self.phase_space[:, 3:]

    def subset(self, index: np.ndarray) -> ParticleSet:
        """The particles at ``index`` (a boolean mask or integer indices)."""
        mass = None if self.mass is None else self.mass[index]
        populations = {name: values[index] for name, values in self.populations.items()}
        return ParticleSet(self.phase_space[index], mass, dict(self.provenance), populations)
