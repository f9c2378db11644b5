"""Errors that tell the user what is wrong with their input and how to fix it.

The ``gflow`` command turns each kind into its own exit status:

- 1: a bug in gflow-dist (the message asks for ``-v`` and a report);
- 2: the command line itself is wrong (argparse's usage errors);
- 3: :class:`GflowError`, :class:`ConfigError`, :class:`InputError`: the config, a
  particle file, a catalog or a query argument is unusable;
- 4: :class:`AccessError` and the operating system's errors (:class:`OSError`): a folder
  cannot be created or written, a file cannot be read, the disk is full, cloud
  credentials are missing or refused, a Ray cluster does not answer.
"""

from __future__ import annotations

import errno

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_ACCESS = 4


class GflowError(Exception):
    """Base class of every error gflow-dist raises on purpose."""

    exit_code = EXIT_INPUT


class ConfigError(GflowError, ValueError):
    """A run config is invalid: the message names the file, the key and the allowed values."""


class InputError(GflowError, ValueError):
    """Particle input is unusable: the message names the file, the field or row, and the fix."""


class AccessError(GflowError):
    """Something the command needs is out of reach: a folder it cannot write, a file it
    cannot read, a full disk, missing cloud credentials or a Ray cluster that does not
    answer. The message names the path or address and the fix."""

    exit_code = EXIT_ACCESS


_OS_FIXES = {
    errno.EACCES: "choose a location you can write (or read), or fix its permissions",
    errno.EPERM: "choose a location you can write (or read), or fix its permissions",
    errno.EROFS: "the file system is read-only: choose another location",
    errno.ENOSPC: "the disk is full: free space, or choose a location on another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or choose another location",
    errno.ENOENT: "check the path; missing parent folders are not created for this",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder: give a file path",
    errno.EEXIST: "it already exists: choose another path or remove it",
}


def describe_os_error(error: OSError) -> str:
    """One line for an error of the operating system: the path, what went wrong, the fix."""
    where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    what = error.strerror or str(error)
    fix = _OS_FIXES.get(error.errno, "check the path and the machine")
    return f"{where}: {what}; {fix}" if where else f"{what}; {fix}"
