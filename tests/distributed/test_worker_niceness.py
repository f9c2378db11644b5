"""The workers of the private local cluster that ``gflow`` starts run at the command's own
priority (``LOCAL_WORKER_NICENESS``), not at Ray's default of 15 steps nicer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gflow_dist.distributed.cluster import LOCAL_WORKER_NICENESS, WORKER_NICENESS_VARIABLE

NICENESS_OF_A_TASK_AND_AN_ACTOR = """
import json, os, ray
from gflow_dist.distributed.cluster import ray_session

@ray.remote
def niceness():
    return os.nice(0)

@ray.remote
class Worker:
    def niceness(self):
        return os.nice(0)

with ray_session():
    print(json.dumps({"driver": os.nice(0), "task": ray.get(niceness.remote()),
                      "actor": ray.get(Worker.remote().niceness.remote())}))
"""


@pytest.mark.ray
def test_a_local_clusters_workers_run_as_nice_as_the_command():
    # a process of its own: ray_session starts a private cluster only where none runs
    environment = {key: value for key, value in os.environ.items()
                   if key not in (WORKER_NICENESS_VARIABLE, "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", NICENESS_OF_A_TASK_AND_AN_ACTOR],
                          capture_output=True, text=True, env=environment, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    niceness = json.loads(done.stdout.splitlines()[-1])
    expected = niceness["driver"] + LOCAL_WORKER_NICENESS
    assert niceness == {"driver": niceness["driver"], "task": expected, "actor": expected}
