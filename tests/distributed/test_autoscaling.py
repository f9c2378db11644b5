"""The Ray stages on a cluster that starts with no workers: Ray's fake multi-node autoscaler.

The cluster is a head of 0 CPUs (as on KubeRay) and worker types the autoscaler starts on
demand: ``cpu`` (2 CPUs, 0 to 2 nodes) and ``gpu`` (2 CPUs and 1 fake GPU, 0 to 1 node).
It is started with ``ray start`` on ports of its own and a temp dir of its own, and
stopped by killing exactly the processes it started (never ``ray stop``, which would stop
every Ray cluster of the user on this machine). The run is a subprocess, so it does not
meet the session's in-process Ray (the ``ray_cluster`` fixture).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from gflow_dist.config import RayConfig
from gflow_dist.distributed.cluster import check_resources, wait_for_node
from gflow_dist.errors import GflowError
from tests.test_pipeline import SMALL_RUN

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))

STARS = 5000


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster_config(gcs_address: str) -> dict:
    return {
        "cluster_name": f"gflow-fake-{os.getpid()}",
        "max_workers": 3,
        "upscaling_speed": 2.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            # the fake provider's head is of this type
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {},
                                 "max_workers": 0},
            "cpu": {"resources": {"CPU": 2, "object_store_memory": 150 * 2**20},
                    "node_config": {}, "min_workers": 0, "max_workers": 2},
            "gpu": {"resources": {"CPU": 2, "GPU": 1, "object_store_memory": 150 * 2**20},
                    "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


TOKEN = secrets.token_hex(32)
"""The test cluster's own Ray auth token (Ray 2.60's ``ray start`` turns token auth on)."""


def _env(**extra: str) -> dict[str, str]:
    """The environment of the cluster and of every process that connects to it."""
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
                        "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO),
                        "RAY_DEDUP_LOGS": "0"} | extra
    env.pop("RAY_ADDRESS", None)
    return env


def _our_pids(markers: list[str]) -> list[int]:
    """Processes of this user whose command line names one of ``markers``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(marker in command for marker in markers):
            pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def autoscaling_cluster():
    """The address of a fake autoscaling cluster with no workers; stopped afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="gfa", dir="/tmp"))
    (gcs, client, node_manager, object_manager, agent_listen, agent_grpc, metrics,
     runtime_env) = _free_ports(8)
    address = f"127.0.0.1:{gcs}"
    config = temp / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(_cluster_config(address)))
    env = _env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    start = subprocess.run(
        [RAY, "start", "--head", f"--autoscaling-config={config}", "--num-cpus=0",
         "--node-ip-address=127.0.0.1", f"--port={gcs}", f"--ray-client-server-port={client}",
         f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
         f"--dashboard-agent-listen-port={agent_listen}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}", "--include-dashboard=false",
         f"--temp-dir={temp}", "--object-store-memory=100000000", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    markers = [str(temp), address]
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield address
    finally:
        for _ in range(3):  # the monitor may start a node while the others stop
            pids = _our_pids(markers)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)
        shutil.rmtree(temp, ignore_errors=True)


def _nodes(address: str) -> list[dict]:
    """The cluster's nodes as its own driver sees them (a subprocess: no session here)."""
    script = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
              "print('NODES', json.dumps([{'alive': n['Alive'], 'resources': n['Resources']} "
              "for n in ray.nodes()]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert done.returncode == 0, done.stderr
    # the driver may also print the autoscaler's events ("Resized to 0 CPUs.") on stdout
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("NODES ")]
    return json.loads(line.removeprefix("NODES "))


@pytest.mark.ray
def test_a_run_scales_a_cluster_up_from_no_workers(autoscaling_cluster, tmp_path):
    assert [n["resources"].get("CPU", 0) for n in _nodes(autoscaling_cluster)] == [0]
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "gflow_dist.cli", "run", "configs/mock.yaml", "--out", str(out),
         "--address", autoscaling_cluster, *SMALL_RUN,
         "--set", "ray.num_gpus_per_classifier=1", "--set", "ray.resource_wait_s=240"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-5000:]
    assert "waiting for a node" in run.stderr or "is up" in run.stderr

    nodes = [n for n in _nodes(autoscaling_cluster) if n["alive"]]
    workers = [n["resources"] for n in nodes if n["resources"].get("CPU", 0) > 0]
    assert workers, f"the autoscaler started no worker: {nodes}"
    assert any(w.get("GPU", 0) >= 1 for w in workers), "the classifier's GPU node never came"

    hats = out / "catalog" / "cnf" / "hats"
    ids = pq.read_table(hats / "dataset", columns=["star_id"]).column(0).to_numpy()
    assert len(ids) == STARS
    np.testing.assert_array_equal(np.sort(ids), np.arange(STARS))


@pytest.mark.ray
def test_a_request_no_node_type_holds_fails_at_once_naming_the_key(ray_cluster):
    start = time.monotonic()
    no_gpus = RayConfig(max_gpus_per_node=0)
    with pytest.raises(GflowError, match=r"ray\.num_gpus_per_trainer=1 .*ray\.max_gpus_per_node"):
        check_resources(1, 1, "trainer", no_gpus)
    small = RayConfig(max_cpus_per_node=4)
    with pytest.raises(GflowError, match=r"ray\.num_cpus_per_sampler=8 .*ray\.max_cpus_per_node"):
        check_resources(8, 0, "sampler", small)
    check_resources(4, 0, "sampler", small)  # not up now, but a node may come: no error
    assert time.monotonic() - start < 5


@pytest.mark.ray
def test_a_node_that_never_comes_fails_after_the_wait_naming_it(ray_cluster):
    config = RayConfig(max_cpus_per_node=4, resource_wait_s=2)
    start = time.monotonic()
    with pytest.raises(GflowError, match=r"4 CPUs.*ray\.resource_wait_s=2"):
        wait_for_node(4, 0, "drawing 3 catalog shards", config)
    assert 2 <= time.monotonic() - start < 10
    wait_for_node(1, 0, "drawing 3 catalog shards", config)  # fits now: returns at once
