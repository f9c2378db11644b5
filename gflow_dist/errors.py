"""Errors that tell the user what is wrong with their input and how to fix it."""


class GflowError(Exception):
    """Base class of every error gflow-dist raises on purpose."""


class ConfigError(GflowError, ValueError):
    """A run config is invalid: the message names the file, the key and the allowed values."""


class InputError(GflowError, ValueError):
    """Particle input is unusable: the message names the file, the field or row, and the fix."""
