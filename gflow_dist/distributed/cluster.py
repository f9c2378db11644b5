"""Connecting to Ray (a local cluster by default, or ``--address`` / ``RAY_ADDRESS``) and
checking what its nodes hold."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from gflow_dist.config import RayConfig
from gflow_dist.errors import AccessError, GflowError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""How long a cluster address may take to accept a connection [s] before it counts as down."""

PROGRESS_S = 15.0
"""How often a stage waiting for nodes says what it waits for [s]."""

WORKER_NICENESS_VARIABLE = "RAY_worker_niceness"
LOCAL_WORKER_NICENESS = 0
"""How much nicer than the ``gflow`` command the workers of a private local cluster run:
Ray's ``worker_niceness``, which each worker adds to the niceness it inherits (Ray's
default 15). At 0 they run at the command's priority, so on a shared machine they are not
starved by every other process; ``nice -n N gflow ...`` lowers them all together, and a
``RAY_worker_niceness`` in the environment overrides it (docs/operations.md, "Worker
priority")."""


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise AccessError unless ``address`` (``host:port`` or ``ray://host:port``) answers.

    Ray itself retries a dead address for minutes; this fails within ``timeout_s``.
    ``auto`` (the cluster ``ray start`` left on this machine) is left to Ray.
    """
    match = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)/?", address)
    if match is None:
        if address == "auto":
            return
        raise AccessError(f"Ray address {address!r} is not host:port or ray://host:port; fix "
                          "--address, ray.address or RAY_ADDRESS")
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        reason = error.strerror or "timed out"
        raise AccessError(f"the Ray cluster at {address} does not answer ({reason}, waited at "
                          f"most {timeout_s:g} s); start it, fix "
                          "--address, ray.address or RAY_ADDRESS, or leave them unset to run "
                          "on a private local cluster") from None


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the running Ray session, or connect to ``address``, or start a private one.

    ``address`` None falls back to ``RAY_ADDRESS``; without either, a new local cluster
    is started for this process alone (``address="local"``), never a cluster that
    ``ray start`` left on the machine; its workers run at this process's niceness
    (:data:`LOCAL_WORKER_NICENESS`). A given address must answer within
    :data:`CONNECT_TIMEOUT_S`. A session this function started is shut down on exit.
    Ray's log deduplication is turned off (unless ``RAY_DEDUP_LOGS`` is set) before Ray is
    first imported, because it would swallow the progress lines of all but one ensemble
    member.
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address)
    else:  # the raylet that ray.init starts inherits it, and every worker from the raylet
        os.environ.setdefault(WORKER_NICENESS_VARIABLE, str(LOCAL_WORKER_NICENESS))
    try:
        ray.init(address=address or "local", include_dashboard=False,
                 logging_level=logging.WARNING, configure_logging=True)
    except ConnectionError as error:
        raise AccessError(f"cannot connect to the Ray cluster at {address or 'local'}: "
                          f"{error}; fix --address, ray.address or RAY_ADDRESS") from None
    logger.info("Ray resources: %s", ray.cluster_resources())
    try:
        yield
    finally:
        ray.shutdown()


def actors_per_cluster(nodes: Sequence[Mapping[str, float]], num_cpus: float,
                       num_gpus: float) -> int:
    """How many workers of ``num_cpus`` CPUs and ``num_gpus`` GPUs the nodes hold at once.

    Counted node by node (a worker lives on one node), each node holding the fewer of its
    CPU and GPU share: 16 CPUs and 1 GPU hold 4 workers of (1 CPU, 0.25 GPU).
    """
    total = 0
    for resources in nodes:
        fits = math.floor(resources.get("CPU", 0.0) / num_cpus + 1e-9)
        if num_gpus > 0:
            fits = min(fits, math.floor(resources.get("GPU", 0.0) / num_gpus + 1e-9))
        total += fits
    return total


def node_resources() -> list[dict[str, float]]:
    """The total resources of every live node of the connected cluster."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def autoscaler_running() -> bool:
    """Whether an autoscaler manages the connected cluster (it may add nodes).

    Ray's v1 autoscaler writes its report to the GCS key-value store every update
    (``ray status`` reads it); the v2 autoscaler marks itself there. A plain local
    ``ray.init`` (or ``ray start`` without ``--autoscaling-config``) runs the v1 monitor
    in read-only mode, which only mirrors the live nodes: each node is its own type
    ``node_<node id>``, and no node can be added.
    """
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        if not _internal_kv_initialized():
            return False
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = json.loads(status).get("autoscaler_report") if status else None
        if report:
            mapping = report.get("node_type_mapping") or {}
            mirrored = all(kind == f"node_{node}" for node, kind in mapping.items())
            return not mirrored or bool(report.get("pending_launches"))
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001 - an unreadable status is a cluster without one
        logger.debug("cannot read the autoscaler's status", exc_info=True)
        return False


def elastic(config: RayConfig | None) -> bool:
    """Whether nodes may yet be added: an autoscaler runs, or the operator set
    ``ray.max_cpus_per_node`` / ``ray.max_gpus_per_node`` (the largest node it may add)."""
    if config is not None and (config.max_cpus_per_node is not None
                               or config.max_gpus_per_node is not None):
        return True
    return autoscaler_running()


def _fits_live_node(num_cpus: float, num_gpus: float) -> bool:
    return actors_per_cluster(node_resources(), num_cpus, num_gpus) > 0


def check_resources(num_cpus: float, num_gpus: float, role: str = "trainer",
                    config: RayConfig | None = None) -> None:
    """Fail fast when no node the cluster could ever have holds a worker of this size.

    A worker that asks for a GPU on a CPU-only cluster would otherwise stay pending
    forever. What the cluster could ever hold: ``ray.max_cpus_per_node`` and
    ``ray.max_gpus_per_node`` where the operator set them; otherwise, on a cluster an
    autoscaler manages, anything (the autoscaler's node types are not visible to the
    driver: the stage then waits up to ``ray.resource_wait_s``); on a fixed cluster, its
    live nodes. ``role`` names the config keys in the message: ``ray.num_cpus_per_<role>``
    and ``ray.num_gpus_per_<role>``.
    """
    nodes = node_resources()
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    most_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    cpu_key, gpu_key = f"ray.num_cpus_per_{role}", f"ray.num_gpus_per_{role}"
    if config is not None and config.max_gpus_per_node is not None \
            and num_gpus > config.max_gpus_per_node:
        fix = ("set it to 0" if config.max_gpus_per_node == 0
               else f"set it to at most {config.max_gpus_per_node:g}")
        raise GflowError(f"{gpu_key}={num_gpus:g} but ray.max_gpus_per_node="
                         f"{config.max_gpus_per_node:g}: no node the cluster may have holds "
                         f"it; {fix}, or raise ray.max_gpus_per_node if larger nodes exist")
    if config is not None and config.max_cpus_per_node is not None \
            and num_cpus > config.max_cpus_per_node:
        raise GflowError(f"{cpu_key}={num_cpus:g} but ray.max_cpus_per_node="
                         f"{config.max_cpus_per_node:g}: no node the cluster may have holds "
                         f"it; lower {cpu_key}, or raise ray.max_cpus_per_node if larger "
                         "nodes exist")
    if actors_per_cluster(nodes, num_cpus, num_gpus) > 0 or elastic(config):
        return
    if num_gpus > most_gpus:
        fix = ("set it to 0 on CPU-only clusters" if most_gpus == 0
               else f"set it to at most {most_gpus:g}")
        raise GflowError(f"{gpu_key}={num_gpus:g} but no node of the cluster has "
                         f"more than {most_gpus:g} GPUs; {fix} (on an autoscaling cluster, "
                         "set ray.max_gpus_per_node)")
    raise GflowError(f"{cpu_key}={num_cpus:g} (with {gpu_key}="
                     f"{num_gpus:g}) fits on no node: the largest has {most_cpus:g} CPUs; "
                     f"lower {cpu_key} (on an autoscaling cluster, set ray.max_cpus_per_node)")


def _describe(num_cpus: float, num_gpus: float) -> str:
    return f"{num_cpus:g} CPUs" + (f" and {num_gpus:g} GPUs" if num_gpus else "")


def wait_for_node(num_cpus: float, num_gpus: float, what: str,
                  config: RayConfig | None = None) -> None:
    """Return once a live node holds one worker of this size, asking the autoscaler for one.

    The request goes through ``ray.autoscaler.sdk.request_resources`` (withdrawn once the
    node is up: the stage's own pending work is then the demand). Logs what it waits for
    every :data:`PROGRESS_S` and fails after ``ray.resource_wait_s``.
    """
    if _fits_live_node(num_cpus, num_gpus):
        return
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": num_cpus} | ({"GPU": num_gpus} if num_gpus else {})
    request_resources(bundles=[bundle])
    try:
        waiting = Waiting(what, _describe(num_cpus, num_gpus), config)
        while not _fits_live_node(num_cpus, num_gpus):
            waiting.tick()
            time.sleep(1.0)
    finally:
        request_resources(bundles=[])
    logger.info("%s: a node with %s is up", what, _describe(num_cpus, num_gpus))


class Waiting:
    """Progress and deadline of a stage waiting for workers that are not up yet.

    Args:
        what: the stage's work, as the log line names it ("2 member trainers").
        each: what one worker needs ("1 CPUs").
        config: ``ray.resource_wait_s`` (default 600 s).
    """

    def __init__(self, what: str, each: str, config: RayConfig | None) -> None:
        self.what, self.each = what, each
        self.limit = config.resource_wait_s if config is not None else RayConfig().resource_wait_s
        self.start = time.monotonic()
        self.said = self.start  # silent for the first PROGRESS_S: workers take seconds to start

    def tick(self) -> None:
        """Log progress now and then; raise GflowError past the limit."""
        now = time.monotonic()
        waited = now - self.start
        if waited > self.limit:
            raise GflowError(
                f"{self.what}: no node with {self.each} came up within ray.resource_wait_s="
                f"{self.limit:g} s; check that the autoscaler may add such a node (its worker "
                "types and max replicas), lower the request, or raise ray.resource_wait_s")
        if now - self.said >= PROGRESS_S:
            logger.info("%s: waiting for a node with %s (workers still starting, or the "
                        "autoscaler adding a node), %.0f of ray.resource_wait_s=%g s",
                        self.what, self.each, waited, self.limit)
            self.said = now


def started(actors: Sequence[Any]) -> list[Any]:
    """One ref per actor that resolves once the actor is up (its constructor ran)."""
    return [actor.__ray_ready__.remote() for actor in actors]
