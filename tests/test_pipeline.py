"""The gflow command end to end on a real local Ray cluster, with real Parquet files.

``gflow run`` trains a 2-member CNF ensemble in Ray actors and simplified EnBiD, draws
sharded HATS/Zarr catalogs with Ray Data, and scores the multi-model test on Ray; then
``gflow sample`` writes the same stars as flat Parquet files.
"""

from __future__ import annotations

import json

import dask.dataframe as dd
import lsdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr

from gflow_dist import upsamplers
from gflow_dist.cli import main
from gflow_dist.config import load_config
from gflow_dist.data.ingest import read_ingested
from gflow_dist.errors import EXIT_INPUT
from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import multi_model_test
from gflow_dist.evaluate.draws import CLASSIFIER_STREAM, draw_for_evaluation, evaluation_seed

SMALL_RUN = [
    "--set", "galaxy.mock.n_particles=1500", "--set", "cnf.ensemble_size=2",
    "--set", "cnf.max_epochs=2", "--set", "cnf.patience=1", "--set", "cnf.compile=false",
    "--set", "cnf.solver_steps=4", "--set", "sample.total=5000", "--set", "sample.batch_size=2048",
    "--set", "sample.shard_size=2000",
    "--set", "evaluate.samples_per_particle=4", "--set", "evaluate.hidden_units=[64, 32]",
    "--set", "evaluate.batches_per_epoch=5", "--set", "evaluate.max_epochs=2",
    "--set", "evaluate.patience=1", "--set", "catalog.max_rows_per_partition=1000",
]


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "configs/mock.yaml", "--out", str(out), *SMALL_RUN]) == 0
    assert not (out / "samples").exists(), "the main job draws the stars once, in the catalog"
    assert main(["sample", "configs/mock.yaml", "--out", str(out), *SMALL_RUN]) == 0
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
    assert table.column_names == ["star_id", "x", "y", "z", "vx", "vy", "vz"]
    assert table.schema.field("vx").metadata[b"unit"] == b"km / s"
    metadata = json.loads(table.schema.metadata[b"gflow_dist"])
    assert json.loads(metadata["sun_position_kpc"]) == [-8.0, 0.0, 0.02]
    assert metadata["seed"] == "0" and "torch" in json.loads(metadata["versions"])
    stars = np.column_stack([table.column(c).to_numpy() for c in table.column_names[1:]])
    assert (np.linalg.norm(stars[:, :3] - [-8.0, 0.0, 0.02], axis=1) < 3.5).all()
    assert not any(p.name.startswith(".") for p in (out / "samples").iterdir())


@pytest.mark.ray
@pytest.mark.parametrize("name", ["cnf", "enbid"])
def test_samples_are_the_catalogs_stars(finished_run, name):
    """`gflow sample` (one process) and the catalog (Ray actors) draw the same stars."""
    columns = ["star_id", "x", "y", "z", "vx", "vy", "vz"]
    sample = pq.read_table(finished_run / "samples" / name).to_pandas()
    catalog = (dd.read_parquet(finished_run / "catalog" / name / "hats" / "dataset",
                               columns=columns).compute()
               .sort_values("star_id").reset_index(drop=True))
    assert list(sample["star_id"]) == list(range(5000)) == list(catalog["star_id"])
    np.testing.assert_allclose(sample[columns[1:]].to_numpy(),
                               catalog[columns[1:]].to_numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.ray
def test_run_writes_catalogs_that_lsdb_dask_and_xarray_open(finished_run):
    for name in ("cnf", "enbid"):
        folder = finished_run / "catalog" / name
        catalog = lsdb.open_catalog(folder / "hats")
        assert catalog.hc_structure.catalog_info.total_rows == 5000
        assert len(catalog.get_healpix_pixels()) > 1  # 1,000 rows at most per partition
        frame = dd.read_parquet(folder / "hats" / "dataset").compute()
        assert sorted(frame["star_id"]) == list(range(5000))
        store = xr.open_zarr(folder / "stars.zarr")
        assert int(store["valid"].sum()) == 5000
        assert store["pmra"].attrs["units"] == "mas / yr"
        figures = {p.name for p in (finished_run / "figures" / name).glob("*.png")}
        assert {"proper_motion.png", "corner_icrs.png", "velocity_xy.png",
                "sky_counts.png"} <= figures


@pytest.mark.ray
def test_run_evaluates_cnf_against_enbid(finished_run):
    report = json.loads((finished_run / "report.json").read_text())
    assert report["upsamplers"] == ["cnf", "enbid"]
    assert set(report["log_posterior"]) == {"cnf", "enbid"}
    assert "cnf - enbid" in report["differences"]
    assert set(report["truth"]["kl_nats"]) == {"cnf", "enbid"}
    assert (finished_run / "report.md").read_text().startswith("# Upsampler evaluation")


@pytest.mark.ray
def test_query_and_plot_commands(finished_run, tmp_path, capsys):
    catalog = str(finished_run / "catalog" / "cnf")
    export = tmp_path / "cone.csv"
    assert main(["query", catalog, "cone", "--ra", "130", "--dec", "-45", "--radius", "30",
                 "--columns", "ra", "dec", "pmra", "--export", str(export)]) == 0
    assert f"-> {export}" in capsys.readouterr().err
    assert export.read_text().splitlines()[0].split(",")[1:] == ["ra", "dec", "pmra"]
    counts = tmp_path / "counts.csv"
    assert main(["query", catalog, "counts", "--order", "1", "--export", str(counts)]) == 0
    assert pd.read_csv(counts)["count"].sum() == 5000
    assert f"-> {counts}" in capsys.readouterr().err
    assert main(["query", catalog, "mean-pm", "--ra", "130", "--dec", "-45",
                 "--radius", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] > 0
    assert main(["plot", catalog, "--out", str(tmp_path / "figures")]) == 0
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4
    assert main(["query", str(tmp_path), "counts", "--order", "0"]) == EXIT_INPUT
    assert "no HATS catalog" in capsys.readouterr().err


@pytest.mark.ray
def test_rerun_is_idempotent(finished_run, capsys):
    out = finished_run
    weights = (out / "models/cnf/member-00.pt").stat().st_mtime_ns
    written = [out / "samples/cnf/part-00000.parquet",
               *sorted((out / "catalog/cnf/hats/dataset").rglob("*.parquet"))]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in written]
    for command in ("run", "sample"):
        assert main([command, "configs/mock.yaml", "--out", str(out), *SMALL_RUN]) == 0
    assert "already trained" in capsys.readouterr().err
    assert (out / "models/cnf/member-00.pt").stat().st_mtime_ns == weights
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in written] == before


@pytest.mark.ray
def test_new_sample_count_replaces_the_sample_whole(finished_run):
    out = finished_run
    assert main(["sample", "configs/mock.yaml", "--out", str(out), *SMALL_RUN,
                 "--set", "sample.total=3000"]) == 0
    assert pq.read_table(out / "samples" / "cnf").num_rows == 3000


def test_ingest_prints_the_selection(tmp_path, capsys, ray_cluster):
    assert main(["ingest", "configs/mock.yaml", "--out", str(tmp_path),
                 "--set", "galaxy.mock.n_particles=800"]) == 0
    printed = capsys.readouterr().err
    assert "800 star particles within 3.5 kpc" in printed
    assert "400 train and 400 test" in printed


def test_bad_config_key_is_a_clear_error(capsys):
    status = main(["config", "show", "configs/mock.yaml", "--set", "cnf.pateince=3"])
    assert status == EXIT_INPUT
    error = capsys.readouterr().err
    assert "configs/mock.yaml" in error and "unknown key 'cnf.pateince'" in error


def test_missing_particle_file_is_a_clear_error(tmp_path, capsys, ray_cluster):
    missing = tmp_path / "nowhere.parquet"
    status = main(["ingest", "--out", str(tmp_path), "--set", f"galaxy.source={missing}"])
    assert status == EXIT_INPUT
    assert str(missing) in capsys.readouterr().err


def test_config_show_prints_defaults(capsys):
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "patience: 50" in shown and "r_max_kpc: 3.5" in shown


@pytest.mark.ray
def test_distributed_lp_equals_the_single_process_lp(finished_run):
    """gflow run scored LP on Ray; the same classifier scored here in one process agrees."""
    out = finished_run
    config = load_config("configs/mock.yaml", SMALL_RUN[1::2])
    train, test = read_ingested(out)
    n_samples = round(config.evaluate.samples_per_particle * len(train))
    samples = {name: draw_for_evaluation(upsamplers.load(out / "models" / name), n_samples,
                                         config.seed, index, config.sample.shard_size,
                                         config.sample.batch_size)
               for index, name in enumerate(config.upsamplers)}
    # the classifier's finished checkpoint is resumed, not retrained
    local = multi_model_test(samples, test.phase_space,
                             ClassifierSettings.from_config(config.evaluate),
                             evaluation_seed(config.seed, CLASSIFIER_STREAM),
                             out / "evaluation" / "repeat-0")
    report = json.loads((out / "report.json").read_text())
    assert report["repeats"] == config.evaluate.repeats == 3  # configs/mock.yaml
    for name in config.upsamplers:  # repeat 0 draws and trains with the run seed itself
        entry = report["log_posterior"][name]
        assert entry["per_repeat"][0] == pytest.approx(local.log_posterior[name].value, rel=1e-9)
        assert entry["value"] == pytest.approx(np.mean(entry["per_repeat"]), rel=1e-12)
    difference = report["differences"]["cnf - enbid"]
    assert difference["per_repeat"][0] == pytest.approx(
        local.differences["cnf - enbid"].value, rel=1e-9)
    assert difference["total"] >= difference["within"] > 0
