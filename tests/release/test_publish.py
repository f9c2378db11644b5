"""Versioned publishing: an atomic switch of `latest`, no-op reruns, failed runs, retention,
and a run lock whose lease a live run renews and a dead run's successor takes over."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from gflow_dist.cli import main
from gflow_dist.config import load_config
from gflow_dist.errors import EXIT_INPUT, GflowError
from gflow_dist.release.stores import LATEST, LOCK, MANIFEST, FolderStore, open_store
from gflow_dist.release.versions import list_versions, publish
from gflow_dist.upsamplers.base import SPEC_FILE

TINY = [
    "--set", "upsamplers=[enbid]", "--set", "galaxy.mock.n_particles=1200",
    "--set", "sample.total=2000", "--set", "evaluate.enabled=false",
]


EXPIRED_LOCK = {"owner": "pid 1 on a-dead-node", "token": "dead",
                "acquired": "2000-01-01T00:00:00+00:00", "expires": "2000-01-01T00:05:00+00:00"}
USURPER_LOCK = {"owner": "pid 2 on another-node", "token": "usurper",
                "acquired": "2000-01-01T00:00:00+00:00", "expires": "2999-01-01T00:00:00+00:00"}
HOLD_THE_LOCK = """
import sys, time
from gflow_dist.release.stores import open_store
with open_store(sys.argv[1], lock_lease=float(sys.argv[2])).lock():
    print("held", flush=True)
    time.sleep(600)
"""


def kill_while_holding_the_lock(location: str | Path, lock_lease: float) -> int:
    """Start a process that takes the publish lock of ``location``, SIGKILL it while it holds
    the lock, and return its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(location),
                               str(lock_lease)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        assert holder.stdout.readline() == "held\n"
    finally:
        holder.kill()
        holder.wait()
    return holder.pid


def race_for_the_lock(lock: Callable[[], AbstractContextManager[object]],
                      contenders: int) -> list[str]:
    """Have ``contenders`` threads take ``lock()`` at once; each winner holds it until every
    contender has tried. The outcomes: "won" or "lost" per contender."""
    start, everyone_tried = threading.Barrier(contenders), threading.Event()
    outcomes: list[str] = []

    def contend() -> None:
        start.wait()
        try:
            with lock():
                outcomes.append("won")
                everyone_tried.wait(30)
        except GflowError:
            outcomes.append("lost")

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(outcomes) < contenders and time.monotonic() < deadline:
        time.sleep(0.01)
    everyone_tried.set()
    for thread in threads:
        thread.join()
    return sorted(outcomes)


def fake_run(config, out):
    """A run's output reduced to what publish reads: a saved model per upsampler."""
    for name in config.upsamplers:
        (out / "models" / name).mkdir(parents=True)
        (out / "models" / name / SPEC_FILE).write_text("{}")


def rollback_during_retention(monkeypatch, store_class: type, location: str,
                              publish_forced: Callable[[], str]) -> tuple[list[str], dict]:
    """Publish three versions with ``keep=2``; while the third publish's retention deletes
    the first, run ``gflow versions LOCATION --rollback <first>``, as a user could at that
    moment. Returns the three versions and the rollback's exit status per deleted version."""
    published = [publish_forced(), publish_forced()]
    statuses: dict[str, int] = {}
    delete = store_class.delete

    def delete_as_a_rollback_races(store, version: str) -> None:
        statuses[version] = main(["versions", location, "--rollback", version])
        delete(store, version)

    monkeypatch.setattr(store_class, "delete", delete_as_a_rollback_races)
    published.append(publish_forced())
    return published, statuses


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


def test_a_rollback_racing_a_publish_cannot_point_latest_at_a_version_it_deletes(
        tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mock"
    (first, second, third), statuses = rollback_during_retention(
        monkeypatch, FolderStore, str(folder),
        lambda: publish(load_config(None), tmp_path, "mock", fake_run, keep=2, force=True))
    assert statuses == {first: EXIT_INPUT}  # refused: the publish holds the lock
    assert f"another publish holds {folder / LOCK}" in capsys.readouterr().err
    store = FolderStore(folder)
    assert store.versions() == [second, third] and store.latest() == third
    assert not (folder / LOCK).exists()
    assert main(["versions", str(folder), "--rollback", second]) == 0  # once it is done
    assert store.latest() == second and not (folder / LOCK).exists()


def test_a_rollback_to_a_missing_version_changes_nothing(tmp_path, capsys):
    missing = tmp_path / "no-such-release"
    assert main(["versions", str(missing), "--rollback", "v=1"]) == EXIT_INPUT
    assert "is not a published version" in capsys.readouterr().err
    assert not missing.exists()  # not even the folder the lock would live in


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


def test_a_killed_holders_lock_refuses_until_its_lease_expires_then_is_taken_over(tmp_path):
    config, folder = load_config(None), tmp_path / "mock"
    pid = kill_while_holding_the_lock(folder, lock_lease=2)
    held = rf"another publish holds {re.escape(str(folder / LOCK))} \(pid {pid} on "
    with pytest.raises(GflowError, match=held + ".*lease expires at .* takes the lock over"):
        publish(config, tmp_path, "mock", fake_run, lock_lease=2)
    time.sleep(2.5)  # the lease ends 2 s after the holder's last heartbeat
    version = publish(config, tmp_path, "mock", fake_run, lock_lease=2)
    assert FolderStore(folder).latest() == version
    assert not (folder / LOCK).exists() and not list(folder.glob(f"{LOCK}.*"))


def test_a_live_holders_heartbeat_keeps_its_lock_past_the_lease(tmp_path):
    with FolderStore(tmp_path, lock_lease=1).lock() as lease:
        time.sleep(2.5)
        with pytest.raises(GflowError, match="another publish holds"):
            with FolderStore(tmp_path, lock_lease=1).lock():
                pass
        lease.renew()  # still this run's
    assert not (tmp_path / LOCK).exists()


def test_runs_racing_for_an_expired_lock_take_it_once(tmp_path):
    store = FolderStore(tmp_path, lock_lease=30)
    for _ in range(10):
        (tmp_path / LOCK).write_text(json.dumps(EXPIRED_LOCK))
        assert race_for_the_lock(store.lock, contenders=4) == ["lost"] * 3 + ["won"]
        assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_run_whose_lock_was_taken_over_does_not_commit(tmp_path):
    folder = tmp_path / "mock"

    def run_then_lose_the_lock(config, out):
        fake_run(config, out)
        (folder / LOCK).write_text(json.dumps(USURPER_LOCK))

    with pytest.raises(GflowError, match=rf"lost its lock {re.escape(str(folder / LOCK))}: "
                                         "another publish took it over"):
        publish(load_config(None), tmp_path, "mock", run_then_lose_the_lock, lock_lease=30)
    store = FolderStore(folder)
    assert store.versions() == [] and store.latest() is None
    assert not list(folder.glob(".staging-*"))
    assert json.loads((folder / LOCK).read_text()) == USURPER_LOCK  # left to its holder
