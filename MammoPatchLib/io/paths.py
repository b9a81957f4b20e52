"""What is at a path a user named, in words: the one check both the image readers and the
model loader make before opening a file, so that a folder, a broken or looping symbolic link,
a named pipe (opening one would block for ever) or an empty file is reported as what it is
rather than as "not found" or "truncated"."""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from ..vocabulary import PathLike

_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_problem(path: PathLike, what: str = "image file") -> Optional[str]:
    """Why ``path`` cannot be read as a regular, non-empty ``what``; None when it can.

    The answer is a short clause for an error message (the caller adds the path and picks the
    exception type): "file not found", "a symbolic link loop", "is a folder, not an image
    file", "a named pipe (FIFO), not a regular image file", "file is empty (0 bytes)", ...
    """
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop (the link points back to itself), not a file"
        if exc.errno == errno.ENOENT:
            if os.path.islink(name):
                return f"a symbolic link to a missing file ({os.readlink(name)})"
            return "file not found"
        if exc.errno == errno.ENOTDIR:
            return "a part of the path is a file, not a folder"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "permission denied (a folder on the path cannot be entered)"
        if exc.errno == errno.ENAMETOOLONG:
            return "the file name is too long"
        return f"cannot be opened ({exc.strerror or exc})"
    except ValueError:  # an embedded NUL byte
        return "the file name is not a valid path"
    if stat.S_ISDIR(info.st_mode):
        return f"is a folder, not {_article(what)}"
    for test, kind in _SPECIAL_FILES:
        if test(info.st_mode):
            return f"{kind}, not a regular {what}"
    if info.st_size == 0:
        return "file is empty (0 bytes)"
    if not os.access(name, os.R_OK):
        return "permission denied"
    return None


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun
