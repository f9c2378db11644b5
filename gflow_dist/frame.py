"""The Solar frame: where the Sun sits in the simulation and how it moves (paper §2.1).

The simulation frame is Galactocentric Cartesian with the Sun on the −x axis, z out of
the disk and the local disk motion along +y — astropy's
:class:`~astropy.coordinates.Galactocentric` frame, whose x axis points from the Sun to
the Galactic centre, y toward Galactic longitude l = 90° and z toward the north Galactic
pole. Astropy places the Sun (the Solar-system barycentre; ICRS is barycentric) at
(−√(d² − z⊙²), 0, z⊙) for ``galcen_distance`` d and height ``z_sun`` z⊙, so a configured
Sun at (x⊙, 0, z⊙) with x⊙ < 0 is reproduced exactly by d = √(x⊙² + z⊙²) and
``z_sun`` = z⊙. A Sun with y ≠ 0 or x ≥ 0 cannot be represented and is refused here,
once: :class:`~gflow_dist.config.GalaxyConfig` builds its :class:`SolarFrame` while the
config is validated (``config.galaxy.frame``), and the selection, the catalog and the
provenance use that object.

Every frame parameter is set explicitly, so changes of astropy's defaults
(``galactocentric_frame_defaults``) cannot alter results: ``galcen_coord`` is the ICRS
position of the Galactic centre that every astropy parameter set uses, (α, δ) =
(266.4051°, −28.936175°) (astropy cites Reid & Brunthaler 2004; it lies at Galactic
(l, b) ≈ (0.00005°, −0.00008°)); ``galcen_distance`` and ``z_sun`` as above;
``roll`` = 0; ``galcen_v_sun`` = the configured Solar velocity [km/s]. Astropy is
imported on first use, so that loading a config stays light.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from gflow_dist.errors import ConfigError

if TYPE_CHECKING:
    from astropy.coordinates import Galactocentric

GALCEN_ICRS_DEG = (266.4051, -28.936175)
"""ICRS (α, δ) [deg] of the Galactic centre in astropy's Galactocentric frame (all versions)."""

OFF_AXIS = ("must be (x, 0, z) with x < 0: the frame puts the Sun on the -x axis; "
            "rotate the particles about z so that the Sun lies at y = 0, x < 0")
"""Why a Sun off the −x axis is refused, and the fix."""


class FrameError(ConfigError):
    """A Sun position [kpc] or velocity [km/s] that the frame cannot hold.

    Attributes:
        key: the ``galaxy`` config key at fault: ``sun_position_kpc`` or ``sun_velocity_kms``.
        problem: what is wrong and how to fix it, without the key.
        value: the value as given.
    """

    def __init__(self, key: str, problem: str, value: Any) -> None:
        super().__init__(f"galaxy.{key} {problem}, got {value!r}")
        self.key, self.problem, self.value = key, problem, value


def _vector3(value: Any, key: str) -> tuple[float, float, float]:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise FrameError(key, "must be 3 finite numbers", value)
    return tuple(array.tolist())


@dataclass(frozen=True)
class SolarFrame:
    """The Sun's Galactocentric position [kpc] and velocity [km/s] (paper §2.1).

    Attributes:
        sun_position_kpc: (x⊙, 0, z⊙) [kpc] with x⊙ < 0: the Sun on the −x axis.
        sun_velocity_kms: (U, V, W) [km/s]; +y is the disk motion.

    Raises:
        FrameError: either is not 3 finite numbers, or the Sun is off the −x axis.
    """

    sun_position_kpc: tuple[float, float, float] = (-8.0, 0.0, 0.02)
    sun_velocity_kms: tuple[float, float, float] = (11.1, 232.24, 7.25)

    def __post_init__(self) -> None:
        x, y, z = _vector3(self.sun_position_kpc, "sun_position_kpc")
        if y != 0.0 or not x < 0.0:
            raise FrameError("sun_position_kpc", OFF_AXIS, self.sun_position_kpc)
        object.__setattr__(self, "sun_position_kpc", (x, y, z))
        object.__setattr__(self, "sun_velocity_kms",
                           _vector3(self.sun_velocity_kms, "sun_velocity_kms"))

    @property
    def galcen_distance_kpc(self) -> float:
        """Sun–Galactic-centre distance d = √(x⊙² + z⊙²) [kpc]."""
        return math.hypot(self.sun_position_kpc[0], self.sun_position_kpc[2])

    def astropy_frame(self) -> Galactocentric:
        """Astropy's Galactocentric frame with every parameter fixed explicitly."""
        import astropy.units as u
        from astropy.coordinates import ICRS, CartesianDifferential, Galactocentric

        return Galactocentric(
            galcen_coord=ICRS(ra=GALCEN_ICRS_DEG[0] * u.deg, dec=GALCEN_ICRS_DEG[1] * u.deg),
            galcen_distance=self.galcen_distance_kpc * u.kpc,
            z_sun=self.sun_position_kpc[2] * u.kpc,
            roll=0.0 * u.deg,
            galcen_v_sun=CartesianDifferential(np.array(self.sun_velocity_kms) * u.km / u.s),
        )

    def to_metadata(self) -> dict[str, str]:
        """Every frame parameter as strings, for the metadata of every output.

        ``sun_position_kpc`` [kpc], ``sun_velocity_kms`` and ``galcen_v_sun_kms`` [km/s]
        are JSON lists; the numbers are Python's shortest round-trip ``repr``.
        """
        import astropy

        return {
            "frame": "astropy.coordinates.Galactocentric",
            "astropy_version": astropy.__version__,
            "sun_position_kpc": json.dumps(list(self.sun_position_kpc)),
            "sun_velocity_kms": json.dumps(list(self.sun_velocity_kms)),
            "galcen_ra_deg": repr(GALCEN_ICRS_DEG[0]),
            "galcen_dec_deg": repr(GALCEN_ICRS_DEG[1]),
            "galcen_distance_kpc": repr(self.galcen_distance_kpc),
            "z_sun_kpc": repr(self.sun_position_kpc[2]),
            "roll_deg": "0.0",
            "galcen_v_sun_kms": json.dumps(list(self.sun_velocity_kms)),
        }

    @cached_property
    def icrs_to_galactocentric(self) -> np.ndarray:
        """3×3 rotation A of astropy's transform: x_gc = A·x_icrs + x⊙, u_gc = A·u_icrs + v⊙."""
        import astropy.units as u
        from astropy.coordinates import ICRS, CartesianRepresentation

        basis = CartesianRepresentation(np.eye(3) * u.kpc)
        moved = ICRS(basis).transform_to(self.astropy_frame()).cartesian.xyz.to_value(u.kpc)
        return moved - np.array(self.sun_position_kpc)[:, None]

    @cached_property
    def icrs_to_galactic(self) -> np.ndarray:
        """3×3 rotation from ICRS to Galactic Cartesian axes, read off astropy."""
        import astropy.units as u
        from astropy.coordinates import ICRS, CartesianRepresentation, Galactic

        basis = ICRS(CartesianRepresentation(np.eye(3) * u.one))
        return basis.transform_to(Galactic()).cartesian.xyz.to_value(u.one)
