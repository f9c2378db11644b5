"""Where ``gflow publish`` keeps the versions of a catalog: a folder, or an S3 bucket prefix.

Both stores hold one layout under a catalog location ``F`` (``ROOT/<name>``)::

    F/v=<version>/                one complete run output, immutable
    F/v=<version>/manifest.json   written last: a version without it is incomplete and
                                  never listed, pointed at or read
    latest                        the symlink F/latest (folders), or the object
                                  F/latest.json holding {"version": ...} (S3)
    F/.lock                       the run lock: a JSON record of its holder and lease

A run writes into a staging folder; ``commit`` makes it a version (an atomic rename on a
file system; on S3 an upload whose manifest goes last), and only then may ``latest`` move,
with one atomic operation (a rename of a new symlink over the old one; one PUT, which S3
readers see whole or not at all).

The lock is a lease: its record names the holder (pid, host, a random token), when it was
acquired and when it ``expires``, ``lock_lease`` seconds after its last renewal. A heartbeat
thread of the holder renews it every third of the lease, so a live run keeps it however long
it takes, and a run that died (SIGKILL, a lost node) blocks the next one for at most one
lease. Every change to the record is conditional, so two runs never both hold it:

- create: a hard link of a complete record file to ``F/.lock`` (fails if it exists); on S3
  a PUT with ``If-None-Match: *``;
- take over an expired lease: replace the record if it is still the expired one we read;
  on S3 a PUT with ``If-Match`` its ETag. A file system has no such compare-and-swap, so
  every change of a record (takeover, renewal, release) first creates the exclusive
  marker ``F/.lock.<its token>.changing``: one contender at a time checks and changes it;
- renew: rewrite the record only while it holds our token (S3: ``If-Match`` our last ETag);
  finding another token means the lock was taken over, and the run stops before it
  commits or moves ``latest``;
- release: remove the record only while it holds our token (S3: a DELETE with ``If-Match``).

Expiry compares the clocks of different hosts: keep the lease far longer than their skew.

S3 here means the S3 API (AWS S3, MinIO, Ceph RGW, GCS with interoperability keys), reached
with boto3 and its usual environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION`` and, for a non-AWS endpoint, ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
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
LOCK_LEASE_SECONDS = 300.0
"""How long (seconds) a publish lock outlives its last renewal; the holder renews it every
third of that, and a dead holder's lock is taken over once it has expired."""

logger = logging.getLogger(__name__)


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _new_lock_record(lease_seconds: float) -> dict[str, Any]:
    now, host = time.time(), os.uname().nodename
    return {"owner": f"pid {os.getpid()} on {host}", "pid": os.getpid(), "host": host,
            "token": secrets.token_hex(16), "acquired": _timestamp(now),
            "expires": _timestamp(now + lease_seconds), "lease_seconds": lease_seconds}


def _parse_lock_record(text: str) -> dict[str, Any]:
    """A lock record; the plain-text owner line of an older gflow-dist becomes ``owner``."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"owner": text.strip()}


def _lock_expiry(record: dict[str, Any], written: float, lease_seconds: float) -> float:
    """When a lock record's lease ends (seconds since the epoch); a record without
    ``expires`` (an older gflow-dist's) ends one lease after it was written."""
    try:
        return datetime.fromisoformat(record["expires"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return written + lease_seconds


def _lock_held_error(where: str, record: dict[str, Any], expires: float) -> GflowError:
    return GflowError(
        f"another publish holds {where} ({record.get('owner', 'holder unknown')}, acquired "
        f"{record.get('acquired', 'at an unknown time')}); its lease expires at "
        f"{_timestamp(expires)} unless that run renews it, and a publish after that takes "
        "the lock over. Wait for that run to finish; a dead run's lock needs no deleting")


class LockLease:
    """A held publish lock, renewed by a heartbeat thread every third of its lease.

    Args:
        where: the lock's location, for messages.
        record: the lock record as written by the acquire.
        lease_seconds: how long (seconds) each renewal extends the lease.
        rewrite: writes a renewed record if the lock still holds this lease's token, and
            returns False if it holds another (the lock was taken over); it never
            overwrites another holder's record.
    """

    def __init__(self, where: str, record: dict[str, Any], lease_seconds: float,
                 rewrite: Callable[[dict[str, Any]], bool]) -> None:
        self.where = where
        self.record = record
        self.lease_seconds = lease_seconds
        self._rewrite = rewrite
        self._expires = _lock_expiry(record, time.time(), lease_seconds)
        self._lost: str | None = None
        self._mutex = threading.Lock()  # the heartbeat and renew() never rewrite at once
        self._stopped = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                           name=f"heartbeat of {where}")
        self._heartbeat.start()

    def renew(self) -> None:
        """Extend the lease now; raise GflowError if the lock is no longer this run's.

        ``publish`` calls it before each step that others can see (commit, moving latest).
        """
        with self._mutex:
            if self._lost is None and time.time() >= self._expires:
                self._lost = (f"its lease expired at {_timestamp(self._expires)} before a "
                              "renewal, so another publish may have taken it over")
            if self._lost is None:
                renewed = self.record | {"expires": _timestamp(time.time() + self.lease_seconds)}
                if self._rewrite(renewed):
                    self.record = renewed
                    self._expires = _lock_expiry(renewed, time.time(), self.lease_seconds)
                else:
                    self._lost = "another publish took it over"
            if self._lost is not None:
                raise GflowError(f"this publish lost its lock {self.where}: {self._lost}; "
                                 "it stops before its next step (committing its version "
                                 "or moving latest). Rerun "
                                 "`gflow publish` once the other run is done")

    def _beat(self) -> None:
        while not self._stopped.wait(self.lease_seconds / 3):
            try:
                self.renew()
            except GflowError as error:
                logger.warning("%s", error)
                return
            except Exception as error:  # noqa: BLE001 - a failed renewal is retried
                logger.warning("publish: renewing the lock %s failed (%s); retrying in %.0f s",
                               self.where, error, self.lease_seconds / 3)

    def stop(self) -> None:
        """Stop renewing (before the release)."""
        self._stopped.set()
        self._heartbeat.join()


class ReleaseStore(Protocol):
    """The operations ``gflow publish`` and ``gflow versions`` need from a location."""

    location: str
    """The catalog location F, as the user wrote it (a path or ``s3://bucket/prefix``)."""

    def lock(self) -> AbstractContextManager[LockLease]: ...
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
    """Versions in a folder of a file system with atomic renames and hard links (local or
    shared, e.g. NFS); ``lock_lease`` is the seconds the publish lock outlives its last
    renewal."""

    def __init__(self, folder: str | Path, lock_lease: float = LOCK_LEASE_SECONDS) -> None:
        self.folder = Path(folder)
        self.location = str(self.folder)
        self.lock_lease = lock_lease

    @contextmanager
    def lock(self) -> Iterator[LockLease]:
        """Hold ``F/.lock`` with a lease of ``lock_lease`` seconds, renewed while held.

        A lock whose lease is current is an error naming its holder; an expired one (its
        holder died) is taken over.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        record = _new_lock_record(self.lock_lease)
        while not self._create_lock(record):
            current = self._read_lock()
            if current is None:
                continue  # released meanwhile: create it again
            held, written = current
            expires = _lock_expiry(held, written, self.lock_lease)
            if expires > time.time():
                raise _lock_held_error(str(path), held, expires)
            if not self._replace_lock(held.get("token"), record):
                raise GflowError(f"another publish is taking over {path} (whose holder, "
                                 f"{held.get('owner', 'unknown')}, let its lease expire at "
                                 f"{_timestamp(expires)}); wait for that run to finish")
            logger.info("publish: took over %s from %s, whose lease expired at %s",
                        path, held.get("owner", "an unknown holder"), _timestamp(expires))
            break
        lease = LockLease(str(path), record, self.lock_lease,
                          lambda renewed: self._replace_lock(record["token"], renewed))
        try:
            yield lease
        finally:
            lease.stop()
            if not self._remove_lock(record["token"]):
                logger.warning("publish: %s was taken over by another run; left it alone", path)

    def _read_lock(self) -> tuple[dict[str, Any], float] | None:
        """The lock record and when it was last written, or None without a lock."""
        path = self.folder / LOCK
        try:
            return _parse_lock_record(path.read_text()), path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _holds(self, token: str | None) -> bool:
        current = self._read_lock()
        return current is not None and current[0].get("token") == token

    def _create_lock(self, record: dict[str, Any]) -> bool:
        """Link a complete record to ``F/.lock`` unless one exists: readers never see half."""
        draft = self.folder / f"{LOCK}.{record['token']}"
        draft.write_text(json.dumps(record, indent=2))
        try:
            os.link(draft, self.folder / LOCK)
            return True
        except FileExistsError:
            return False
        finally:
            draft.unlink()

    def _replace_lock(self, token: str | None, record: dict[str, Any]) -> bool:
        """Write ``record`` over ``F/.lock`` if it holds ``token`` (a takeover, a renewal)."""
        with self._changing(token) as allowed:
            if not allowed or not self._holds(token):
                return False
            draft = self.folder / f"{LOCK}.{record['token']}"
            draft.write_text(json.dumps(record, indent=2))
            os.replace(draft, self.folder / LOCK)
            return True

    def _remove_lock(self, token: str) -> bool:
        """Delete ``F/.lock`` if it holds ``token``."""
        with self._changing(token) as allowed:
            if not allowed or not self._holds(token):
                return False
            (self.folder / LOCK).unlink()
            return True

    @contextmanager
    def _changing(self, token: str | None) -> Iterator[bool]:
        """The right to change ``F/.lock`` while it holds ``token``: an exclusive marker file
        per token, so a takeover, a renewal and a release of one record never interleave
        (a file system has no compare-and-swap). False while another holds it; a marker
        older than a lease, left by a run killed while changing the lock, is removed."""
        marker = self.folder / f"{LOCK}.{token}.changing"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            with suppress(FileNotFoundError):
                if time.time() - marker.stat().st_mtime > self.lock_lease:
                    marker.unlink()
            yield False
            return
        try:
            yield True
        finally:
            marker.unlink()

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
        lock_lease: seconds the publish lock outlives its last renewal.
    """

    def __init__(self, uri: str, staging_root: str | Path | None,
                 lock_lease: float = LOCK_LEASE_SECONDS) -> None:
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
        self.lock_lease = lock_lease
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
    def lock(self) -> Iterator[LockLease]:
        """Hold ``F/.lock`` with a lease of ``lock_lease`` seconds, renewed while held.

        Every write of the record is a conditional PUT: create if absent, take over an
        expired lease or renew ours only if the ETag is the one read.
        """
        key = self._key(LOCK)
        where = f"s3://{self.bucket}/{key}"
        record = _new_lock_record(self.lock_lease)
        etag = self._put_lock(record, IfNoneMatch="*")
        while etag is None:
            current = self._read_lock()
            if current is None:
                etag = self._put_lock(record, IfNoneMatch="*")  # released meanwhile
                continue
            held, written, held_etag = current
            expires = _lock_expiry(held, written, self.lock_lease)
            if expires > time.time():
                raise _lock_held_error(where, held, expires)
            etag = self._put_lock(record, IfMatch=held_etag)
            if etag is not None:
                logger.info("publish: took over %s from %s, whose lease expired at %s",
                            where, held.get("owner", "an unknown holder"), _timestamp(expires))
            # else another run took it over first: the next read names it

        def rewrite(renewed: dict[str, Any]) -> bool:
            nonlocal etag
            renewed_etag = self._put_lock(renewed, IfMatch=etag)
            if renewed_etag is None:
                return False
            etag = renewed_etag
            return True

        lease = LockLease(where, record, self.lock_lease, rewrite)
        try:
            yield lease
        finally:
            lease.stop()
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)
            except self.client.exceptions.ClientError as error:
                if not self._is_failed_condition(error):
                    raise
                logger.warning("publish: %s was taken over by another run; left it alone",
                               where)

    def _read_lock(self) -> tuple[dict[str, Any], float, str] | None:
        """The lock record, when it was last written and its ETag; None without a lock."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(LOCK))
        except self.client.exceptions.NoSuchKey:
            return None
        return (_parse_lock_record(response["Body"].read().decode()),
                response["LastModified"].timestamp(), response["ETag"])

    def _put_lock(self, record: dict[str, Any], **condition: str) -> str | None:
        """PUT the lock record under an ``If-None-Match``/``If-Match`` condition: its new
        ETag, or None if the condition failed (the lock exists, changed or is gone)."""
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self._key(LOCK), Body=json.dumps(record, indent=2),
                ContentType="application/json", **condition)
        except self.client.exceptions.ClientError as error:
            if not self._is_failed_condition(error):
                raise
            return None
        return response["ETag"]

    @staticmethod
    def _is_failed_condition(error: Any) -> bool:
        """A botocore ClientError for a failed condition: 412 (the ETag differs or the
        object exists), 409 (another conditional write of it is in flight) or 404 (If-Match
        on an object that is gone)."""
        code = error.response["Error"]["Code"]
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")

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


def open_store(location: str | Path, staging_root: str | Path | None = None,
               lock_lease: float = LOCK_LEASE_SECONDS) -> ReleaseStore:
    """The store of a catalog location: ``s3://bucket/prefix``, or a file system path;
    its publish lock lasts ``lock_lease`` seconds past each renewal."""
    text = str(location)
    scheme = re.match(r"([a-z][a-z0-9+.-]*):/", text)
    if scheme is None:
        if staging_root is not None:
            raise GflowError(f"--staging is for s3:// locations only; {text} is a folder, "
                             "and runs stage beside its versions")
        return FolderStore(text, lock_lease)
    if scheme.group(1) == "s3":
        return S3Store(text, staging_root, lock_lease)
    raise GflowError(f"{text}: publishing supports s3:// (the S3 API: AWS, MinIO, Ceph, GCS "
                     "interoperability) and file system paths, not "
                     f"{scheme.group(1)}://")
