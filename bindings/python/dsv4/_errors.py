"""Exceptions raised by dsv4: one class per primary status of the C API, each carrying the library's message."""

from __future__ import annotations


class Error(Exception):
    """A failed dsv4 call. ``status`` is the C API's status code (``dsv4_status``), ``status_name`` its name
    (for example ``"DSV4_ERR_WEIGHTS_SHAPE"``); the message names the file, tensor or field at fault."""

    status_code = 14  # the class's own status, used when the library does not give a more precise one
    status_label = "DSV4_ERR_INTERNAL"

    def __init__(self, message: str, status: int | None = None, status_name: str | None = None):
        super().__init__(message)
        self.status = self.status_code if status is None else status
        self.status_name = self.status_label if status_name is None else status_name


class InvalidArgumentError(Error, ValueError):
    """An argument out of range: a bad sequence, position, option or message (status 1)."""

    status_code = 1
    status_label = "DSV4_ERR_INVALID_ARGUMENT"


class IOError(Error, OSError):  # noqa: A001 - mirrors DSV4_ERR_IO
    """A file could not be found, read or written (status 2)."""

    status_code = 2
    status_label = "DSV4_ERR_IO"


class FormatError(Error, ValueError):
    """A malformed file: safetensors header, JSON, offsets, dtypes, shapes (status 3)."""

    status_code = 3
    status_label = "DSV4_ERR_FORMAT"


class ConfigError(Error, ValueError):
    """config.json misses a field or holds an invalid or inconsistent value (status 4)."""

    status_code = 4
    status_label = "DSV4_ERR_CONFIG"


class WeightsError(Error, ValueError):
    """A tensor the config implies is missing or has the wrong dtype or shape (status 5)."""

    status_code = 5
    status_label = "DSV4_ERR_WEIGHTS"


class OutOfMemoryError(Error, MemoryError):
    """An allocation failed (status 6)."""

    status_code = 6
    status_label = "DSV4_ERR_OUT_OF_MEMORY"


class ContextFullError(Error):
    """A sequence would grow past the context's n_ctx (status 7)."""

    status_code = 7
    status_label = "DSV4_ERR_CONTEXT_FULL"


class InvalidTokenError(Error, ValueError):
    """A token id outside the vocabulary (status 8)."""

    status_code = 8
    status_label = "DSV4_ERR_INVALID_TOKEN"


class UnsupportedError(Error):
    """A feature or file variant dsv4 does not support, or a rewind past n_rewind (status 9)."""

    status_code = 9
    status_label = "DSV4_ERR_UNSUPPORTED"


class BackendError(Error):
    """The compute backend failed (status 10)."""

    status_code = 10
    status_label = "DSV4_ERR_BACKEND"


class CancelledError(Error):
    """The evaluation was cancelled (status 11)."""

    status_code = 11
    status_label = "DSV4_ERR_CANCELLED"


class VersionError(Error):
    """A saved state of another version or model (status 13)."""

    status_code = 13
    status_label = "DSV4_ERR_VERSION"


_BY_PRIMARY = {cls.status_code: cls for cls in (InvalidArgumentError, IOError, FormatError, ConfigError, WeightsError,
                                                 OutOfMemoryError, ContextFullError, InvalidTokenError,
                                                 UnsupportedError, BackendError, CancelledError, VersionError)}


def from_status(status: int, status_name: str, message: str) -> Error:
    """The exception for a status (used by the native layer)."""
    return _BY_PRIMARY.get(status & 0xFF, Error)(message, status, status_name)
