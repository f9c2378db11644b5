"""Publishing to an S3 bucket: the same guarantees as a folder, over the S3 API.

The bucket is served by moto's S3 server on 127.0.0.1 (the ``s3`` fixture of conftest.py),
reached over HTTP by boto3 with the same environment variables the cluster's bucket Secret
sets (AWS_ENDPOINT_URL and keys).
"""

from __future__ import annotations

import json
import time

import pytest

from gflow_dist.cli import main
from gflow_dist.config import load_config
from gflow_dist.errors import EXIT_INPUT, GflowError
from gflow_dist.release.stores import S3Store
from gflow_dist.release.versions import list_versions, publish
from tests.conftest import BUCKET
from tests.release.test_publish import (
    EXPIRED_LOCK,
    USURPER_LOCK,
    fake_run,
    kill_while_holding_the_lock,
    race_for_the_lock,
    rollback_during_retention,
)

TINY = [
    "--set", "upsamplers=[enbid]", "--set", "galaxy.mock.n_particles=1200",
    "--set", "sample.total=2000", "--set", "evaluate.enabled=false",
]


def _keys(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def _latest(client, prefix):
    body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/mock/latest.json")["Body"].read()
    return json.loads(body)["version"]


@pytest.mark.ray
def test_s3_publish_switches_latest_reruns_as_a_no_op_keeps_latest_on_failure_and_retains(
        ray_cluster, s3, tmp_path, capsys):
    client, root = s3
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    staging = tmp_path / "staging"

    def publish_cli(*extra):
        return main(["publish", "configs/mock.yaml", "--out", root, "--name", "mock",
                     "--staging", str(staging), *TINY, *extra])

    assert publish_cli() == 0
    first = _latest(client, prefix)
    manifest = json.loads(client.get_object(
        Bucket=BUCKET, Key=f"{prefix}/mock/{first}/manifest.json")["Body"].read())
    assert manifest["uri"] == f"{root}/mock/{first}"
    assert sum(manifest["stars_per_pixel"]["enbid"].values()) == 2000
    uploaded = _keys(client, f"{prefix}/mock/{first}/")
    assert f"{prefix}/mock/{first}/catalog/enbid/hats/hats.properties" in uploaded
    assert any(key.endswith(".parquet") for key in uploaded)
    assert not list(staging.iterdir())  # the staged run is gone once uploaded

    assert publish_cli() == 0
    assert "nothing to do" in capsys.readouterr().err

    assert publish_cli("--force") == 0
    second = _latest(client, prefix)
    assert second != first

    missing = tmp_path / "nowhere.parquet"
    assert publish_cli("--force", "--set", f"galaxy.source={missing}") == EXIT_INPUT
    assert _latest(client, prefix) == second  # a failed run leaves latest as it was
    store = S3Store(f"{root}/mock", staging)
    assert store.versions() == [first, second]
    assert f"{prefix}/mock/.lock" not in _keys(client, prefix)

    assert publish_cli("--force", "--keep", "2") == 0
    third = _latest(client, prefix)
    assert store.versions() == [second, third]
    assert _keys(client, f"{prefix}/mock/{first}/") == []

    capsys.readouterr()
    assert main(["versions", f"{root}/mock", "--rollback", second]) == 0
    assert _latest(client, prefix) == second
    out = capsys.readouterr().out
    assert f"* {second}" in out and f"latest: {root}/mock/{second}" in out


def test_s3_a_rollback_racing_a_publish_cannot_point_latest_at_a_version_it_deletes(
        s3, tmp_path, monkeypatch, capsys):
    client, root = s3
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    (first, second, third), statuses = rollback_during_retention(
        monkeypatch, S3Store, f"{root}/mock",
        lambda: publish(load_config(None), root, "mock", fake_run, keep=2, force=True,
                        staging_root=tmp_path))
    assert statuses == {first: EXIT_INPUT}  # refused: the publish holds the lock
    assert f"another publish holds {root}/mock/.lock" in capsys.readouterr().err
    assert S3Store(f"{root}/mock", None).versions() == [second, third]
    assert _latest(client, prefix) == third
    assert f"{prefix}/mock/.lock" not in _keys(client, prefix)
    assert main(["versions", f"{root}/mock", "--rollback", second]) == 0  # once it is done
    assert _latest(client, prefix) == second
    assert f"{prefix}/mock/.lock" not in _keys(client, prefix)


def test_s3_lock_is_a_conditional_put_that_refuses_a_second_run(s3, tmp_path):
    client, root = s3
    store = S3Store(root, tmp_path)
    with store.lock():
        with pytest.raises(GflowError, match=r"another publish holds .*\(pid \d+ on "):
            with S3Store(root, tmp_path).lock():
                pass
    assert not any(key.endswith("/.lock") for key in _keys(client))


def test_an_interrupted_upload_leaves_no_version_and_leftovers_are_cleaned(s3, tmp_path):
    client, root = s3
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    store = S3Store(root, tmp_path)
    staging = store.staging("v=2")
    (staging / "catalog").mkdir(parents=True)
    for index in range(20):
        (staging / "catalog" / f"part-{index:02d}.parquet").write_bytes(b"x" * 1000)
    (staging / "catalog" / "zz-lost.parquet").symlink_to(tmp_path / "gone")  # unreadable
    with pytest.raises(FileNotFoundError):
        store.commit(staging, "v=2", {"version": "v=2"})
    assert store.versions() == []  # whatever was uploaded has no manifest
    with pytest.raises(GflowError, match="is not a published version"):
        store.point_latest("v=2")
    store.discard(staging, "v=2")
    assert _keys(client, f"{prefix}/v=2/") == [] and not staging.exists()

    # A run killed mid-upload (no chance to discard) leaves objects and a staging folder:
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/v=3/catalog/part.parquet", Body=b"x")
    (tmp_path / ".staging-v=3").mkdir()
    assert store.versions() == [] and store.latest() is None
    assert store.leftovers() == ["v=3", ".staging-v=3"]
    assert _keys(client, prefix) == [] and not (tmp_path / ".staging-v=3").exists()


def test_s3_publishing_needs_a_staging_folder(s3):
    _, root = s3

    def never_run(config, out):
        raise AssertionError("the run must not start without a staging folder")

    with pytest.raises(GflowError, match="needs --staging DIR"):
        publish(load_config(None), root, "mock", never_run)
    assert list_versions(S3Store(f"{root}/mock", None)) == []


def test_s3_a_killed_holders_lock_refuses_until_its_lease_expires_then_is_taken_over(
        s3, tmp_path):
    client, root = s3
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    pid = kill_while_holding_the_lock(f"{root}/mock", lock_lease=2)
    with pytest.raises(GflowError, match=rf"another publish holds {root}/mock/\.lock \(pid {pid} "
                                         "on .*lease expires at .* takes the lock over"):
        publish(load_config(None), root, "mock", fake_run, staging_root=tmp_path, lock_lease=2)
    time.sleep(2.5)  # the lease ends 2 s after the holder's last heartbeat
    version = publish(load_config(None), root, "mock", fake_run, staging_root=tmp_path,
                      lock_lease=2)
    assert _latest(client, prefix) == version
    assert f"{prefix}/mock/.lock" not in _keys(client, prefix)


def test_s3_a_live_holders_heartbeat_keeps_its_lock_past_the_lease(s3, tmp_path):
    client, root = s3
    with S3Store(root, tmp_path, lock_lease=1).lock() as lease:
        time.sleep(2.5)
        with pytest.raises(GflowError, match="another publish holds"):
            with S3Store(root, tmp_path, lock_lease=1).lock():
                pass
        lease.renew()  # still this run's
    assert not any(key.endswith("/.lock") for key in _keys(client))


def test_s3_runs_racing_for_an_expired_lock_take_it_once(s3, tmp_path):
    client, root = s3
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    store = S3Store(root, tmp_path, lock_lease=30)
    for _ in range(10):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/.lock", Body=json.dumps(EXPIRED_LOCK))
        assert race_for_the_lock(store.lock, contenders=4) == ["lost"] * 3 + ["won"]
        assert _keys(client, prefix) == []


def test_s3_a_run_whose_lock_was_taken_over_does_not_commit(s3, tmp_path):
    client, root = s3
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    lock = f"{prefix}/mock/.lock"

    def run_then_lose_the_lock(config, out):
        fake_run(config, out)
        client.put_object(Bucket=BUCKET, Key=lock, Body=json.dumps(USURPER_LOCK))

    with pytest.raises(GflowError, match=rf"lost its lock {root}/mock/\.lock: another publish "
                                         "took it over"):
        publish(load_config(None), root, "mock", run_then_lose_the_lock, staging_root=tmp_path,
                lock_lease=30)
    assert S3Store(f"{root}/mock", tmp_path).versions() == []
    assert _keys(client, prefix) == [lock]  # nothing uploaded, and the lock left to its holder
    assert json.loads(client.get_object(Bucket=BUCKET, Key=lock)["Body"].read()) == USURPER_LOCK
    assert not list(tmp_path.iterdir())  # the staged run is discarded
