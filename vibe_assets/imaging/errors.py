"""Structured error codes for files that cannot be ingested.

Every file that fails anywhere in the pipeline (scan, hash, decode) is reported with one
:class:`ErrorCode` and a one-line human message, never with a bare traceback, and a failure never
stops the other files of a run.
"""

from __future__ import annotations

import enum
import errno
from typing import Any


class ErrorCode(enum.StrEnum):
    """Why a file could not be ingested. The value is the stable code shown in reports."""

    ERR_EMPTY_FILE = "ERR_EMPTY_FILE"
    ERR_NOT_AN_IMAGE = "ERR_NOT_AN_IMAGE"
    ERR_UNSUPPORTED_FORMAT = "ERR_UNSUPPORTED_FORMAT"
    ERR_TRUNCATED_IMAGE = "ERR_TRUNCATED_IMAGE"
    ERR_DECODE_IMAGE = "ERR_DECODE_IMAGE"
    ERR_DECODE_RAW = "ERR_DECODE_RAW"
    ERR_IMAGE_TOO_LARGE = "ERR_IMAGE_TOO_LARGE"
    ERR_FILE_VANISHED = "ERR_FILE_VANISHED"
    ERR_PERMISSION_DENIED = "ERR_PERMISSION_DENIED"
    ERR_READ_FAILED = "ERR_READ_FAILED"

    @property
    def message(self) -> str:
        """One-line human explanation of the code."""
        return _MESSAGES[self]


_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.ERR_EMPTY_FILE: "the file is empty (0 bytes)",
    ErrorCode.ERR_NOT_AN_IMAGE: "the file's content is not an image, whatever its extension",
    ErrorCode.ERR_UNSUPPORTED_FORMAT: "the file is an image in a format we cannot decode",
    ErrorCode.ERR_TRUNCATED_IMAGE: "the image data ends early (truncated or partial copy)",
    ErrorCode.ERR_DECODE_IMAGE: "the image is corrupt and cannot be decoded",
    ErrorCode.ERR_DECODE_RAW: "the camera RAW file cannot be decoded to a usable picture",
    ErrorCode.ERR_IMAGE_TOO_LARGE: "the image has more pixels than the decoder's safety cap",
    ErrorCode.ERR_FILE_VANISHED: "the file disappeared between the scan and reading it",
    ErrorCode.ERR_PERMISSION_DENIED: "the file or folder cannot be read (permission denied)",
    ErrorCode.ERR_READ_FAILED: "the file could not be read (I/O error)",
}


class PhotoError(Exception):
    """A file-level failure carrying an :class:`ErrorCode`.

    Args:
        code: the structured code.
        detail: optional technical detail (library message); shown after the human message.
    """

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        self.code = ErrorCode(code)
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """Human message: the code's message, plus the detail when there is one."""
        return f"{self.code.message}: {self.detail}" if self.detail else self.code.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"code": str, "message": str}``."""
        return {"code": self.code.value, "message": self.message}


def error_from_os_error(exc: OSError) -> PhotoError:
    """Map an ``OSError`` raised while opening/reading a file to a :class:`PhotoError`.

    ``ENOENT``/``ENOTDIR`` -> ``ERR_FILE_VANISHED``; ``EACCES``/``EPERM`` ->
    ``ERR_PERMISSION_DENIED``; anything else -> ``ERR_READ_FAILED``.
    """
    if isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno in (
        errno.ENOENT,
        errno.ENOTDIR,
    ):
        return PhotoError(ErrorCode.ERR_FILE_VANISHED, str(exc.strerror or exc))
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return PhotoError(ErrorCode.ERR_PERMISSION_DENIED, str(exc.strerror or exc))
    return PhotoError(ErrorCode.ERR_READ_FAILED, str(exc.strerror or exc))
