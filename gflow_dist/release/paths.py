"""Where a path into a published release points: ``latest`` resolved, ready for lsdb.

``gflow publish`` lays a release out as ``ROOT/NAME/v=<version>/...`` with ``latest``
naming the current version: a symlink in a folder, the object ``latest.json`` in a bucket
(S3 has no symlinks; see :mod:`gflow_dist.release.stores`). Readers write either::

    s3://BUCKET/PREFIX/NAME/latest/catalog/cnf        # the version latest.json names
    s3://BUCKET/PREFIX/NAME/v=20260101T.../catalog/cnf
    runs/releases/NAME/latest/catalog/cnf             # a folder: the symlink resolves itself

and :func:`release_path` turns it into a location lsdb opens: a :class:`pathlib.Path`, or a
:class:`upath.UPath` (fsspec, with s3fs for ``s3://``) whose storage options reach the same
endpoint as ``gflow publish``:

    import lsdb
    from gflow_dist.release.paths import release_path
    lsdb.open_catalog(release_path("s3://BUCKET/releases/mock/latest/catalog/cnf/hats"))

S3 is reached with boto3's and s3fs's usual environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``), ``AWS_DEFAULT_REGION`` and, for a non-AWS
endpoint (MinIO, Ceph RGW, a test server), ``AWS_ENDPOINT_URL`` (``AWS_ENDPOINT_URL_S3``
first where set).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from upath import UPath

from gflow_dist.errors import GflowError, InputError
from gflow_dist.release.stores import LATEST, VERSION_PREFIX, open_store

Location = Path | UPath
"""A local path, or a UPath into an object store."""


def storage_options() -> dict[str, Any]:
    """fsspec options for ``s3://`` from the environment: the endpoint boto3 uses too."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def _scheme(text: str) -> str | None:
    match = re.match(r"([a-z][a-z0-9+.-]*)://", text)
    return None if match is None else match.group(1)


def _release_part(parts: list[str]) -> int | None:
    """Index of the first ``latest`` or ``v=...`` component: the release's version."""
    return next((i for i, part in enumerate(parts)
                 if part == LATEST or part.startswith(VERSION_PREFIX)), None)


def _version_of(root: str, part: str) -> str:
    """The published version that ``part`` (``latest`` or ``v=...``) of ``root`` names.

    Raises:
        InputError: ``root`` is not a release, has no ``latest``, or lacks that version.
        AccessError: no credentials for an ``s3://`` root.
    """
    store = open_store(root)
    published = store.versions()
    current = store.latest()
    if current is None and not published:
        pointer = "latest.json" if _scheme(root) else "latest symlink"
        raise InputError(f"{root} is not a release: it has no {pointer} and no "
                         f"{VERSION_PREFIX}... versions; check the bucket and prefix, or "
                         "publish one with `gflow publish`")
    if part == LATEST:
        if current is None:
            raise InputError(f"{root} has no latest version; `gflow versions {root}` lists "
                             f"them and `--rollback {VERSION_PREFIX}...` points latest at one")
        return current
    if part not in published:
        raise InputError(f"{root} has no published version {part}; `gflow versions {root}` "
                         "lists them")
    return part


def release_path(location: str | Path | UPath) -> Location:
    """The location that ``location`` names, with a release's ``latest`` resolved.

    - ``s3://BUCKET/KEY``: the first ``latest`` or ``v=...`` component of KEY is a version
      of the release ``s3://BUCKET/<KEY before it>``; ``latest`` becomes the version its
      ``latest.json`` names, and a ``v=...`` must be a published (complete) version. A
      UPath with :func:`storage_options` comes back.
    - a local path: returned as a Path (the ``latest`` symlink resolves itself); one that
      does not exist but names a release version is checked like a bucket's, for the error.
    - other URLs (``gs://``, ``https://``): a UPath, unresolved.

    Raises:
        InputError: the release, its ``latest`` or the version does not exist.
        AccessError: S3 credentials are missing.
        GflowError: the s3 extra (boto3, s3fs) is not installed.
    """
    if isinstance(location, UPath) and location.protocol in ("", "file", "local"):
        location = location.path
    text = str(location)
    scheme = _scheme(text)
    if scheme is None:
        path = Path(location)
        release = _release_part(list(path.parts))
        if not path.exists() and release is not None:
            _version_of(str(Path(*path.parts[:release])), path.parts[release])
        return path
    if scheme != "s3":
        return location if isinstance(location, UPath) else UPath(text)
    try:
        import s3fs  # noqa: F401 - UPath needs it for s3://
    except ImportError:
        raise GflowError(f"reading {text} needs s3fs: pip install 'gflow-dist[s3]'") from None
    match = re.fullmatch(r"s3://([^/]+)/?(.*?)/*", text)
    if match is None:
        raise InputError(f"{text}: an S3 location is s3://BUCKET/PREFIX")
    bucket, key = match.groups()
    parts = [part for part in key.split("/") if part]
    release = _release_part(parts)
    if release is not None:
        root = "/".join([f"s3://{bucket}", *parts[:release]])
        parts[release] = _version_of(root, parts[release])
    options = storage_options()
    if isinstance(location, UPath):
        options = {**options, **location.storage_options}
    return UPath("/".join([f"s3://{bucket}", *parts]), **options)
