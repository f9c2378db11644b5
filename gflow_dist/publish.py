"""Versioned, atomic publishing of regeneration runs: ``gflow publish`` and ``gflow versions``.

Layout under a release root (a local or shared file system path)::

    ROOT/<name>/v=<UTC time>-<config hash>/   one complete ``gflow run`` output, immutable
    ROOT/<name>/v=.../manifest.json           config hash, model hashes, code version,
                                              stars per partition pixel, start and end
    ROOT/<name>/latest -> v=...               the version readers open

A run writes into a hidden staging folder, which is renamed to its version only once the
run and its manifest are complete; ``latest`` is then switched with an atomic rename of a
new symlink over the old one. Readers that open ``latest`` therefore never see a
half-written version, and a failed run leaves ``latest`` as it was. A lock file keeps two
runs from overlapping; a rerun whose config and code match ``latest`` is a no-op unless
forced; versions beyond ``keep`` are deleted, oldest first, never the one ``latest`` names.

Object stores (``s3://``) have no atomic rename: publishing there is not supported yet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from gflow_dist.catalog.hats_writer import read_manifest
from gflow_dist.config import RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.provenance import versions
from gflow_dist.upsamplers import model_hash

LATEST = "latest"
MANIFEST = "manifest.json"
LOCK = ".lock"
VERSION_PREFIX = "v="

Runner = Callable[[RunConfig, Path], None]
"""Runs the whole job for a config into an output folder (``jobs.run_all``)."""


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the duration; a held lock is an error naming its owner."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        raise GflowError(f"another publish holds {path} ({path.read_text().strip()}); wait "
                         "for it, or delete the file if that run is dead") from None
    with os.fdopen(handle, "w") as lock:
        lock.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat()}\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def latest_version(folder: Path) -> str | None:
    """The version ``latest`` points to, or None before the first publish."""
    link = folder / LATEST
    return os.readlink(link) if link.is_symlink() else None


def list_versions(folder: Path) -> list[dict]:
    """Every published version's manifest, oldest first, with ``latest`` marked."""
    current = latest_version(folder)
    found = []
    for path in sorted(folder.glob(f"{VERSION_PREFIX}*")):
        manifest = json.loads((path / MANIFEST).read_text())
        found.append(manifest | {"latest": path.name == current})
    return found


def point_latest(folder: Path, version: str) -> None:
    """Switch ``latest`` to ``version`` atomically (rollback uses this too)."""
    if not (folder / version / MANIFEST).exists():
        raise GflowError(f"{folder / version} is not a published version; "
                         f"`gflow versions {folder}` lists them")
    temporary = folder / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(version)
    os.replace(temporary, folder / LATEST)


def _code_version() -> str:
    return versions()["gflow-dist"]


def _pixel_counts(run: Path) -> dict[str, dict[str, int]]:
    """Stars per partition pixel ("order/pixel") of every catalog of a run."""
    counts = {}
    for catalog in sorted((run / "catalog").glob("*/hats")):
        manifest = read_manifest(catalog)
        counts[catalog.parent.name] = {f"{order}/{pixel}": rows
                                       for order, pixel, rows in manifest["partitions"]}
    return counts


def _retain(folder: Path, keep: int) -> list[str]:
    current = latest_version(folder)
    published = sorted(p.name for p in folder.glob(f"{VERSION_PREFIX}*"))
    removed = [name for name in published[:max(0, len(published) - keep)] if name != current]
    for name in removed:
        shutil.rmtree(folder / name)
    return removed


def publish(config: RunConfig, root: Path, name: str, run: Runner, keep: int = 5,
            force: bool = False) -> str:
    """Run the job into a new version of ``root/name``, then switch ``latest`` to it.

    Returns the version now named by ``latest`` (the existing one for a no-op rerun).
    """
    if keep < 1:
        raise GflowError(f"--keep must be at least 1, got {keep}")
    if re.match(r"[a-z][a-z0-9+.-]*:/", str(root)):  # a URI, even after Path() ate a slash
        raise GflowError(f"--out {root}: publishing needs a file system with atomic renames "
                         "(a local or mounted shared path); object stores are not supported")
    folder = Path(root) / name
    with run_lock(folder):
        current = latest_version(folder)
        if current is not None and not force:
            manifest = json.loads((folder / current / MANIFEST).read_text())
            if (manifest["config_sha256"], manifest["code_version"]) == (config.hash(),
                                                                          _code_version()):
                print(f"publish: {folder / current} already holds this config and code; "
                      "nothing to do (--force regenerates)", flush=True)
                return current
        started = datetime.now(UTC)
        version = f"{VERSION_PREFIX}{started:%Y%m%dT%H%M%S%fZ}-{config.hash()[:8]}"
        staging = folder / f".staging-{version}"
        try:
            run(config, staging)
            manifest = {
                "version": version, "config_sha256": config.hash(),
                "code_version": _code_version(),
                "model_sha256": {n: model_hash(staging / "models" / n)
                                 for n in config.upsamplers},
                "stars_per_pixel": _pixel_counts(staging),
                "started": started.isoformat(), "finished": datetime.now(UTC).isoformat(),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
            staging.rename(folder / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        point_latest(folder, version)
        removed = _retain(folder, keep)
    print(f"publish: {folder / LATEST} -> {version}"
          + (f"; removed {', '.join(removed)}" if removed else ""), flush=True)
    return version
