"""Versioned, atomic publishing of regeneration runs: ``gflow publish`` and ``gflow versions``.

Layout of a catalog location ``ROOT/<name>`` (a folder, or an S3 prefix; see
:mod:`gflow_dist.release.stores`)::

    ROOT/<name>/v=<UTC time>-<config hash>/   one complete ``gflow run`` output, immutable
    ROOT/<name>/v=.../manifest.json           config hash, model hashes, code version,
                                              stars per partition pixel, start and end
    ROOT/<name>/latest (folder: a symlink)    the version readers open
    ROOT/<name>/latest.json (S3: an object)

A run writes into a staging folder, which becomes a version only once the run and its
manifest are complete; ``latest`` then moves in one atomic step. Readers that open
``latest`` therefore never see a half-written version, and a failed run leaves ``latest``
as it was. A lock keeps two runs from overlapping: its lease is renewed while the run
lives, a dead run's lock is taken over once its lease expires, and a run that lost its lock
stops before it commits or moves ``latest``. A rerun whose config and code match
``latest`` is a no-op unless forced; versions beyond ``keep`` are deleted, oldest first,
never the one ``latest`` names, and so are the leftovers of runs that died mid-way.
A rollback (``gflow versions --rollback``) moves ``latest`` under the same lock, so it
never points ``latest`` at a version that a publish's retention is deleting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gflow_dist.config import RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.outputs import read_manifest
from gflow_dist.provenance import versions
from gflow_dist.release.stores import (
    LOCK_LEASE_SECONDS,
    VERSION_PREFIX,
    ReleaseStore,
    open_store,
)
from gflow_dist.upsamplers import model_hash

logger = logging.getLogger(__name__)

Runner = Callable[[RunConfig, Path], None]
"""Runs the whole job for a config into an output folder (``pipeline.run_all`` with its runners)."""


def code_version() -> str:
    """The installed gflow-dist version, which a no-op rerun must match."""
    return versions()["gflow-dist"]


def list_versions(store: ReleaseStore) -> list[dict[str, Any]]:
    """Every published version's manifest, oldest first, with ``latest`` marked."""
    current = store.latest()
    return [store.manifest(v) | {"latest": v == current} for v in store.versions()]


def rollback(store: ReleaseStore, version: str) -> None:
    """Point ``latest`` of ``store`` back at the published ``version``, under the publish lock.

    Without the lock, a rollback could land between a publish's retention choosing which
    versions to delete (all but ``latest`` and the newest ``keep``) and deleting them, and
    leave ``latest`` naming a deleted version. With it, a rollback during a publish is
    refused (the lock's holder named) and leaves ``latest`` as it was.

    Raises:
        GflowError: ``version`` is not a published version of ``store``, or a publish (or
            another rollback) holds the lock.
    """
    store.manifest(version)  # a wrong version is refused before the lock is taken
    with store.lock():
        store.point_latest(version)  # checks the version again, now that none may delete it


def _pixel_counts(run: Path) -> dict[str, dict[str, int]]:
    """Stars per partition pixel ("order/pixel") of every catalog of a run."""
    counts = {}
    for catalog in sorted((run / "catalog").glob("*/hats")):
        manifest = read_manifest(catalog)
        counts[catalog.parent.name] = {f"{order}/{pixel}": rows
                                       for order, pixel, rows in manifest["partitions"]}
    return counts


def _retain(store: ReleaseStore, keep: int) -> list[str]:
    current = store.latest()
    published = store.versions()
    removed = [name for name in published[:max(0, len(published) - keep)] if name != current]
    for name in removed:
        store.delete(name)
    return removed


def publish(config: RunConfig, root: str | Path, name: str, run: Runner, keep: int = 5,
            force: bool = False, staging_root: str | Path | None = None,
            lock_lease: float = LOCK_LEASE_SECONDS) -> str:
    """Run the job into a new version of ``root/name``, then switch ``latest`` to it.

    ``staging_root`` is where an object-store run writes before its upload (a folder every
    Ray node shares); folder stores stage beside their versions. ``lock_lease`` is how many
    seconds the run lock outlives the run's last heartbeat. Returns the version now named
    by ``latest`` (the existing one for a no-op rerun).
    """
    if keep < 1:
        raise GflowError(f"--keep must be at least 1, got {keep}")
    if lock_lease <= 0:
        raise GflowError(f"--lock-lease must be a positive number of seconds, got {lock_lease}")
    store = open_store(f"{str(root).rstrip('/')}/{name}", staging_root, lock_lease)
    with store.lock() as lease:
        for leftover in store.leftovers():
            logger.info("publish: removed %s, left by a run that died", leftover)
        current = store.latest()
        if current is not None and not force:
            manifest = store.manifest(current)
            if (manifest["config_sha256"], manifest["code_version"]) == (config.hash(),
                                                                          code_version()):
                logger.info("publish: %s already holds this config and code; nothing to do "
                            "(--force regenerates)", store.uri(current))
                return current
        started = datetime.now(UTC)
        version = f"{VERSION_PREFIX}{started:%Y%m%dT%H%M%S%fZ}-{config.hash()[:8]}"
        staging = store.staging(version)
        try:
            run(config, staging)
            lease.renew()  # still ours: else another run may be publishing
            store.commit(staging, version, {
                "version": version, "uri": store.uri(version),
                "config_sha256": config.hash(), "code_version": code_version(),
                "model_sha256": {n: model_hash(staging / "models" / n)
                                 for n in config.upsamplers},
                "stars_per_pixel": _pixel_counts(staging),
                "started": started.isoformat(), "finished": datetime.now(UTC).isoformat(),
            })
        except BaseException:
            store.discard(staging, version)
            raise
        lease.renew()
        store.point_latest(version)
        removed = _retain(store, keep)
    logger.info("publish: %s/latest -> %s%s", store.location, version,
                f"; removed {', '.join(removed)}" if removed else "")
    return version
