"""Train ensemble members as Ray tasks, in parallel, each resuming from its checkpoint.

Every member is one task running :func:`gflow_dist.flows.member.train_member` unchanged.
Its directory must be on storage every node sees (a local path on one machine, a shared
file system on a cluster); a task whose worker dies is retried and resumes from the
member's last epoch checkpoint. Ray queues tasks beyond the cluster's capacity, so the
number of members never exceeds what the cluster can hold at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gflow_dist.distributed.cluster import check_resources
from gflow_dist.upsamplers.base import MemberRunner

MAX_RETRIES = 3
"""Retries of a member whose worker died; each resumes from its checkpoint."""


def ray_member_runner(num_cpus: float = 1.0, num_gpus: float = 0.0) -> MemberRunner:
    """A runner that trains every member as a Ray task with these resources."""

    def run(function: Callable[..., Path], jobs: Sequence[dict[str, Any]]) -> list[Path]:
        import ray

        check_resources(num_cpus, num_gpus)
        remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                            max_retries=MAX_RETRIES, retry_exceptions=False)(function)
        shared = {}
        for key in ("positions", "velocities"):
            shared[key] = ray.put(jobs[0][key]) if jobs else None
        futures = []
        for job in jobs:
            arguments = dict(job)
            for key, reference in shared.items():
                if arguments[key] is jobs[0][key]:
                    arguments[key] = reference
            futures.append(remote.remote(**arguments))
        return [Path(directory) for directory in ray.get(futures)]

    return run
