"""Particle ingest: readers, validation, selection around the Sun, Parquet output."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gflow_dist.data import particle_io
from gflow_dist.data.particle_io import read_written_particles, write_particles
from gflow_dist.data.particles import MASS_COLUMN, PHASE_SPACE_COLUMNS, ParticleSet
from gflow_dist.data.readers import read_particles
from gflow_dist.data.selection import select_sphere, split_train_test, summarize
from gflow_dist.errors import InputError
from gflow_dist.frame import SolarFrame

COLUMNS = [*PHASE_SPACE_COLUMNS, MASS_COLUMN]
KPC_CM, MSUN_G = 3.0856775814913673e21, 1.988409870698051e33


def galaxy(n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A rotating exponential disk: (phase space [kpc, km/s], masses [Msun])."""
    rng = np.random.default_rng(seed)
    radius, phi = rng.exponential(3.0, n) + 0.5, rng.uniform(0, 2 * np.pi, n)
    pos = np.column_stack([radius * np.cos(phi), radius * np.sin(phi), rng.normal(0, 0.3, n)])
    vel = 220.0 * np.column_stack([-np.sin(phi), np.cos(phi), np.zeros(n)])
    vel += rng.normal(0, 30.0, (n, 3))
    return np.hstack([pos, vel]), rng.lognormal(np.log(5e4), 0.3, n)


def frame(phase_space: np.ndarray, mass: np.ndarray | None = None) -> pd.DataFrame:
    data = dict(zip(PHASE_SPACE_COLUMNS, phase_space.T, strict=True))
    return pd.DataFrame(data if mass is None else {**data, MASS_COLUMN: mass})


def named(path: Path) -> str:
    return re.escape(str(path))


# --- round trips -----------------------------------------------------------------------------


def write_parquet(path, ps, m):
    frame(ps, m).to_parquet(path)


def write_csv(path, ps, m):
    frame(ps, m).to_csv(path, index=False)


def write_h5_root(path, ps, m):
    with h5py.File(path, "w") as f:
        for name, values in frame(ps, m).items():
            f[name] = values.to_numpy()


def write_h5_group(path, ps, m):
    with h5py.File(path, "w") as f:
        f.create_group("meta").attrs["note"] = "not particles"
        for name, values in frame(ps, m).items():
            f[f"stars/{name}"] = values.to_numpy()


def write_h5_table(path, ps, m):
    with h5py.File(path, "w") as f:
        f["stars/table"] = frame(ps, m).to_records(index=False)


def write_npy_structured(path, ps, m):
    np.save(path, frame(ps, m).to_records(index=False))


def write_npy_plain(path, ps, m):
    np.save(path, np.column_stack([ps, m]))


def write_npy_plain6(path, ps, m):
    np.save(path, ps)


def write_npz(path, ps, m):
    np.savez(path, **{k: v.to_numpy() for k, v in frame(ps, m).items()})


@pytest.mark.parametrize(
    ("writer", "suffix", "fmt", "has_mass"),
    [
        (write_parquet, ".parquet", "parquet", True),
        (write_csv, ".csv", "csv", True),
        (write_h5_root, ".h5", "hdf5", True),
        (write_h5_group, ".hdf5", "hdf5", True),
        (write_h5_table, ".h5", "hdf5", True),
        (write_npy_structured, ".npy", "npy", True),
        (write_npy_plain, ".npy", "npy", True),
        (write_npy_plain6, ".npy", "npy", False),
        (write_npz, ".npz", "npz", True),
    ],
)
def test_round_trip(tmp_path, writer, suffix, fmt, has_mass):
    ps, mass = galaxy()
    path = tmp_path / f"galaxy{suffix}"
    writer(path, ps, mass)
    particles = read_particles(path)
    np.testing.assert_array_equal(particles.phase_space, ps)
    if has_mass:
        np.testing.assert_array_equal(particles.mass, mass)
    else:
        assert particles.mass is None
    assert particles.provenance["source"] == str(path)
    assert particles.provenance["format"] == fmt
    assert particles.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_particles(path, fmt=fmt).provenance == particles.provenance


def test_parquet_without_mass_and_with_extra_columns(tmp_path):
    ps, _ = galaxy()
    path = tmp_path / "g.parquet"
    frame(ps).assign(id=np.arange(len(ps))).to_parquet(path)
    particles = read_particles(path)
    assert particles.mass is None
    np.testing.assert_array_equal(particles.phase_space, ps)


# --- Arepo / Auriga snapshots -----------------------------------------------------------------


def write_snapshot(path, ps, mass, a, h, per_dataset_units, wind_rows=(), params=None):
    """Stars in code units ckpc/h or cMpc/h, sqrt(a) km/s and 1e10 Msun/h."""
    length_cm = 1e3 * KPC_CM if per_dataset_units else KPC_CM  # cMpc/h or ckpc/h
    formation = np.full(len(ps), 0.5)
    formation[list(wind_rows)] = -0.3
    with h5py.File(path, "w") as f:
        header = f.create_group("Header")
        header.attrs.update({"Time": a, "Redshift": 1 / a - 1, "HubbleParam": h,
                             "NumFilesPerSnapshot": 1, "MassTable": np.zeros(6)})  # fmt: skip
        if params is not None:
            f.create_group("Parameters").attrs.update(params)
        stars = f.create_group("PartType4")
        data = {
            "Coordinates": (ps[:, :3] * KPC_CM / length_cm * h / a, length_cm, 1.0, -1.0),
            "Velocities": (ps[:, 3:] / np.sqrt(a), 1e5, 0.5, 0.0),
            "Masses": (mass * h / 1e10, 1e10 * MSUN_G, 0.0, -1.0),
        }
        for name, (raw, to_cgs, a_scaling, h_scaling) in data.items():
            stars[name] = raw
            if per_dataset_units:
                stars[name].attrs.update(
                    {"to_cgs": to_cgs, "a_scaling": a_scaling, "h_scaling": h_scaling}
                )
        stars["GFM_StellarFormationTime"] = formation
        if not per_dataset_units:
            header.attrs.update({"UnitLength_in_cm": KPC_CM, "UnitVelocity_in_cm_per_s": 1e5,
                                 "UnitMass_in_g": 1e10 * MSUN_G})  # fmt: skip


@pytest.mark.parametrize("per_dataset_units", [True, False])
def test_arepo_units_to_kpc(tmp_path, per_dataset_units):
    ps, mass = galaxy()
    path = tmp_path / "snapshot_127.hdf5"
    write_snapshot(path, ps, mass, a=0.8, h=0.6777, per_dataset_units=per_dataset_units,
                   wind_rows=[2, 5])  # fmt: skip
    particles = read_particles(path)
    keep = np.setdiff1d(np.arange(len(ps)), [2, 5])
    np.testing.assert_allclose(particles.phase_space, ps[keep], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(particles.mass, mass[keep], rtol=1e-12)
    assert particles.provenance["format"] == "arepo"
    assert particles.provenance["wind_cells_dropped"] == "2"


def test_arepo_not_comoving_ignores_scale_factor(tmp_path):
    ps, mass = galaxy()
    path = tmp_path / "snap.hdf5"
    write_snapshot(path, ps, mass, a=1.0, h=1.0, per_dataset_units=False)
    with h5py.File(path, "r+") as f:
        f["Header"].attrs.update({"Time": 0.25, "Redshift": 0.0})  # Time is a time here
    np.testing.assert_allclose(read_particles(path).phase_space, ps, rtol=1e-12, atol=1e-12)


def test_arepo_without_units_names_dataset(tmp_path):
    path = tmp_path / "snap.hdf5"
    with h5py.File(path, "w") as f:
        f["PartType4/Coordinates"] = np.ones((3, 3))
        f["PartType4/Velocities"] = np.ones((3, 3))
    with pytest.raises(InputError, match=f"{named(path)}.*/PartType4/Coordinates.*to_cgs"):
        read_particles(path)


def test_arepo_multi_file_snapshot_refused(tmp_path):
    ps, mass = galaxy()
    path = tmp_path / "snapshot_127.0.hdf5"
    write_snapshot(path, ps, mass, a=1.0, h=0.7, per_dataset_units=True)
    with h5py.File(path, "r+") as f:
        f["Header"].attrs["NumFilesPerSnapshot"] = 8
    with pytest.raises(InputError, match=f"{named(path)}.*8-file snapshot"):
        read_particles(path)


# --- bad input --------------------------------------------------------------------------------


def load_bad(tmp_path, ps, mass=None, name="bad.parquet"):
    path = tmp_path / name
    frame(ps, mass).to_parquet(path)
    return path


@pytest.mark.parametrize(("value", "what"), [(np.nan, "2 NaN, 0 inf"), (np.inf, "0 NaN, 2 inf")])
def test_non_finite_names_column_and_rows(tmp_path, value, what):
    ps, _ = galaxy()
    ps[[3, 7], 4] = value
    path = load_bad(tmp_path, ps)
    match = rf"{named(path)}: column 'vy' .*\({what}\) at rows \[3, 7\]"
    with pytest.raises(InputError, match=match):
        read_particles(path)


def test_missing_columns_lists_missing_and_found(tmp_path):
    ps, mass = galaxy()
    path = tmp_path / "g.csv"
    frame(ps, mass).drop(columns=["vz", "y"]).to_csv(path, index=False)
    match = rf"{named(path)}: missing column\(s\) y, vz .*found: x, z"
    with pytest.raises(InputError, match=match):
        read_particles(path)


def test_missing_columns_hdf5_names_datasets(tmp_path):
    ps, _ = galaxy()
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        for name in ("x", "y", "z", "vx"):
            f[f"stars/{name}"] = ps[:, 0]
    with pytest.raises(InputError, match=f"{named(path)}.*vy, vz.*found: /stars/vx, /stars/x"):
        read_particles(path)


def test_duplicates_reported_not_dropped(tmp_path):
    ps, _ = galaxy()
    ps[10], ps[20] = ps[3], ps[3]
    path = load_bad(tmp_path, ps)
    match = rf"{named(path)}: 2 particle\(s\) .*row 10 = row 3, row 20 = row 3"
    with pytest.raises(InputError, match=match):
        read_particles(path)


def test_non_positive_masses(tmp_path):
    ps, mass = galaxy()
    mass[[4, 9]] = [0.0, -1.0]
    path = load_bad(tmp_path, ps, mass)
    with pytest.raises(InputError, match=rf"{named(path)}: column 'mass' .*rows \[4, 9\]"):
        read_particles(path)


@pytest.mark.parametrize(
    ("scale", "columns", "pattern"),
    [
        ((1e-3, 1.0), "'x', 'y', 'z'", "look like Mpc.*multiply positions by 1000"),
        ((3.0856775814913673e19, 1.0), "'x', 'y', 'z'", "look like m,.*by 3.240779289e-20"),
        ((3.0856775814913673e21, 1.0), "'x', 'y', 'z'", "look like cm,.*by 3.240779289e-22"),
        ((1.0, 1e5), "'vx', 'vy', 'vz'", "look like cm/s.*multiply velocities by 1e-05"),
        ((1.0, 1e3), "'vx', 'vy', 'vz'", "look like m/s.*multiply velocities by 0.001"),
    ],
)
def test_wrong_units(tmp_path, scale, columns, pattern):
    ps, _ = galaxy()
    path = load_bad(tmp_path, np.hstack([ps[:, :3] * scale[0], ps[:, 3:] * scale[1]]))
    with pytest.raises(InputError, match=f"{named(path)}: columns {columns} {pattern}"):
        read_particles(path)


def test_compact_slow_galaxy_is_not_flagged(tmp_path):
    ps, _ = galaxy()
    ps[:, :3] *= 0.2  # median radius ~0.7 kpc
    ps[:, 3:] *= 0.1  # speeds ~20 km/s
    particles = read_particles(load_bad(tmp_path, ps))
    np.testing.assert_array_equal(particles.phase_space, ps)  # read as they are: kpc, km/s


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("writer", "suffix"),
    [(write_parquet, ".parquet"), (write_h5_root, ".h5"), (write_npy_plain, ".npy"),
     (write_npz, ".npz")],
)  # fmt: skip
def test_truncated_file(tmp_path, writer, suffix):
    ps, mass = galaxy()
    path = tmp_path / f"g{suffix}"
    writer(path, ps, mass)
    truncate(path)
    with pytest.raises(InputError, match=f"{named(path)}.*truncated or corrupt: re-copy it"):
        read_particles(path)


def test_truncated_csv_reports_short_last_row(tmp_path):
    path = tmp_path / "g.csv"
    write_csv(path, *galaxy())
    truncate(path)
    match = rf"{named(path)}: row \d+ has [1-6] of the header's 7 fields; the file looks truncated"
    with pytest.raises(InputError, match=match):
        read_particles(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.parquet"
    with pytest.raises(InputError, match=f"{named(path)}: the particle file does not exist"):
        read_particles(path)


def test_empty_file_and_no_rows(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.touch()
    with pytest.raises(InputError, match=f"{named(empty)}: the file is empty"):
        read_particles(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(PHASE_SPACE_COLUMNS) + "\n")
    with pytest.raises(InputError, match=f"{named(header_only)}: the file contains no particles"):
        read_particles(header_only)


def test_non_numeric_column_names_row(tmp_path):
    path = tmp_path / "g.csv"
    table = frame(*galaxy()).astype({"vx": object})
    table.loc[6, "vx"] = "abc"
    table.to_csv(path, index=False)
    with pytest.raises(InputError, match=f"{named(path)}: column 'vx' is not numeric: row 6"):
        read_particles(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "g.dat"
    path.write_text("1 2 3\n")
    with pytest.raises(InputError, match=f"{named(path)}: cannot tell the format.*galaxy.format"):
        read_particles(path)


@pytest.mark.parametrize(
    ("name", "fmt"), [("g.tipsy", "auto"), ("g.std", "auto"), ("g.bin", "tipsy")]
)
def test_tipsy_needs_pynbody_extra(tmp_path, monkeypatch, name, fmt):
    monkeypatch.setitem(sys.modules, "pynbody", None)  # import pynbody -> ImportError
    path = tmp_path / name
    path.write_bytes(b"\0" * 64)
    match = rf"{named(path)}: .*pynbody.*pip install 'gflow-dist\[tipsy\]'"
    with pytest.raises(InputError, match=match):
        read_particles(path, fmt=fmt)


# --- selection --------------------------------------------------------------------------------

SUN = (-8.0, 0.0, 0.0)
FRAME = SolarFrame(SUN)


def test_select_sphere_is_strict():
    ps = np.zeros((4, 6))
    ps[:, 0] = [-8.0 + 2.0, -8.0 - 1.999, -8.0, 0.0]  # on the boundary, inside, centre, far
    ps[:, 4] = [100.0, 200.0, 300.0, 400.0]
    selected = select_sphere(ParticleSet(ps, np.arange(1.0, 5.0)), FRAME, 2.0)
    np.testing.assert_array_equal(selected.phase_space[:, 4], [200.0, 300.0])
    np.testing.assert_array_equal(selected.mass, [2.0, 3.0])


def test_empty_selection_names_source_sun_and_nearest():
    ps = np.zeros((2, 6))
    ps[:, 0] = [20.0, 30.0]
    match = r"run\.h5: no particle within r_max = 3 kpc of the Sun at \(-8, 0, 0\) kpc; the nearest"
    with pytest.raises(InputError, match=match + " particle is 28 kpc away"):
        select_sphere(ParticleSet(ps), FRAME, 3.0, source="run.h5")


def test_summary_numbers():
    ps = np.zeros((3, 6))
    ps[:, 3:] = [[3.0, 4.0, 0.0], [0.0, 0.0, -12.0], [1.0, 0.0, 0.0]]
    summary = summarize(ParticleSet(ps, np.array([1.0, 2.0, 3.5])), FRAME, 3.5)
    assert (summary.count, summary.max_speed_kms, summary.total_mass_msun) == (3, 12.0, 6.5)
    assert summary.sun_position_kpc == SUN and summary.r_max_kpc == 3.5
    assert str(summary) == (
        "3 star particles within 3.5 kpc of the Sun at (-8, 0, 0) kpc; max speed 12.0 km/s; "
        "total mass 6.5 Msun"
    )
    assert summarize(ParticleSet(ps), FRAME, 3.5).total_mass_msun is None


def test_split_deterministic_and_lossless():
    ps, mass = galaxy(401)
    particles = ParticleSet(ps, mass, {"source": "s"})
    train, test = split_train_test(particles, seed=7)
    again = split_train_test(particles, seed=7)
    np.testing.assert_array_equal(train.phase_space, again[0].phase_space)
    assert (len(train), len(test)) == (201, 200)
    union = np.vstack([np.column_stack([p.phase_space, p.mass]) for p in (train, test)])
    everything = np.column_stack([ps, mass])
    assert len(np.unique(union, axis=0)) == len(everything)
    np.testing.assert_array_equal(np.unique(union, axis=0), np.unique(everything, axis=0))
    other, _ = split_train_test(particles, seed=8)
    assert not np.array_equal(other.phase_space, train.phase_space)
    assert train.provenance == {"source": "s"}
    with pytest.raises(InputError, match="s: cannot split 1 particle"):
        split_train_test(particles.subset(np.arange(1)), seed=0)


# --- Parquet output ---------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    ps, mass = galaxy()
    particles = ParticleSet(ps, mass, {"source": "/data/snap.hdf5", "sha256": "ab"})
    path = tmp_path / "out" / "train.parquet"
    write_particles(particles, path, {"seed": "7", "split": "train"})
    back, metadata = read_written_particles(path)
    np.testing.assert_array_equal(back.phase_space, ps)
    np.testing.assert_array_equal(back.mass, mass)
    assert back.provenance == particles.provenance
    assert metadata == {"seed": "7", "split": "train"}
    schema = pq.read_schema(path)
    assert schema.names == COLUMNS
    assert [schema.field(c).metadata[b"unit"] for c in ("x", "vz", "mass")] == [
        b"kpc", b"km / s", b"solMass"
    ]
    assert json.loads(schema.metadata[b"gflow_dist"])["metadata"]["seed"] == "7"
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.parquet"]
    np.testing.assert_array_equal(read_particles(path).phase_space, ps)


def test_write_is_atomic(tmp_path, monkeypatch):
    ps, _ = galaxy()
    path = tmp_path / "p.parquet"
    write_particles(ParticleSet(ps), path, {"run": "first"})

    def fail(table, where):
        Path(where).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(particle_io.pq, "write_table", fail)
    with pytest.raises(OSError, match="disk full"):
        write_particles(ParticleSet(ps[:10]), path, {"run": "second"})
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]
    monkeypatch.undo()
    back, metadata = read_written_particles(path)
    assert len(back) == len(ps) and back.mass is None and metadata == {"run": "first"}


def test_read_written_rejects_foreign_parquet(tmp_path):
    path = tmp_path / "foreign.parquet"
    frame(*galaxy()).to_parquet(path)
    with pytest.raises(InputError, match=f"{named(path)}: not written by gflow-dist"):
        read_written_particles(path)
