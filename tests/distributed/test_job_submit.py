"""``ray job submit`` of ``gflow run`` to a local head with Ray's token authentication on.

The head is a separate ``ray start --head --block`` process on free ports and its own temp
dir, so it coexists with the session's ``ray_cluster``. It is stopped by signalling that
process (which takes its Ray processes down with it), never with ``ray stop``, which kills
every Ray process on the machine.
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
EXCLUDES = json.dumps({"excludes": [".venv", "runs", ".git", "benchmarks"]})
TINY_RUN = ["--set", "upsamplers=[enbid]", "--set", "galaxy.mock.n_particles=1500",
            "--set", "sample.total=2000", "--set", "evaluate.enabled=false",
            "--set", "catalog.max_rows_per_partition=1000"]
PORT_OPTIONS = ["--port", "--dashboard-port", "--ray-client-server-port",
                "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                "--runtime-env-agent-port", "--metrics-export-port", "--node-manager-port",
                "--object-manager-port"]
START_SECONDS = 120


@dataclass(frozen=True)
class Head:
    dashboard: str
    """The job-submission address, http://127.0.0.1:<dashboard port>."""
    token: str
    token_file: Path


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _environment(**auth: str) -> dict[str, str]:
    """This process's environment without Ray settings, the venv first on PATH, plus auth."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | auth


def _wait_for_dashboard(url: str, head: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # answered (401 without a token): it is up
        except OSError:
            time.sleep(1)
    pytest.fail(f"the dashboard at {url} did not answer within {START_SECONDS} s")


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A 2-CPU head with RAY_AUTH_MODE=token; the token is in its environment."""
    token = secrets.token_hex(32)
    folder = Path(tempfile.mkdtemp(prefix="gfjob", dir="/tmp"))  # short: socket path limit
    token_file = folder / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    ports = _free_ports(len(PORT_OPTIONS))
    command = [RAY, "start", "--head", "--block", "--num-cpus", "2",
               "--temp-dir", str(folder / "ray"), "--include-dashboard", "true",
               "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    for option, port in zip(PORT_OPTIONS, ports, strict=True):
        command += [option, str(port)]
    log = folder / "head.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=_environment(RAY_AUTH_MODE="token",
                                                             RAY_AUTH_TOKEN=token),
                                   stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{ports[1]}"
    try:
        _wait_for_dashboard(url, process, log)
        yield Head(url, token, token_file)
    finally:
        process.send_signal(signal.SIGTERM)  # the --block process stops its Ray processes
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _submit(head: Head, entrypoint: list[str], env: dict[str, str],
            *options: str) -> subprocess.CompletedProcess:
    command = [RAY, "job", "submit", "--address", head.dashboard, *options, "--", *entrypoint]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.ray
def test_gflow_run_submitted_as_a_ray_job_with_the_token_writes_its_outputs(head, tmp_path):
    out = tmp_path / "run"
    result = _submit(head, ["gflow", "run", "configs/mock.yaml", "--out", str(out), *TINY_RUN],
                     _environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_file)),
                     "--working-dir", ".", "--runtime-env-json", EXCLUDES)
    logs = result.stdout + result.stderr
    assert result.returncode == 0, logs[-4000:]
    assert "succeeded" in logs and "enbid: HATS catalog of 2,000 stars" in logs
    assert pq.read_table(out / "catalog" / "enbid" / "hats" / "dataset").num_rows == 2000
    assert (out / "catalog" / "enbid" / "hats" / "hats.properties").exists()
    assert (out / "models" / "enbid" / "spec.json").exists()
    assert json.loads((out / "run.json").read_text())["seed"] == "0"


@pytest.mark.ray
def test_a_submit_without_the_token_is_refused(head, tmp_path):
    entrypoint = ["touch", str(tmp_path / "ran")]
    missing = _submit(head, entrypoint, _environment(RAY_AUTH_MODE="disabled"))
    assert missing.returncode != 0
    assert "Missing authentication token" in missing.stderr + missing.stdout
    wrong = _submit(head, entrypoint, _environment(RAY_AUTH_MODE="token",
                                                   RAY_AUTH_TOKEN=secrets.token_hex(32)))
    assert wrong.returncode != 0
    assert "Invalid authentication token" in wrong.stderr + wrong.stdout
    assert not (tmp_path / "ran").exists()
