"""Read star particles from simulation outputs into a validated ParticleSet.

The input must already be galaxy-centred and rotated into the package frame: the disk in
the xy plane, the Sun on the −x axis, the disk moving along +y at the Sun. Snapshots are
read as given; nothing is recentred. Output units are kpc, km/s and M☉.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gflow_dist.data.particles import (
    MASS_COLUMN,
    PHASE_SPACE_COLUMNS,
    POPULATION_COLUMNS,
    ParticleSet,
)
from gflow_dist.data.populations import arepo_populations
from gflow_dist.data.validation import DEFAULT_MAX_SPEED_KMS, validate_particles
from gflow_dist.errors import AccessError, InputError

FORMATS = ("auto", "parquet", "csv", "hdf5", "arepo", "npy", "npz", "tipsy")
EXTENSIONS = {
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".h5": "hdf5", ".hdf5": "hdf5",
    ".hdf": "hdf5", ".npy": "npy", ".npz": "npz", ".tipsy": "tipsy", ".std": "tipsy",
}  # fmt: skip
MAGIC_BYTES = {b"PAR1": "parquet", b"\x89HDF\r\n\x1a\n": "hdf5", b"\x93NUMPY": "npy",
               b"PK\x03\x04": "npz"}
"""The first bytes of each self-identifying format; a file is sniffed before it is read."""
_FAMILY = {"arepo": "hdf5"}  # formats stored in another's container
_COLUMNS = (*PHASE_SPACE_COLUMNS, MASS_COLUMN, *POPULATION_COLUMNS)
_CORRUPT = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pa.ArrowException,
            pd.errors.ParserError)  # fmt: skip

Columns = dict[str, np.ndarray]  # column name -> 1-D values in kpc, km/s, M☉


def read_particles(path: str | Path, fmt: str = "auto",
                   max_speed_kms: float = DEFAULT_MAX_SPEED_KMS) -> ParticleSet:
    """Read star particles (x, y, z [kpc], vx, vy, vz [km/s], optional mass [M☉]) from ``path``.

    Every format may also carry the stellar populations of
    :data:`~gflow_dist.data.particles.POPULATION_COLUMNS` (age [Gyr], feh and alpha_fe
    [dex], mass_initial [M☉]); Arepo snapshots derive them from their GFM fields
    (:mod:`gflow_dist.data.populations`).

    Formats (``fmt``; ``"auto"`` picks by extension, and HDF5 files holding ``PartType4``
    are read as Arepo snapshots):

    - ``parquet``, ``csv``: columns x, y, z, vx, vy, vz[, mass] (CSV with a header row).
    - ``hdf5``: datasets named x..vz[, mass] at the root or in one group, or a compound
      (table) dataset with those fields at the root or in one group.
    - ``arepo``: Arepo/Auriga snapshot, ``PartType4/Coordinates``, ``Velocities``, ``Masses``
      converted to physical kpc, km/s, M☉ from their unit attributes (see ``_read_arepo``).
    - ``npy``: a structured array with fields x..vz[, mass], or a plain float array of
      shape (n, 6) or (n, 7) with columns in the order x, y, z, vx, vy, vz[, mass].
    - ``npz``: named arrays x..vz[, mass].
    - ``tipsy`` (.tipsy, .std): via pynbody (``pip install gflow-dist[tipsy]``).

    The provenance holds the absolute ``source`` path, the ``format`` and the ``sha256`` of
    the file bytes. The particles are validated (:func:`validate_particles`, with
    ``max_speed_kms`` [km/s], the config's ``galaxy.max_speed_kms``) before return.

    Raises:
        InputError: the file is missing, empty, of another format than its name or ``fmt``
            says, truncated or corrupt, lacks a column, or holds invalid values; the message
            names the file, the column or rows, and the fix.
        AccessError: the file cannot be read (permissions).
    """
    path = check_particle_file(path)
    fmt = _format(path, fmt)
    try:
        if fmt == "hdf5":
            with h5py.File(path, "r") as f:
                fmt = "arepo" if "PartType4" in f else fmt
        columns, found, extra = _READERS[fmt](path)
    except InputError:
        raise
    except PermissionError as exc:
        raise AccessError(f"{path}: cannot read it ({exc.strerror}); fix its permissions or "
                          "copy it somewhere readable") from exc
    except _CORRUPT as exc:
        raise InputError(
            f"{path}: cannot read it as {fmt} ({type(exc).__name__}: {exc}); "
            "the file looks truncated or corrupt: re-copy it"
        ) from exc
    provenance = {"source": str(path), "format": fmt, "sha256": sha256_file(path), **extra}
    phase_space, mass, populations = _assemble(columns, found, path, fmt)
    particles = ParticleSet(phase_space, mass, provenance, populations)
    validate_particles(particles, str(path), max_speed_kms)
    return particles


def check_particle_file(path: str | Path) -> Path:
    """The absolute path of an existing, readable, non-empty particle file.

    Raises:
        InputError: there is no file at ``path``, or it is empty.
        AccessError: the file cannot be read.
    """
    path = Path(path).absolute()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"{path}: the particle file {what}; check the path (galaxy.source)")
    if not os.access(path, os.R_OK):
        raise AccessError(f"{path}: cannot read the particle file (permission denied); fix "
                          "its permissions or copy it somewhere readable")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); re-copy or re-export it")
    return path


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _format(path: Path, fmt: str) -> str:
    """The format to read ``path`` as: ``fmt``, or by extension for "auto"; its first bytes
    must not say otherwise."""
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format '{fmt}' (galaxy.format); use one of "
                         f"{', '.join(FORMATS)}")
    sniffed = _sniff(path)
    if fmt == "auto" and path.suffix.lower() not in EXTENSIONS:
        hint = f"it looks like {sniffed}: " if sniffed else ""
        raise InputError(
            f"{path}: cannot tell the format from the extension '{path.suffix}'; {hint}"
            f"set galaxy.format (one of {', '.join(FORMATS[1:])}) or rename it to one of "
            f"{', '.join(EXTENSIONS)}"
        )
    chosen = EXTENSIONS[path.suffix.lower()] if fmt == "auto" else fmt
    container = _FAMILY.get(chosen, chosen)
    if sniffed is None and container in MAGIC_BYTES.values():
        raise InputError(f"{path}: not a {container} file (it lacks the {container} signature "
                         "in its first bytes); if it is CSV text, rename it to .csv or set "
                         "galaxy.format: csv, else re-copy or re-export it")
    if sniffed is not None and sniffed != container:
        named = (f"galaxy.format is '{fmt}'" if fmt != "auto"
                 else f"its name says {chosen}")
        suffix = next(ext for ext, name in EXTENSIONS.items() if name == sniffed)
        raise InputError(f"{path}: this is a {sniffed} file, but {named}; rename it to "
                         f"{path.stem}{suffix} or set galaxy.format: {sniffed}")
    return chosen


def _sniff(path: Path) -> str | None:
    """The format the file's first bytes identify (see :data:`MAGIC_BYTES`), or None."""
    with path.open("rb") as stream:
        head = stream.read(8)
    found = next((name for magic, name in MAGIC_BYTES.items() if head.startswith(magic)), None)
    if found is None and h5py.is_hdf5(path):  # an HDF5 file behind a user block
        return "hdf5"
    return found


def _assemble(
    columns: Columns, found: list[str], path: Path, fmt: str
) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
    """Check the columns are present, numeric and of one length: (phase space, mass or
    None, population columns)."""
    missing = [c for c in PHASE_SPACE_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} ({fmt}); found: "
            f"{', '.join(map(str, found)) or 'none'}. Provide x, y, z [kpc], vx, vy, vz "
            "[km/s] and optionally mass [Msun]"
        )
    values = {name: _as_float(col, name, path) for name, col in columns.items()}
    lengths = {name: len(v) for name, v in values.items()}
    if len(set(lengths.values())) > 1:
        raise InputError(f"{path}: columns have different lengths {lengths}; re-export the file")
    if not next(iter(lengths.values())):
        raise InputError(f"{path}: the file contains no particles (0 rows); re-export it")
    populations = {c: values[c] for c in POPULATION_COLUMNS if c in values}
    return (np.column_stack([values[c] for c in PHASE_SPACE_COLUMNS]), values.get(MASS_COLUMN),
            populations)


def _as_float(column: np.ndarray, name: str, path: Path) -> np.ndarray:
    values = np.asarray(column)
    if values.ndim != 1:
        raise InputError(f"{path}: column '{name}' has shape {values.shape}, expected (n,)")
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        bad = pd.to_numeric(pd.Series(values), errors="coerce").isna() & pd.notna(values)
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{path}: column '{name}' is not numeric: row {row} holds {values[row]!r}; "
            "fix the value upstream"
        ) from None


def _pick(table: Callable[[str], np.ndarray], names: list[str]) -> tuple[Columns, list, dict]:
    return {c: table(c) for c in _COLUMNS if c in names}, names, {}


def _read_parquet(path: Path) -> tuple[Columns, list, dict]:
    names = pq.read_schema(path).names
    table = pq.read_table(path, columns=[c for c in _COLUMNS if c in names])
    return _pick(lambda c: table.column(c).to_numpy(), names)


def _read_csv(path: Path) -> tuple[Columns, list, dict]:
    frame = pd.read_csv(path, skipinitialspace=True, comment="#")
    if frame.isna().to_numpy().any():  # pandas fills the missing fields of short rows
        _check_row_lengths(path, len(frame.columns))
    return _pick(lambda c: frame[c].to_numpy(), [str(c) for c in frame.columns])


def _check_row_lengths(path: Path, n_fields: int) -> None:
    """Raise InputError at the first data row with fewer fields than the header."""
    with path.open(newline="") as stream:
        lines = (line for line in stream if line.strip() and not line.lstrip().startswith("#"))
        rows = csv.reader(lines, skipinitialspace=True)
        next(rows, None)  # the header
        for index, row in enumerate(rows):
            if len(row) < n_fields:
                raise InputError(
                    f"{path}: row {index} has {len(row)} of the header's {n_fields} fields; "
                    "the file looks truncated or cut short there: re-copy or re-export it"
                )


def _read_npy(path: Path) -> tuple[Columns, list, dict]:
    with path.open("rb") as stream:
        array = np.load(stream, allow_pickle=False)
    if array.dtype.names:
        return _pick(lambda c: array[c], list(array.dtype.names))
    if array.ndim != 2 or array.shape[1] not in (6, 7):
        raise InputError(
            f"{path}: expected a structured array with fields x..vz[, mass] or a plain array "
            f"of shape (n, 6) or (n, 7) ordered x, y, z, vx, vy, vz[, mass]; got {array.shape}"
        )
    names = list(_COLUMNS[: array.shape[1]])
    return _pick(lambda c: array[:, names.index(c)], names)


def _read_npz(path: Path) -> tuple[Columns, list, dict]:
    with path.open("rb") as stream, np.load(stream, allow_pickle=False) as archive:
        return _pick(lambda c: archive[c], list(archive.files))


def _read_hdf5(path: Path) -> tuple[Columns, list, dict]:
    with h5py.File(path, "r") as f:
        groups = [f, *(g for g in f.values() if isinstance(g, h5py.Group))]
        tables = (d for g in groups for d in g.values() if isinstance(d, h5py.Dataset))
        nodes = [*groups, *(d for d in tables if d.dtype.names)]
        full = [n for n in nodes if set(PHASE_SPACE_COLUMNS) <= set(_names(n))]
        if len(full) > 1 and full[0] is not f:
            raise InputError(
                f"{path}: several groups hold particle columns ({', '.join(n.name for n in full)})"
                "; keep one particle table per file"
            )
        node = full[0] if full else max(nodes, key=lambda n: len(set(_names(n)) & set(_COLUMNS)))
        data = node[()] if isinstance(node, h5py.Dataset) else node
        where = node.name.rstrip("/")
        columns, names, _ = _pick(lambda c: np.asarray(data[c]), _names(node))
        return columns, [f"{where}/{n}" for n in names], {}


def _names(node: h5py.Group | h5py.Dataset) -> list[str]:
    if isinstance(node, h5py.Dataset):
        return list(node.dtype.names)
    return [k for k, v in node.items() if isinstance(v, h5py.Dataset)]


def _read_tipsy(path: Path) -> tuple[Columns, list, dict]:
    try:
        import pynbody
    except ImportError:
        raise InputError(
            f"{path}: reading tipsy files needs the optional pynbody dependency; "
            "install it with: pip install 'gflow-dist[tipsy]'"
        ) from None
    try:
        stars = pynbody.load(str(path)).star
        pos = np.asarray(stars["pos"].in_units("kpc"), dtype=np.float64)
        vel = np.asarray(stars["vel"].in_units("km s**-1"), dtype=np.float64)
        mass = np.asarray(stars["mass"].in_units("Msol"), dtype=np.float64)
    except Exception as exc:  # pynbody raises many types on unreadable files or units
        raise InputError(f"{path}: pynbody cannot read the star particles ({exc})") from exc
    columns = dict(zip(PHASE_SPACE_COLUMNS, np.hstack([pos, vel]).T, strict=True))
    return {**columns, MASS_COLUMN: mass}, list(_COLUMNS), {}


def _read_arepo(path: Path) -> tuple[Columns, list, dict]:
    """Stars of an Arepo/Auriga snapshot (one file), in physical kpc, km/s, M☉.

    Each of ``PartType4/Coordinates``, ``Velocities``, ``Masses`` is converted with its
    ``to_cgs``, ``a_scaling`` and ``h_scaling`` attributes when present, else with Header
    or Parameters ``UnitLength_in_cm``, ``UnitVelocity_in_cm_per_s``, ``UnitMass_in_g``
    and the code scalings of cosmological runs (ckpc/h, sqrt(a) km/s, M/h):
    physical = value * to_cgs * a**a_scaling * h**h_scaling / (kpc | km/s | M☉ in cgs),
    with h = Header ``HubbleParam`` and a = Header ``Time`` (a = 1 when the run is not
    comoving: Parameters ``ComovingIntegrationOn`` = 0, or Header ``Redshift`` disagrees
    with ``Time``). Wind cells (``GFM_StellarFormationTime`` <= 0) are not stars and are
    dropped; their count goes into the provenance. Ages, [Fe/H], [α/Fe] and initial masses
    come from the GFM fields (:func:`~gflow_dist.data.populations.arepo_populations`),
    converted with ``Masses``' units for ``GFM_InitialMass``.
    """
    with h5py.File(path, "r") as f:
        if "PartType4" not in f:
            raise InputError(f"{path}: no PartType4 (stars) group; found: {', '.join(f)}")
        header, params = _attrs(f, "Header"), _attrs(f, "Parameters")
        if header.get("NumFilesPerSnapshot", 1) > 1:
            raise InputError(
                f"{path}: file of a {int(header['NumFilesPerSnapshot'])}-file snapshot; reading "
                "one would drop stars: merge the files' PartType4 into one file first"
            )
        stars = f["PartType4"]
        missing = [d for d in ("Coordinates", "Velocities") if d not in stars]
        if missing:
            raise InputError(
                f"{path}: PartType4 lacks dataset(s) {', '.join(missing)}; found: "
                f"{', '.join(stars) or 'none'}; re-export the snapshot with them"
            )
        born = np.ones(stars["Coordinates"].shape[0], dtype=bool)
        if "GFM_StellarFormationTime" in stars:
            born = stars["GFM_StellarFormationTime"][()] > 0
        data = {n: _physical(stars[n], header, params, path)[born] for n in _UNITS if n in stars}
        found = [f"/PartType4/{n}" for n in stars]

        def field(name: str) -> np.ndarray | None:
            return np.asarray(stars[name], dtype=np.float64)[born] if name in stars else None

        initial_mass = None
        if "GFM_InitialMass" in stars:
            initial_mass = _physical(stars["GFM_InitialMass"], header, params, path,
                                     like="Masses")[born]
        populations, facts = {}, {}
        if _comoving(header, params):
            populations, facts = arepo_populations(
                path, field("GFM_StellarFormationTime"), field("GFM_Metals"),
                field("GFM_Metallicity"), initial_mass, header)
        elif "GFM_StellarFormationTime" in stars:  # then a time in code units
            facts = {"populations": "not derived: not a comoving run, so "
                                    "GFM_StellarFormationTime is not a scale factor"}
    phase_space = np.hstack([data["Coordinates"], data["Velocities"]]).T
    columns = dict(zip(PHASE_SPACE_COLUMNS, phase_space, strict=True))
    if "Masses" in data:
        columns[MASS_COLUMN] = data["Masses"]
    return ({**columns, **populations}, found,
            {"wind_cells_dropped": str(int((~born).sum())), **facts})


_KPC_IN_CM, _KMS_IN_CM_PER_S, _MSUN_IN_G = 3.0856775814913673e21, 1e5, 1.988409870698051e33
_UNITS = {  # dataset: (unit in cgs, Header/Parameters unit key, code (a, h) exponents)
    "Coordinates": (_KPC_IN_CM, "UnitLength_in_cm", (1.0, -1.0)),
    "Velocities": (_KMS_IN_CM_PER_S, "UnitVelocity_in_cm_per_s", (0.5, 0.0)),
    "Masses": (_MSUN_IN_G, "UnitMass_in_g", (0.0, -1.0)),
}


def _attrs(f: h5py.File, group: str) -> dict[str, float]:
    attrs = f[group].attrs if group in f else {}
    return {k: float(np.ravel(v)[0]) for k, v in attrs.items()
            if np.size(v) == 1 and np.issubdtype(np.asarray(v).dtype, np.number)}  # fmt: skip


def _physical(dset: h5py.Dataset, header: dict, params: dict, path: Path,
              like: str | None = None) -> np.ndarray:
    """``dset`` in physical kpc, km/s or M☉ (as the dataset ``like``, default its own name)."""
    target, unit_key, (a_exp, h_exp) = _UNITS[like or dset.name.rsplit("/", 1)[1]]
    attrs = _attrs(dset.file, dset.name)
    to_cgs = attrs.get("to_cgs", header.get(unit_key, params.get(unit_key)))
    if to_cgs is None:
        raise InputError(
            f"{path}: {dset.name} has no units: no 'to_cgs' attribute and no {unit_key} in "
            "Header or Parameters; add them, or export x..vz[, mass] in kpc, km/s, Msun"
        )
    if "to_cgs" in attrs:
        a_exp, h_exp = attrs.get("a_scaling", 0.0), attrs.get("h_scaling", 0.0)
    comoving = _comoving(header, params)
    a = _header_value(header, "Time", dset, path) if a_exp and comoving else 1.0
    h = _header_value(header, "HubbleParam", dset, path) if h_exp else 1.0
    return np.asarray(dset, dtype=np.float64) * (to_cgs * a**a_exp * h**h_exp / target)


def _comoving(header: dict, params: dict) -> bool:
    """Whether the run integrates in comoving coordinates, so that ``Time`` is a scale factor."""
    time, redshift = header.get("Time"), header.get("Redshift")
    return params.get("ComovingIntegrationOn", 1) != 0 and (
        time is None or redshift is None or abs(time * (1 + redshift) - 1) < 1e-3
    )


def _header_value(header: dict, key: str, dset: h5py.Dataset, path: Path) -> float:
    if key not in header:
        raise InputError(f"{path}: Header lacks {key}, needed to convert {dset.name}; add it")
    return header[key]


_READERS: dict[str, Callable[[Path], tuple[Columns, list, dict]]] = {
    "parquet": _read_parquet, "csv": _read_csv, "hdf5": _read_hdf5, "arepo": _read_arepo,
    "npy": _read_npy, "npz": _read_npz, "tipsy": _read_tipsy,
}  # fmt: skip
