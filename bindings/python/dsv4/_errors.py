"""Exceptions raised by dsv4: one class per primary status of the C API, each carrying the library's message."""

from __future__ import annotations


class Error(Exception):
    """A failed dsv4 call. ``status`` is the C API's status code (``dsv4_status``), ``status_name`` its name
    (for example ``"DSV4_ERR_WEIGHTS_SHAPE"``); the message names the file, tensor or field at fault."""

    def __init__(self, message: str, status: int = 14, status_name: str = "DSV4_ERR_INTERNAL"):
        super().__init__(message)
        self.status = status
        self.status_name = status_name


class InvalidArgumentError(Error, ValueError):
    """An argument out of range: a bad sequence, position, option or message (status 1)."""


class IOError(Error, OSError):  # noqa: A001 - mirrors DSV4_ERR_IO
    """A file could not be found, read or written (status 2)."""


class FormatError(Error, ValueError):
    """A malformed file: safetensors header, JSON, offsets, dtypes, shapes (status 3)."""


class ConfigError(Error, ValueError):
    """config.json misses a field or holds an invalid or inconsistent value (status 4)."""


class WeightsError(Error, ValueError):
    """A tensor the config implies is missing or has the wrong dtype or shape (status 5)."""


class OutOfMemoryError(Error, MemoryError):
    """An allocation failed (status 6)."""


class ContextFullError(Error):
    """A sequence would grow past the context's n_ctx (status 7)."""


class InvalidTokenError(Error, ValueError):
    """A token id outside the vocabulary (status 8)."""


class UnsupportedError(Error):
    """A feature or file variant dsv4 does not support, or a rewind past n_rewind (status 9)."""


class BackendError(Error):
    """The compute backend failed (status 10)."""


class CancelledError(Error):
    """The evaluation was cancelled (status 11)."""


class VersionError(Error):
    """A saved state of another version or model (status 13)."""


_BY_PRIMARY = {
    1: InvalidArgumentError,
    2: IOError,
    3: FormatError,
    4: ConfigError,
    5: WeightsError,
    6: OutOfMemoryError,
    7: ContextFullError,
    8: InvalidTokenError,
    9: UnsupportedError,
    10: BackendError,
    11: CancelledError,
    13: VersionError,
}


def from_status(status: int, status_name: str, message: str) -> Error:
    """The exception for a status (used by the native layer)."""
    return _BY_PRIMARY.get(status & 0xFF, Error)(message, status, status_name)
