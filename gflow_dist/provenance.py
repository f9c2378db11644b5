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
    """Flat string metadata for Parquet/Zarr/JSON outputs: config, hash, seed, versions
    and every parameter of the Solar frame (``config.galaxy.frame.to_metadata()``: the
    Sun's position [kpc] and velocity [km/s] as JSON lists, paper §2.1)."""
    return {
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "config_sha256": config.hash(),
        "seed": str(config.seed),
        "r_max_kpc": str(config.galaxy.r_max_kpc),
        "versions": json.dumps(versions(), sort_keys=True),
    } | config.galaxy.frame.to_metadata()
