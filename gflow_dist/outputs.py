"""What every folder gflow-dist publishes shares: units, provenance key, manifest and swap.

A published folder (the particles ``DIR/particles``, a sample ``DIR/samples/<name>``, a
catalog ``DIR/catalog/<name>`` or its ``stars.zarr``, figures) is written whole into a
hidden staging folder next to it, ``.<name>.staging``, and swapped into place by
:func:`publish_folder`, so a reader sees the old content or the new one, never a
half-written mix; single files are replaced whole (:func:`write_text_atomically`). Its
``_manifest.json`` records the request that produced it; a rerun with the same request
finds it and does nothing.

Every Parquet column carries its unit in the field metadata under :data:`UNIT_KEY`
(astropy's canonical string, :data:`UNITS`) and catalog columns their IVOA UCD
(:data:`UCDS`), and the run's provenance is JSON under the
schema metadata key :data:`METADATA_KEY`. Versioned releases of whole runs are a
different thing: :mod:`gflow_dist.release`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

MANIFEST_FILE = "_manifest.json"
METADATA_KEY = b"gflow_dist"
UNIT_KEY = b"unit"
UCD_KEY = b"ucd"

UNITS: dict[str, str] = {
    "star_id": "", "_healpix_29": "",
    "x": "kpc", "y": "kpc", "z": "kpc",
    "vx": "km / s", "vy": "km / s", "vz": "km / s",
    "mass": "solMass",
    "ra": "deg", "dec": "deg", "distance": "kpc", "parallax": "mas",
    "pmra": "mas / yr", "pmdec": "mas / yr", "radial_velocity": "km / s",
    "l": "deg", "b": "deg",
    "age": "Gyr", "feh": "dex", "alpha_fe": "dex", "mass_initial": "solMass",
}  # fmt: skip
"""Unit of every column gflow-dist writes, as ``astropy.units.Unit(...).to_string()``
gives it ('' for dimensionless), so ``astropy.units.Unit(UNITS[name])`` reads it back."""

UCDS: dict[str, str] = {
    "star_id": "meta.id;meta.main", "_healpix_29": "pos.healpix",
    "x": "pos.cartesian.x", "y": "pos.cartesian.y", "z": "pos.cartesian.z",
    "vx": "phys.veloc;pos.cartesian.x", "vy": "phys.veloc;pos.cartesian.y",
    "vz": "phys.veloc;pos.cartesian.z",
    "mass": "phys.mass",
    "ra": "pos.eq.ra;meta.main", "dec": "pos.eq.dec;meta.main",
    "distance": "pos.distance;pos.heliocentric", "parallax": "pos.parallax",
    "pmra": "pos.pm;pos.eq.ra", "pmdec": "pos.pm;pos.eq.dec",
    "radial_velocity": "spect.dopplerVeloc.opt",
    "l": "pos.galactic.lon", "b": "pos.galactic.lat",
    "age": "time.age", "feh": "phys.abund.Fe", "alpha_fe": "phys.abund.X",
    "mass_initial": "phys.mass",
}  # fmt: skip
"""IVOA UCD (UCD1+ controlled vocabulary) of every column in :data:`UNITS`: x, y, z and
vx, vy, vz are Galactocentric Cartesian, distance, ra, dec, parallax, pm and
radial_velocity as seen from the Sun. Catalog partitions carry them in the field metadata
(key :data:`UCD_KEY`) and in their VOParquet and astropy metadata."""


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of a published folder, or None when there is none."""
    path = Path(directory) / MANIFEST_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest`` as the ``_manifest.json`` of the (staging) folder ``directory``."""
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def staging_folder(directory: Path) -> Path:
    """The hidden folder next to ``directory`` in which its new content is written."""
    return directory.with_name(f".{directory.name}.staging")


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a hidden file renamed over it: a process killed
    while writing leaves the old file (or none), never a truncated one."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def remove_folder(directory: Path) -> None:
    """Remove ``directory`` so that it is gone at once: renamed to a hidden name, then
    deleted. A process killed while deleting leaves the hidden folder (removed by the
    next call), never a thinned ``directory`` that a rerun could mistake for its own."""
    removed = directory.with_name(f".{directory.name}.removed")
    shutil.rmtree(removed, ignore_errors=True)
    if directory.exists():
        directory.rename(removed)
    shutil.rmtree(removed, ignore_errors=True)


def publish_folder(staging: Path, directory: Path) -> None:
    """Swap the finished ``staging`` folder into ``directory``; old content goes afterwards.

    A process killed between the two renames leaves ``directory`` absent for the rerun to
    rebuild, and the old and new content in hidden folders beside it.
    """
    retired = directory.with_name(f".{directory.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    if directory.exists():
        directory.rename(retired)
    staging.rename(directory)
    shutil.rmtree(retired, ignore_errors=True)
