"""One small error hierarchy for the whole library.

Every message names the file (or object) concerned and the cause, so the CLI can print a
single line and batch runs can report a bad file and go on.
"""

from __future__ import annotations

import os
from typing import Optional

from .vocabulary import PathLike


class MammoPatchError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    def __init__(self, message: str, path: Optional[PathLike] = None):
        self.path = os.fspath(path) if path is not None else None
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ImageReadError(MammoPatchError):
    """The file could not be read as an image (not an image, truncated, no pixel data)."""


class UnsupportedImageError(MammoPatchError):
    """The file is an image, but of a kind MammoPatch does not handle (multi-frame, RGB,
    a compressed transfer syntax without its decoder plugin)."""


class InvalidImageError(MammoPatchError):
    """The pixels were read but cannot be used (all one value, smaller than a window)."""


class AnnotationError(MammoPatchError):
    """An annotation table is malformed (missing columns, boxes outside the image)."""


class ConfigError(MammoPatchError):
    """A configuration value is invalid; the message names the field."""


class ModelFileError(MammoPatchError):
    """A model file is unreadable, corrupted, or made for another architecture or class list."""


class Cancelled(MammoPatchError):
    """The user cancelled a long run (Slicer's Cancel button, Ctrl-C in a batch)."""
