"""Write and read particle sets as Parquet with their provenance and run metadata.

Columns x, y, z [kpc], vx, vy, vz [km/s], optional mass [M☉] and optional population
columns (age [Gyr], feh, alpha_fe [dex], mass_initial [M☉]), float64, each carrying
its unit in the field metadata (key ``unit``, strings of :data:`gflow_dist.outputs.UNITS`).
The provenance and the caller's metadata are JSON-encoded under the schema metadata key
``gflow_dist``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gflow_dist.data.particles import (
    MASS_COLUMN,
    PHASE_SPACE_COLUMNS,
    POPULATION_COLUMNS,
    ParticleSet,
)
from gflow_dist.errors import InputError
from gflow_dist.outputs import METADATA_KEY, UNIT_KEY, UNITS


def write_particles(particles: ParticleSet, path: str | Path, metadata: dict[str, str]) -> None:
    """Write ``particles`` and ``metadata`` to the Parquet file ``path``, atomically.

    The file is written to a temporary file in the same directory and moved into place with
    ``os.replace``, so readers never see a partial file; the directory is created if needed.
    """
    path = Path(path)
    columns = dict(zip(PHASE_SPACE_COLUMNS, particles.phase_space.T, strict=True))
    if particles.mass is not None:
        columns[MASS_COLUMN] = particles.mass
    columns |= {name: particles.populations[name] for name in POPULATION_COLUMNS
                if name in particles.populations}
    fields = [pa.field(name, pa.float64(), metadata={UNIT_KEY: UNITS[name]}) for name in columns]
    document = {"provenance": dict(particles.provenance), "metadata": dict(metadata)}
    schema = pa.schema(fields, metadata={METADATA_KEY: json.dumps(document, sort_keys=True)})
    table = pa.table([np.asarray(v, dtype=np.float64) for v in columns.values()], schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_written_particles(path: str | Path) -> tuple[ParticleSet, dict[str, str]]:
    """Read a file written by :func:`write_particles`: (particles with provenance, metadata).

    Raises:
        InputError: the file is missing, unreadable, or was not written by gflow-dist.
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise InputError(f"{path}: the particle file does not exist; check the path")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(
            f"{path}: cannot read it as Parquet ({exc}); the file looks truncated or corrupt: "
            "re-copy it"
        ) from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    missing = [c for c in PHASE_SPACE_COLUMNS if c not in table.column_names]
    if raw is None or missing:
        raise InputError(
            f"{path}: not written by gflow-dist (no '{METADATA_KEY.decode()}' metadata or "
            f"missing columns {', '.join(missing) or 'none'}); read it with read_particles"
        )
    document = json.loads(raw)
    phase_space = np.column_stack([table.column(c).to_numpy() for c in PHASE_SPACE_COLUMNS])
    mass = None
    if MASS_COLUMN in table.column_names:
        mass = np.array(table.column(MASS_COLUMN).to_numpy(), dtype=np.float64)
    populations = {name: np.array(table.column(name).to_numpy(), dtype=np.float64)
                   for name in POPULATION_COLUMNS if name in table.column_names}
    return (ParticleSet(phase_space, mass, document["provenance"], populations),
            document["metadata"])
