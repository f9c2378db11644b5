"""Member checkpoints on shared storage: any pyarrow file system URI, or an absolute path.

A member trains in a local scratch directory; :class:`CheckpointStore` mirrors that
directory to ``<uri>/<member directory name>/`` and restores it from there, so that a
member restarted on any node resumes from its last uploaded epoch. Files are uploaded
under a temporary name and then moved into place, so a download never sees half a file
(on object stores a move is a copy of one whole object).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyarrow import fs

from gflow_dist.errors import GflowError

UPLOADING_SUFFIX = ".uploading"
"""Suffix of a file while it is being uploaded; never downloaded."""

logger = logging.getLogger(__name__)

SYNC_SECONDS = 5.0
"""Interval [s] between two uploads of a training member's changed files."""


def model_checkpoint_uri(uri: str | None, model: str, training_key: str) -> str | None:
    """Where one model's members checkpoint under ``ray.checkpoint_uri``: a folder per
    upsampler and per training config, so that neither a second upsampler nor a changed
    config ever resumes another's checkpoints. None when ``uri`` is None."""
    if uri is None:
        return None
    return f"{uri.rstrip('/')}/{model}/{training_key[:16]}"


def _skipped(name: str) -> bool:
    return name.endswith((".tmp", UPLOADING_SUFFIX))


class CheckpointStore:
    """The member directories under one URI (``s3://bucket/prefix``, ``gs://…``,
    ``file:///path``, or an absolute local path)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri if "://" in uri else str(Path(uri).resolve())
        """The URI, a path made absolute where this store was made (on the driver)."""
        try:
            self.filesystem, root = fs.FileSystem.from_uri(self.uri)
        except (ValueError, OSError) as error:
            raise GflowError(f"ray.checkpoint_uri={uri!r} is not a file system pyarrow can "
                             f"open ({error}); use s3://, gs://, hdfs://, file:/// or an "
                             "local path") from error
        self.root = root.rstrip("/")
        self.local = fs.LocalFileSystem()

    def _member(self, name: str) -> str:
        return f"{self.root}/{name}"

    def files(self, name: str) -> list[str]:
        """The complete files stored for member directory ``name``, sorted."""
        selector = fs.FileSelector(self._member(name), allow_not_found=True)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                      if info.type == fs.FileType.File and not _skipped(info.base_name))

    def download(self, name: str, directory: Path) -> list[str]:
        """Copy member ``name``'s stored files into ``directory``; returns their names."""
        names = self.files(name)
        directory.mkdir(parents=True, exist_ok=True)
        for file in names:
            fs.copy_files(f"{self._member(name)}/{file}", str(directory / file),
                          source_filesystem=self.filesystem, destination_filesystem=self.local)
        return names

    def upload(self, directory: Path, uploaded: dict[str, tuple[int, int]]) -> None:
        """Upload the files of ``directory`` changed since ``uploaded`` (name → (mtime ns,
        size)), which is updated."""
        target = self._member(directory.name)
        self.filesystem.create_dir(target, recursive=True)
        for path in sorted(directory.iterdir()):
            if not path.is_file() or _skipped(path.name):
                continue
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if uploaded.get(path.name) == key:
                continue
            partial = f"{target}/{path.name}{UPLOADING_SUFFIX}"
            fs.copy_files(str(path), partial, source_filesystem=self.local,
                          destination_filesystem=self.filesystem)
            self.filesystem.move(partial, f"{target}/{path.name}")
            uploaded[path.name] = key

    @contextmanager
    def syncing(self, directory: Path, seconds: float = SYNC_SECONDS) -> Iterator[None]:
        """Upload ``directory``'s changed files every ``seconds`` while the block runs, and
        all of them once more when it ends without error."""
        uploaded: dict[str, tuple[int, int]] = {}
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(seconds):
                try:
                    self.upload(directory, uploaded)
                except OSError as error:  # retried at the next tick; the last one raises
                    logger.warning("checkpoint upload to %s failed: %s", self.uri, error)

        thread = threading.Thread(target=loop, name=f"sync-{directory.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
        self.upload(directory, uploaded)
