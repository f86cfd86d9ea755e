"""The few named exceptions of convrnn.

Every user-facing failure is a :class:`ConvrnnError`; the CLI prints its message as one line
and exits with code 2. Subclasses also derive from the matching built-in (``ValueError``,
``RuntimeError``) so plain ``except ValueError`` keeps working for library users.
"""
from __future__ import annotations


class ConvrnnError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class SpecError(ConvrnnError, ValueError):
    """A model spec that does not parse or does not fit its input.

    ``token`` is the offending token and ``position`` its 0-based character offset in the spec.
    """

    def __init__(self, message: str, *, spec: str = "", token: str = "", position: int = -1):
        self.spec, self.token, self.position = spec, token, position
        if token and position >= 0:
            message = f"{message} (token {token!r} at position {position} of spec {spec!r})"
        super().__init__(message)


class ConfigError(ConvrnnError, ValueError):
    """An unknown or ill-typed configuration key or value."""


class DataError(ConvrnnError, ValueError):
    """Input data that is missing, unreadable or of the wrong form (names the file)."""


class DataNotFound(DataError):
    """A data path that names nothing: no such file or folder, or a pattern that matches no file."""


class CheckpointError(ConvrnnError, ValueError):
    """A checkpoint that is missing, corrupt, unsafe or of another recipe."""


class WriteError(ConvrnnError, OSError):
    """A file that cannot be written (a folder that is a file, no permission, a full disk)."""


class TrainingDiverged(ConvrnnError, RuntimeError):
    """The loss became NaN or infinite."""
