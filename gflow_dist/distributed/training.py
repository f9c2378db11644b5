"""Train ensemble members in a pool of Ray actors, a group of members per actor call.

The members are split into groups of ``ray.members_per_trainer``; an actor trains one
group at a time with :func:`gflow_dist.flows.batched_members.train_members`, as one batched
model (CNF members trained by likelihood) or one after another. A pool rather than one
actor per group: each actor pays its process start and torch import once for all the
groups it takes from the queue. The pool is elastic: all its actors are requested up front
(one per group, at most ``max_concurrent``; on a fixed cluster at most what its nodes hold
at once), so on an autoscaling cluster the pending ones are the demand that adds nodes;
groups go to actors as they start, and actors still pending when the queue is empty are
given up. With no actor up, the pool waits ``ray.resource_wait_s`` (saying what it waits
for) and then fails. ``num_gpus`` may be a fraction, for actors that share a GPU.

Each member's directory is the one the ensemble passes: on storage the driver and every
node see (a local path on one machine, a shared file system on a cluster). With a
checkpoint URI instead, a group trains in the actor's local scratch, each member's files
(its checkpoints among them) are uploaded to ``<uri>/<member dir>/`` every
:data:`~gflow_dist.distributed.checkpoints.SYNC_SECONDS` and when the group ends, and the
driver copies each finished member into its directory. An actor that dies is restarted and
its group retried (``MAX_RESTARTS``); every member resumes from its last checkpoint, in its
directory or at the URI. Every attempt is recorded in each member's ``attempts.json``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from gflow_dist.config import RayConfig
from gflow_dist.distributed.checkpoints import CheckpointStore
from gflow_dist.distributed.cluster import (
    PROGRESS_S,
    Waiting,
    actors_per_cluster,
    check_resources,
    elastic,
    node_resources,
    started,
)
from gflow_dist.errors import GflowError
from gflow_dist.flows.member import HISTORY_FILE, WEIGHTS_FILE
from gflow_dist.upsamplers.base import MemberRunner

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3
"""Restarts of a pool actor that died, and retries of the group it was training."""

TRAINER_NAME = "gflow-member-trainer"
"""Prefix of the pool actors' names (``<prefix>-<run>-<k>``), as ``ray list actors`` shows."""

ATTEMPTS_FILE = "attempts.json"
"""Per member: one entry per attempt (pid, node, start and end [unix s], checkpoints found)."""

SHARED_ARGUMENTS = ("positions", "velocities")
"""Job arguments put in Ray's object store once and shared by every member."""

Group = list[int]
"""The indices of the members one actor call trains together."""


class MemberTrainer:
    """A pool actor: trains the groups of members it is handed, one group at a time.

    Args:
        function: :func:`~gflow_dist.flows.batched_members.train_members`, or a function
            of a list of jobs with its ``directory`` and ``label`` arguments.
        num_cpus: the actor's CPUs; torch uses as many threads.
        checkpoint_uri: where members checkpoint, or None to train in their directories.
    """

    def __init__(self, function: Callable[..., list[Path]], num_cpus: float,
                 checkpoint_uri: str | None) -> None:
        torch.set_num_threads(max(1, int(num_cpus)))
        self.function = function
        self.store = CheckpointStore(checkpoint_uri) if checkpoint_uri else None

    def train(self, group: Group, shared: list[dict[str, Any]],
              jobs: list[dict[str, Any]]) -> Group:
        """Train the members ``group`` (their indices) on ``jobs`` and the arrays behind the
        object refs ``shared``, one dict per member; returns ``group``."""
        import ray

        arguments = [job | {name: ray.get(ref) for name, ref in refs.items()}
                     for job, refs in zip(jobs, shared, strict=True)]
        labels = [f"member {index:02d} seed {job['seed']}" for index, job in zip(group, jobs,
                                                                                  strict=True)]
        directories = [Path(job["directory"]) for job in jobs]
        if self.store is None:
            self._attempt(arguments, directories, labels)
            return group
        with tempfile.TemporaryDirectory(prefix="gflow-members-") as scratch, ExitStack() as sync:
            local = [Path(scratch) / directory.name for directory in directories]
            for directory in local:
                self.store.download(directory.name, directory)
                sync.enter_context(self.store.syncing(directory))
            self._attempt(arguments, local, labels)
        return group

    def _attempt(self, arguments: list[dict[str, Any]], directories: list[Path],
                 labels: list[str]) -> None:
        import ray

        records, attempts = [], []
        for directory in directories:
            directory.mkdir(parents=True, exist_ok=True)
            record = directory / ATTEMPTS_FILE
            history = json.loads(record.read_text()) if record.exists() else []
            history.append({
                "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "started": time.time(), "finished": None,
                "checkpoints": sorted(p.name for p in directory.glob("*.ckpt")),
            })
            record.write_text(json.dumps(history, indent=1))
            records.append(record)
            attempts.append(history)
        self.function([job | {"directory": directory, "label": label} for job, directory, label
                       in zip(arguments, directories, labels, strict=True)])
        for record, history in zip(records, attempts, strict=True):
            history[-1]["finished"] = time.time()
            record.write_text(json.dumps(history, indent=1))


def _best_losses(directory: Path) -> str:
    """The best validation loss of each of a member's flows, from its history file."""
    history = json.loads((directory / HISTORY_FILE).read_text())
    return ", ".join(f"{flow} best validation {curves['best_validation']:.4f}"
                     for flow, curves in history.items())


def pool_size(nodes: Sequence[dict[str, float]] | None, num_cpus: float, num_gpus: float,
              groups: int, max_concurrent: int | None = None) -> int:
    """Actors to request: one per group of members, at most ``max_concurrent`` and, where
    ``nodes`` are all the cluster will ever have (a fixed cluster), at most what they hold
    at once; ``nodes`` None (an autoscaling cluster) bounds it by the work alone. At least 1."""
    size = groups if nodes is None else min(groups,
                                            actors_per_cluster(nodes, num_cpus, num_gpus))
    return max(1, min(size, max_concurrent) if max_concurrent else size)


def ray_member_runner(num_cpus: float = 1.0, num_gpus: float = 0.0,
                      checkpoint_uri: str | None = None,
                      max_concurrent: int | None = None,
                      cluster: RayConfig | None = None,
                      members_per_trainer: int = 1) -> MemberRunner:
    """A runner that trains the members in a pool of Ray actors, in groups.

    Args:
        num_cpus: CPUs per actor (``ray.num_cpus_per_trainer``).
        num_gpus: GPUs per actor, fractions allowed (``ray.num_gpus_per_trainer``).
        checkpoint_uri: pyarrow file system URI or absolute path that checkpoints go to
            (``ray.checkpoint_uri``); None keeps them in the member directories.
        max_concurrent: cap on the pool size; None sizes it from the groups (and, on a
            fixed cluster, what its nodes hold).
        cluster: the ``ray`` section, for ``ray.max_cpus_per_node``,
            ``ray.max_gpus_per_node`` and ``ray.resource_wait_s`` (None: their defaults).
        members_per_trainer: members one actor call trains together
            (``ray.members_per_trainer``).

    Members whose directory already holds their weights are not trained again; the rest
    are split, in order, into groups of ``members_per_trainer``. The returned directories
    are the jobs' ``directory`` arguments, in order.
    """

    def run(function: Callable[..., list[Path]], jobs: Sequence[dict[str, Any]]) -> list[Path]:
        directories = [Path(job["directory"]) for job in jobs]
        todo = [i for i, d in enumerate(directories) if not (d / WEIGHTS_FILE).exists()]
        if todo:
            check_resources(num_cpus, num_gpus, "trainer", cluster)
            store = CheckpointStore(checkpoint_uri) if checkpoint_uri else None
            groups = [todo[i:i + members_per_trainer]
                      for i in range(0, len(todo), members_per_trainer)]
            _train_in_pool(function, jobs, groups, store, num_cpus, num_gpus, max_concurrent,
                           cluster)
        return directories

    return run


def _train_in_pool(function: Callable[..., list[Path]], jobs: Sequence[dict[str, Any]],
                   groups: list[Group], store: CheckpointStore | None, num_cpus: float,
                   num_gpus: float, max_concurrent: int | None,
                   cluster: RayConfig | None) -> None:
    import ray

    stored: dict[int, ray.ObjectRef] = {}  # one object per distinct array, by identity
    shared, rest = {}, {}
    for index in (index for group in groups for index in group):
        for name in SHARED_ARGUMENTS:
            array = jobs[index][name]
            if id(array) not in stored:
                stored[id(array)] = ray.put(array)
        shared[index] = {name: stored[id(jobs[index][name])] for name in SHARED_ARGUMENTS}
        rest[index] = {k: v for k, v in jobs[index].items() if k not in SHARED_ARGUMENTS}
    nodes = None if elastic(cluster) else node_resources()
    size = pool_size(nodes, num_cpus, num_gpus, len(groups), max_concurrent)
    run_id = uuid.uuid4().hex[:8]
    actor_class = ray.remote(MemberTrainer)
    actors = [actor_class.options(num_cpus=num_cpus, num_gpus=num_gpus, name=f"{TRAINER_NAME}-"
                                  f"{run_id}-{k}", max_restarts=MAX_RESTARTS,
                                  max_task_retries=MAX_RESTARTS)
              .remote(function, num_cpus, store.uri if store else None) for k in range(size)]
    logger.info("training %d members in %d groups in up to %d Ray actors (num_cpus=%g, "
                "num_gpus=%g each)", len(shared), len(groups), size, num_cpus, num_gpus)
    try:
        _run_pool(actors, groups, shared, rest, jobs, store, num_cpus, num_gpus, cluster)
    finally:
        for actor in actors:
            ray.kill(actor)


def _run_pool(actors: list[Any], groups: list[Group], shared: dict[int, Any],
              rest: dict[int, dict[str, Any]], jobs: Sequence[dict[str, Any]],
              store: CheckpointStore | None, num_cpus: float, num_gpus: float,
              cluster: RayConfig | None) -> None:
    """Hand each group to the next actor that is up and idle, until all are trained."""
    import ray

    starting = dict(zip(started(actors), range(len(actors)), strict=True))
    running: dict[Any, tuple[int, Group]] = {}  # train ref -> (actor, group)
    idle: list[int] = []
    queue = list(groups)
    members = sum(map(len, groups))
    waiting = Waiting(f"training {members} members",
                      f"{num_cpus:g} CPUs" + (f" and {num_gpus:g} GPUs" if num_gpus else ""),
                      cluster)
    finished = 0
    while queue or running:
        while queue and idle:
            k, group = idle.pop(), queue.pop(0)
            running[actors[k].train.remote(group, [shared[i] for i in group],
                                           [rest[i] for i in group])] = (k, group)
        if not queue and starting:  # nothing left for them: withdraw their demand
            for k in starting.values():
                ray.kill(actors[k])
            starting = {}
        if not running:
            if not starting:
                raise GflowError("every member trainer failed to start")
            waiting.tick()
        done, _ = ray.wait([*running, *starting], num_returns=1, timeout=PROGRESS_S / 3)
        for ref in done:
            if ref in starting:
                k = starting.pop(ref)
                ray.get(ref)  # raises if its constructor failed
                idle.append(k)
                logger.info("member trainer %d is up (%d of %d)", k,
                            len(actors) - len(starting), len(actors))
                continue
            k, group = running.pop(ref)
            ray.get(ref)
            idle.append(k)
            for index in group:
                finished += 1
                directory = Path(jobs[index]["directory"])
                if store is not None:
                    store.download(directory.name, directory)
                logger.info("member %02d: trained (%d/%d), %s -> %s", index, finished,
                            members, _best_losses(directory), directory)
