"""Connecting to Ray (a local cluster by default, or ``--address`` / ``RAY_ADDRESS``) and
checking what its nodes hold."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from gflow_dist.errors import AccessError, GflowError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
"""How long a cluster address may take to accept a connection [s] before it counts as down."""


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
    ``ray start`` left on the machine. A given address must answer within
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


def check_resources(num_cpus: float, num_gpus: float, role: str = "member") -> None:
    """Fail fast when no node could ever hold a worker of this size.

    A worker that asks for a GPU on a CPU-only cluster would otherwise stay pending
    forever. ``role`` names the config keys in the message: ``ray.num_cpus_per_<role>``
    and ``ray.num_gpus_per_<role>``.
    """
    nodes = node_resources()
    if actors_per_cluster(nodes, num_cpus, num_gpus) > 0:
        return
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    most_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    if num_gpus > most_gpus:
        fix = ("set it to 0 on CPU-only clusters" if most_gpus == 0
               else f"set it to at most {most_gpus:g}")
        raise GflowError(f"ray.num_gpus_per_{role}={num_gpus:g} but no node of the cluster has "
                         f"more than {most_gpus:g} GPUs; {fix}")
    raise GflowError(f"ray.num_cpus_per_{role}={num_cpus:g} (with ray.num_gpus_per_{role}="
                     f"{num_gpus:g}) fits on no node: the largest has {most_cpus:g} CPUs; "
                     f"lower ray.num_cpus_per_{role}")
