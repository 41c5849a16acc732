"""Errors for people. Library code raises these; only cli.py turns them into exit codes."""


class StyleloraError(Exception):
    """Base class: the message is one line that says what is wrong and how to fix it."""


class ConfigError(StyleloraError):
    """A setting has a bad value."""


class DatasetError(StyleloraError):
    """The image folder cannot be used."""


class AdapterFileError(StyleloraError):
    """An adapter file cannot be read or does not fit."""


class BaseModelError(StyleloraError):
    """The base model cannot be loaded."""


class TrainingError(StyleloraError):
    """Training cannot go on (a NaN loss, an incompatible resume, a failed save)."""


class TrainingInterrupted(TrainingError):
    """Training stopped on request (Ctrl-C or the UI's Stop); a checkpoint was saved."""


class AdapterNotFoundError(StyleloraError):
    """No adapter of that name is in the adapters folder."""


class ConflictError(ConfigError):
    """The name is taken (an adapter file of that name already exists)."""


class ServerBusyError(StyleloraError):
    """The server's queue is full; try again shortly."""
