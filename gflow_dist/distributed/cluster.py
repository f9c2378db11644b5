"""Connecting to Ray: a local cluster by default, or ``--address`` / ``RAY_ADDRESS``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Use the running Ray session, or connect to ``address``, or start a local one.

    ``address`` None falls back to ``RAY_ADDRESS`` and then to a new local cluster.
    A session this function started is shut down on exit.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
             configure_logging=True)
    logger.info("Ray resources: %s", ray.cluster_resources())
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(num_cpus: float, num_gpus: float) -> None:
    """Fail fast when no node could ever hold a task of this size.

    A task that asks for a GPU on a CPU-only cluster would otherwise stay pending forever.
    """
    import ray

    available = ray.cluster_resources()
    if num_gpus > available.get("GPU", 0.0):
        raise RuntimeError(
            f"ray.num_gpus_per_member={num_gpus} but the cluster has "
            f"{available.get('GPU', 0.0)} GPUs; set it to 0 on CPU-only clusters"
        )
    if num_cpus > available.get("CPU", 0.0):
        raise RuntimeError(
            f"ray.num_cpus_per_member={num_cpus} but the cluster has "
            f"{available.get('CPU', 0.0)} CPUs"
        )
