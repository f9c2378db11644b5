"""The pipeline's stages without a cluster: what a trained model is keyed on."""

from __future__ import annotations

import logging

import pytest

from gflow_dist import pipeline
from gflow_dist.config import build_config
from gflow_dist.pipeline import training_key
from gflow_dist.upsamplers.base import run_members_here

PARTICLES = {"source_sha256": "abc", "r_max_kpc": 3.5}


def _key(name: str = "cnf", particles: dict = PARTICLES, **sections) -> str:
    return training_key(build_config({"galaxy": {"source": "mock"}} | sections), name, particles)


@pytest.mark.parametrize("sections", [
    {"evaluate": {"patience": 3}}, {"catalog": {"partition_order": 2}},
    {"maf": {"patience": 3}}, {"enbid": {"variance_factor": 0.5}}, {"sample": {"total": 10}},
    {"ray": {"num_cpus_per_trainer": 2.0}}, {"ray": {"members_per_trainer": 10}},
    {"upsamplers": ["cnf", "enbid"]},
])
def test_a_change_the_model_does_not_read_keeps_its_key(sections):
    assert _key(**sections) == _key()


@pytest.mark.parametrize("sections", [
    {"cnf": {"patience": 3}}, {"seed": 1}, {"split": {"test_fraction": 0.3}},
    {"galaxy": {"source": "mock", "r_max_kpc": 3.0}},
])
def test_a_change_the_model_reads_changes_its_key(sections):
    assert _key(**sections) != _key()


def test_a_model_is_keyed_on_every_section_it_reads_and_on_its_particles():
    assert _key("kde_mle", enbid={"variance_factor": 0.5}) != _key("kde_mle")
    assert _key("enbid", kde_mle={"per_space": False}) == _key("enbid")
    assert _key(particles=PARTICLES | {"source_sha256": "def"}) != _key()


def test_changing_the_evaluation_keeps_the_trained_model(tmp_path, caplog):
    """The model is loaded, not deleted and retrained, when only ``evaluate`` changes."""
    tree = {"galaxy": {"source": "mock", "mock": {"n_particles": 600}},
            "upsamplers": ["enbid"]}
    config = build_config(tree)
    runners = pipeline.Runners(members=lambda config, name, key: run_members_here,
                               catalog=None, classifier_tests=None)
    pipeline.run_ingest(config, tmp_path)
    pipeline.train_one(config, "enbid", tmp_path, runners)
    weights = sorted((tmp_path / "models" / "enbid").glob("*.np*"))
    stamps = [path.stat().st_mtime_ns for path in weights]
    changed = build_config(tree | {"evaluate": {"patience": 2}, "catalog": {"zarr": False}})
    with caplog.at_level(logging.INFO, logger="gflow_dist.pipeline"):
        pipeline.train_one(changed, "enbid", tmp_path, runners)
    assert "enbid: already trained" in caplog.text
    assert weights and [path.stat().st_mtime_ns for path in weights] == stamps
    retrained = build_config(tree | {"enbid": {"variance_factor": 0.5}})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gflow_dist.pipeline"):
        pipeline.train_one(retrained, "enbid", tmp_path, runners)
    assert "already trained" not in caplog.text


def test_the_whole_job_runs_in_this_process_with_the_local_runners(tmp_path):
    """The cluster is a parameter: the same stages with in-process runners, no Ray."""
    import json
    import subprocess
    import sys

    script = f"""
import json, sys
from pathlib import Path
from gflow_dist import pipeline
from gflow_dist.config import build_config
config = build_config({{
    "galaxy": {{"mock": {{"n_particles": 1500}}}}, "upsamplers": ["cnf", "enbid"],
    "cnf": {{"ensemble_size": 2, "max_epochs": 2, "patience": 1, "compile": False,
             "solver_steps": 4}},
    "sample": {{"total": 3000, "shard_size": 2000, "batch_size": 2048}},
    "catalog": {{"max_rows_per_partition": 1000}},
    "evaluate": {{"samples_per_particle": 4, "hidden_units": [64, 32], "batches_per_epoch": 5,
                  "max_epochs": 2, "patience": 1, "truth_auc": False}}}})
pipeline.run_all(config, Path({str(tmp_path)!r}), pipeline.local_runners())
print(json.dumps({{"ray": "ray" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == {"ray": False}
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["upsamplers"] == ["cnf", "enbid"]
    for name in ("cnf", "enbid"):
        manifest = json.loads((tmp_path / "catalog" / name / "hats" / "_manifest.json")
                              .read_text())
        assert manifest["rows"] == 3000
        assert (tmp_path / "figures" / name / "sky_counts.png").exists()
