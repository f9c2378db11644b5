"""Versioned publishing: an atomic switch of `latest`, no-op reruns, failed runs, retention."""

from __future__ import annotations

import json
import os

import pytest

from gflow_dist.cli import main
from gflow_dist.config import load_config
from gflow_dist.errors import EXIT_INPUT, GflowError
from gflow_dist.release.stores import LATEST, MANIFEST, FolderStore, open_store
from gflow_dist.release.versions import list_versions, publish

TINY = [
    "--set", "upsamplers=[enbid]", "--set", "galaxy.mock.n_particles=1200",
    "--set", "sample.total=2000", "--set", "evaluate.enabled=false",
]


def _publish(root, *extra):
    return main(["publish", "configs/mock.yaml", "--out", str(root), "--name", "mock",
                 *TINY, *extra])


@pytest.mark.ray
def test_publish_switches_latest_reruns_as_a_no_op_keeps_latest_on_failure_and_retains(
        ray_cluster, tmp_path, capsys):
    folder = tmp_path / "mock"
    store = FolderStore(folder)
    (folder / ".staging-v=dead").mkdir(parents=True)  # a run killed before its cleanup
    assert _publish(tmp_path) == 0
    assert not (folder / ".staging-v=dead").exists()
    first = store.latest()
    manifest = json.loads((folder / first / MANIFEST).read_text())
    assert set(manifest) >= {"config_sha256", "model_sha256", "code_version",
                             "stars_per_pixel", "started", "finished"}
    assert sum(manifest["stars_per_pixel"]["enbid"].values()) == 2000
    assert (folder / LATEST / "catalog" / "enbid" / "hats" / "hats.properties").exists()

    assert _publish(tmp_path) == 0  # same config and code: nothing to do
    assert "nothing to do" in capsys.readouterr().err
    assert [v["version"] for v in list_versions(store)] == [first]

    assert _publish(tmp_path, "--force") == 0
    second = store.latest()
    assert second != first and (folder / first).is_dir()
    assert os.readlink(folder / LATEST) == second

    missing = tmp_path / "nowhere.parquet"
    assert _publish(tmp_path, "--set", f"galaxy.source={missing}") == EXIT_INPUT
    assert store.latest() == second  # a failed run leaves latest as it was
    assert not list(folder.glob(".staging-*")) and not (folder / ".lock").exists()

    assert _publish(tmp_path, "--force", "--keep", "2") == 0
    names = [v["version"] for v in list_versions(store)]
    assert first not in names and len(names) == 2
    assert store.latest() == names[-1]

    assert main(["versions", str(folder), "--rollback", second]) == 0
    assert store.latest() == second
    assert f"* {second}" in capsys.readouterr().out


def test_a_held_lock_refuses_a_second_run(tmp_path):
    store = FolderStore(tmp_path)
    with store.lock():
        with pytest.raises(GflowError, match="another publish holds"):
            with store.lock():
                pass
    assert not (tmp_path / ".lock").exists()


def test_an_incomplete_version_is_neither_listed_nor_pointed_at(tmp_path):
    store = FolderStore(tmp_path)
    (tmp_path / "v=20260101T000000000000Z-00000000").mkdir()  # no manifest.json
    assert store.versions() == []
    with pytest.raises(GflowError, match="is not a published version"):
        store.point_latest("v=20260101T000000000000Z-00000000")
    assert store.latest() is None


def test_unsupported_locations_and_misplaced_staging_are_refused_clearly(tmp_path):
    config = load_config(None)
    with pytest.raises(GflowError, match="not gs://"):
        publish(config, "gs://bucket/releases", "mock", lambda c, out: None)
    with pytest.raises(GflowError, match="--staging is for s3:// locations only"):
        open_store(tmp_path, staging_root=tmp_path / "staging")
