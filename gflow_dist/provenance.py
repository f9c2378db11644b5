"""What every output records so that a run can be reproduced from its config and seed."""

from __future__ import annotations

import json
import platform
from importlib import metadata

from gflow_dist.config import RunConfig

_PACKAGES = ("gflow-dist", "torch", "torchdyn", "numpy", "ray", "astropy", "pyarrow")


def versions() -> dict[str, str]:
    """Installed versions of Python and the packages that shape the results."""
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def run_metadata(config: RunConfig) -> dict[str, str]:
    """Flat string metadata for Parquet/Zarr/JSON outputs: config, hash, seed, frame, versions."""
    galaxy = config.galaxy
    return {
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "config_sha256": config.hash(),
        "seed": str(config.seed),
        "sun_position_kpc": json.dumps(list(galaxy.sun_position_kpc)),
        "sun_velocity_kms": json.dumps(list(galaxy.sun_velocity_kms)),
        "r_max_kpc": str(galaxy.r_max_kpc),
        "frame": "Galactocentric Cartesian; disk in xy, Sun on -x, disk motion +y",
        "versions": json.dumps(versions(), sort_keys=True),
    }
