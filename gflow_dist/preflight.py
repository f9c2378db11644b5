"""Checks a command runs before it starts Ray or writes anything.

Whatever a command's input lacks is found here, in seconds, so that a failed command
leaves its output folder as it was: the config is already validated when it loads, so
these checks cover the output folder and the particles (read, validated, selected and
split in memory, or the ingested set matched against the config).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gflow_dist.config import RunConfig
from gflow_dist.data.ingest import Ingested, check_ingested, ingest
from gflow_dist.errors import AccessError

ALWAYS_INGEST = ("ingest", "all")
"""Stages that ingest the particles anew; the others reuse a matching ingested set."""


def check_writable_folder(folder: Path, flag: str = "--out") -> None:
    """Raise AccessError unless ``folder`` is, or can be created as, a folder one can write.

    ``flag`` names the option in the message. The check creates an unnamed temporary
    file in the deepest folder of the path that exists, which leaves no trace.
    """
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is inside {existing}, a file"
        raise AccessError(f"{flag} {folder} {where}, not a folder; give a folder path")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".gflow-write-check-"):
            pass
    except OSError as error:
        raise AccessError(f"{flag} {folder}: cannot write in {existing} ({error.strerror}); "
                          "choose a folder you can write, or fix its permissions") from None


def check_job(config: RunConfig, out: Path, stage: str) -> Ingested | None:
    """Check everything ``stage`` ("ingest" ... "all") needs before it starts.

    Returns the particles the stage must write (read, validated, selected and split),
    or None when ``out`` already holds particles ingested from this config.

    Raises:
        AccessError: ``out`` cannot be written, or the particle file cannot be read.
        InputError: the particles are unusable, or ``out`` holds particles of another
            source or selection.
    """
    check_writable_folder(out)
    if stage not in ALWAYS_INGEST and check_ingested(config, out):
        return None
    return ingest(config)
