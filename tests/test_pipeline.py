"""The gflow command end to end on a real local Ray cluster, with real Parquet files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from gflow_dist.cli import main
from gflow_dist.data.ingest import read_ingested

SMALL_RUN = [
    "--set", "galaxy.mock.n_particles=1500", "--set", "cnf.ensemble_size=2",
    "--set", "cnf.max_epochs=2", "--set", "cnf.patience=1", "--set", "cnf.compile=false",
    "--set", "cnf.solver_steps=4", "--set", "sample.total=5000", "--set", "sample.batch_size=2048",
]


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "configs/mock.yaml", "--out", str(out), *SMALL_RUN]) == 0
    return out


@pytest.mark.ray
def test_run_writes_particles_models_and_samples(finished_run):
    out = finished_run
    train, test = read_ingested(out)
    assert len(train) + len(test) == 1500
    assert len(train) == len(test) == 750
    assert {"spec.json", "member-00.pt", "member-01.pt"} <= {
        p.name for p in (out / "models" / "cnf").iterdir()}
    spec = json.loads((out / "models/cnf/spec.json").read_text())
    assert spec["metadata"]["config_sha256"] and spec["member_seeds"]
    history = json.loads((out / "models/cnf/training/member-00/history.json").read_text())
    assert set(history) == {"position", "velocity"}
    manifest = json.loads((out / "samples/cnf/_manifest.json").read_text())
    assert manifest["rows"] == 5000
    table = pq.read_table(out / "samples" / "cnf")
    assert table.num_rows == 5000
    assert table.column_names == ["x", "y", "z", "vx", "vy", "vz"]
    assert table.schema.field("vx").metadata[b"unit"] == b"km/s"
    metadata = json.loads(table.schema.metadata[b"gflow_dist"])
    assert json.loads(metadata["sun_position_kpc"]) == [-8.0, 0.0, 0.02]
    assert metadata["seed"] == "0" and "torch" in json.loads(metadata["versions"])
    stars = np.column_stack([table.column(c).to_numpy() for c in table.column_names])
    assert (np.linalg.norm(stars[:, :3] - [-8.0, 0.0, 0.02], axis=1) < 3.5).all()
    assert not any(p.name.startswith(".") for p in (out / "samples").iterdir())


@pytest.mark.ray
def test_rerun_is_idempotent(finished_run, capsys):
    out = finished_run
    weights = (out / "models/cnf/member-00.pt").stat().st_mtime_ns
    part = out / "samples/cnf/part-00000.parquet"
    before = part.read_bytes(), part.stat().st_mtime_ns
    assert main(["run", "configs/mock.yaml", "--out", str(out), *SMALL_RUN]) == 0
    assert "already trained" in capsys.readouterr().out
    assert (out / "models/cnf/member-00.pt").stat().st_mtime_ns == weights
    assert (part.read_bytes(), part.stat().st_mtime_ns) == before


@pytest.mark.ray
def test_new_sample_count_replaces_the_sample_whole(finished_run):
    out = finished_run
    assert main(["sample", "configs/mock.yaml", "--out", str(out), *SMALL_RUN,
                 "--set", "sample.total=3000"]) == 0
    assert pq.read_table(out / "samples" / "cnf").num_rows == 3000


def test_ingest_prints_the_selection(tmp_path, capsys, ray_cluster):
    assert main(["ingest", "configs/mock.yaml", "--out", str(tmp_path),
                 "--set", "galaxy.mock.n_particles=800"]) == 0
    printed = capsys.readouterr().out
    assert "800 star particles within 3.5 kpc" in printed
    assert "400 train and 400 test" in printed


def test_bad_config_key_is_a_clear_error(capsys):
    assert main(["config", "show", "configs/mock.yaml", "--set", "cnf.pateince=3"]) == 2
    error = capsys.readouterr().err
    assert "configs/mock.yaml" in error and "unknown key 'cnf.pateince'" in error


def test_missing_particle_file_is_a_clear_error(tmp_path, capsys, ray_cluster):
    missing = tmp_path / "nowhere.parquet"
    assert main(["ingest", "--out", str(tmp_path), "--set", f"galaxy.source={missing}"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_config_show_prints_defaults(capsys):
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "patience: 50" in shown and "r_max_kpc: 3.5" in shown
