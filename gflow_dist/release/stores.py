"""Where ``gflow publish`` keeps the versions of a catalog: a folder, or an S3 bucket prefix.

Both stores hold one layout under a catalog location ``F`` (``ROOT/<name>``)::

    F/v=<version>/                one complete run output, immutable
    F/v=<version>/manifest.json   written last: a version without it is incomplete and
                                  never listed, pointed at or read
    latest                        the symlink F/latest (folders), or the object
                                  F/latest.json holding {"version": ...} (S3)
    F/.lock                       the run lock, created exclusively: O_EXCL on a file
                                  system, a conditional PUT (If-None-Match: *) on S3

A run writes into a staging folder; ``commit`` makes it a version (an atomic rename on a
file system; on S3 an upload whose manifest goes last), and only then may ``latest`` move,
with one atomic operation (a rename of a new symlink over the old one; one PUT, which S3
readers see whole or not at all).

S3 here means the S3 API (AWS S3, MinIO, Ceph RGW, GCS with interoperability keys), reached
with boto3 and its usual environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION`` and, for a non-AWS endpoint, ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from gflow_dist.errors import AccessError, GflowError

MANIFEST = "manifest.json"
LATEST = "latest"
LATEST_OBJECT = "latest.json"
LOCK = ".lock"
VERSION_PREFIX = "v="
STAGING_PREFIX = ".staging-"
UPLOAD_THREADS = 16


def _lock_owner() -> str:
    return f"pid {os.getpid()} on {os.uname().nodename} since {datetime.now(UTC).isoformat()}"


class ReleaseStore(Protocol):
    """The operations ``gflow publish`` and ``gflow versions`` need from a location."""

    location: str
    """The catalog location F, as the user wrote it (a path or ``s3://bucket/prefix``)."""

    def lock(self) -> AbstractContextManager[None]: ...
    def latest(self) -> str | None: ...
    def versions(self) -> list[str]: ...
    def manifest(self, version: str) -> dict[str, Any]: ...
    def staging(self, version: str) -> Path: ...
    def commit(self, staging: Path, version: str, manifest: dict[str, Any]) -> None: ...
    def discard(self, staging: Path, version: str) -> None: ...
    def point_latest(self, version: str) -> None: ...
    def delete(self, version: str) -> None: ...
    def leftovers(self) -> list[str]: ...
    def uri(self, version: str) -> str: ...


class FolderStore:
    """Versions in a folder of a file system with atomic renames (local or shared, e.g. NFS)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.location = str(self.folder)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``F/.lock``; a held lock is an error naming its owner."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise GflowError(f"another publish holds {path} ({path.read_text().strip()}); wait "
                             "for it, or delete the file if that run is dead") from None
        with os.fdopen(handle, "w") as lock:
            lock.write(_lock_owner() + "\n")
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def latest(self) -> str | None:
        link = self.folder / LATEST
        return os.readlink(link) if link.is_symlink() else None

    def versions(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob(f"{VERSION_PREFIX}*/{MANIFEST}"))

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.folder / version / MANIFEST
        if not path.exists():
            raise GflowError(f"{self.folder / version} is not a published version; "
                             f"`gflow versions {self.location}` lists them")
        return json.loads(path.read_text())

    def staging(self, version: str) -> Path:
        return self.folder / f"{STAGING_PREFIX}{version}"

    def commit(self, staging: Path, version: str, manifest: dict[str, Any]) -> None:
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        staging.rename(self.folder / version)

    def discard(self, staging: Path, version: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def point_latest(self, version: str) -> None:
        self.manifest(version)  # only a complete version may become latest
        temporary = self.folder / f".{LATEST}.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(version)
        os.replace(temporary, self.folder / LATEST)

    def delete(self, version: str) -> None:
        shutil.rmtree(self.folder / version)

    def leftovers(self) -> list[str]:
        """Staging folders of runs that died without cleaning up (call under the lock)."""
        found = sorted(p.name for p in self.folder.glob(f"{STAGING_PREFIX}*"))
        for name in found:
            shutil.rmtree(self.folder / name, ignore_errors=True)
        return found

    def uri(self, version: str) -> str:
        return str(self.folder / version)


class S3Store:
    """Versions under an S3 prefix; the run stages in a shared folder, then uploads.

    Args:
        uri: ``s3://bucket/prefix`` of the catalog location F.
        staging_root: the folder runs write into before the upload; on a Ray cluster it
            must be on a file system that every node shares. Only publishing needs it.
    """

    def __init__(self, uri: str, staging_root: str | Path | None) -> None:
        match = re.fullmatch(r"s3://([^/]+)/?(.*?)/*", uri)
        if match is None:
            raise GflowError(f"{uri}: an S3 location is s3://BUCKET/PREFIX")
        try:
            import boto3
        except ImportError:
            raise GflowError("publishing to s3:// needs boto3: "
                             "pip install 'gflow-dist[s3]'") from None
        self.bucket, prefix = match.groups()
        self.prefix = f"{prefix}/" if prefix else ""
        self.location = uri.rstrip("/")
        self.staging_root = None if staging_root is None else Path(staging_root)
        if boto3.Session().get_credentials() is None:
            raise AccessError(f"{self.location}: no S3 credentials found; set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                              "and AWS_ENDPOINT_URL for a non-AWS endpoint")
        self.client = boto3.client("s3")

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def _put_json(self, key: str, value: dict[str, Any], **conditions: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(value, indent=2),
                               ContentType="application/json", **conditions)

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                       Prefix=prefix)
        for page in pages:
            yield from (item["Key"] for item in page.get("Contents", []))

    def _version_prefixes(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(VERSION_PREFIX), Delimiter="/")
        return sorted(common["Prefix"][len(self.prefix):].rstrip("/")
                      for page in pages for common in page.get("CommonPrefixes", []))

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``F/.lock``, created with a conditional PUT that fails if it exists."""
        key = self._key(LOCK)
        try:
            self._put_json(key, {"owner": _lock_owner()}, IfNoneMatch="*")
        except self.client.exceptions.ClientError as error:
            # 412: the lock exists; 409: another conditional PUT of it is in flight.
            if error.response["Error"]["Code"] not in ("PreconditionFailed",
                                                       "ConditionalRequestConflict"):
                raise
            owner = (self._get_json(key) or {}).get("owner", "owner unknown")
            raise GflowError(f"another publish holds s3://{self.bucket}/{key} ({owner}); wait "
                             "for it, or delete the object if that run is dead") from None
        try:
            yield
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def latest(self) -> str | None:
        pointer = self._get_json(self._key(LATEST_OBJECT))
        return None if pointer is None else pointer["version"]

    def versions(self) -> list[str]:
        return [v for v in self._version_prefixes()
                if self._exists(self._key(v, MANIFEST))]

    def _exists(self, key: str) -> bool:
        return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=key,
                                                MaxKeys=1).get("KeyCount"))

    def manifest(self, version: str) -> dict[str, Any]:
        manifest = self._get_json(self._key(version, MANIFEST))
        if manifest is None:
            raise GflowError(f"{self.uri(version)} is not a published version; "
                             f"`gflow versions {self.location}` lists them")
        return manifest

    def staging(self, version: str) -> Path:
        if self.staging_root is None:
            raise GflowError(f"publishing to {self.location} needs --staging DIR: a folder "
                             "where the run writes before the upload, on a file system every "
                             "Ray node shares")
        return self.staging_root / f"{STAGING_PREFIX}{version}"

    def commit(self, staging: Path, version: str, manifest: dict[str, Any]) -> None:
        """Upload every staged file, then the manifest, which completes the version."""
        files = sorted(p for p in staging.rglob("*") if p.is_file() or p.is_symlink())

        def upload(path: Path) -> None:
            key = self._key(version, path.relative_to(staging).as_posix())
            self.client.upload_file(str(path), self.bucket, key)

        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(upload, files))  # list() re-raises the first failed upload
        self._put_json(self._key(version, MANIFEST), manifest)
        shutil.rmtree(staging)

    def discard(self, staging: Path, version: str) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        self._delete_prefix(self._key(version) + "/")

    def point_latest(self, version: str) -> None:
        self.manifest(version)  # only a complete version may become latest
        self._put_json(self._key(LATEST_OBJECT), {"version": version, "uri": self.uri(version)})

    def delete(self, version: str) -> None:
        self._delete_prefix(self._key(version) + "/")

    def _delete_prefix(self, prefix: str) -> None:
        keys = list(self._keys(prefix))
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": key} for key in keys[start:start + 1000]], "Quiet": True})

    def leftovers(self) -> list[str]:
        """Uploads and staging folders of runs that died mid-way (call under the lock)."""
        found = [v for v in self._version_prefixes() if not self._exists(self._key(v, MANIFEST))]
        for version in found:
            self.delete(version)
        root = self.staging_root
        staged = sorted(root.glob(f"{STAGING_PREFIX}*")) if root is not None else []
        for path in staged:
            shutil.rmtree(path, ignore_errors=True)
        return found + [path.name for path in staged]

    def uri(self, version: str) -> str:
        return f"s3://{self.bucket}/{self._key(version)}"


def describe_cloud_error(error: Exception) -> str | None:
    """One line for an error of boto3/botocore (credentials, endpoint, refusal); else None."""
    try:
        from botocore import exceptions
    except ImportError:  # without boto3 no such error can arise
        return None
    fix = ("check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_ENDPOINT_URL "
           "and the bucket name")
    if isinstance(error, (exceptions.NoCredentialsError, exceptions.PartialCredentialsError)):
        return f"S3: {error}; {fix}"
    if isinstance(error, exceptions.EndpointConnectionError):
        return f"S3: {error}; check AWS_ENDPOINT_URL and the network"
    if isinstance(error, exceptions.ClientError):
        detail = error.response.get("Error", {})
        return (f"S3 refused {error.operation_name}: {detail.get('Code', '?')} "
                f"({detail.get('Message', 'no message')}); {fix}")
    if isinstance(error, exceptions.BotoCoreError):
        return f"S3: {error}; {fix}"
    return None


def open_store(location: str | Path, staging_root: str | Path | None = None) -> ReleaseStore:
    """The store of a catalog location: ``s3://bucket/prefix``, or a file system path."""
    text = str(location)
    scheme = re.match(r"([a-z][a-z0-9+.-]*):/", text)
    if scheme is None:
        if staging_root is not None:
            raise GflowError(f"--staging is for s3:// locations only; {text} is a folder, "
                             "and runs stage beside its versions")
        return FolderStore(text)
    if scheme.group(1) == "s3":
        return S3Store(text, staging_root)
    raise GflowError(f"{text}: publishing supports s3:// (the S3 API: AWS, MinIO, Ceph, GCS "
                     "interoperability) and file system paths, not "
                     f"{scheme.group(1)}://")
