"""Fault injection for the crash tests: a process that kills itself at a named point.

With the environment variable :data:`KILL_AT` set to one of the :data:`KILL_POINTS`, the
process sends itself SIGKILL when it reaches that point: no ``finally``, no clean-up, as
when a node is lost or the kernel's OOM killer strikes. ``tests/test_interrupted_runs.py``
kills a run at each point and checks that the rerun finishes with the same outputs, byte
for byte. Unset (always, outside those tests), a point costs one look-up. It is meant
for runs with the in-process runners: a Ray worker that inherits the variable dies at
the point again each time Ray retries it.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "GFLOW_KILL_AT"
"""The environment variable that names the point to die at."""

KILL_POINTS = {
    "ingest": "the particles are written in their staging folder, the summary and the "
              "ingest key not yet",
    "member-epoch": "a CNF member trained in a batched group wrote its epoch checkpoint, the "
                    "other members of the group not yet",
    "flow-epoch": "a flow trained alone wrote its epoch checkpoint: a classifier of the "
                  "evaluation, or an ensemble member that does not train batched",
    "shard": "a catalog shard's star file and record are complete",
    "partitions": "the catalog's partitions are written in its staging folder",
    "margin": "the margin cache is written in the catalog's staging folder",
    "index": "the star_id index is written in the catalog's staging folder, which is "
             "not yet published",
}
"""Every point, and what is written when the process dies there."""


def kill_point(name: str) -> None:
    """SIGKILL this process if :data:`KILL_AT` names ``name`` (one of :data:`KILL_POINTS`)."""
    if name not in KILL_POINTS:
        raise ValueError(f"unknown kill point {name!r}; known: {sorted(KILL_POINTS)}")
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
