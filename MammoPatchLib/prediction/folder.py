"""Crash-safe, resumable batches: one output folder per image that appears only when complete,
a lock so two runs cannot write one output folder at once, and a summary kept up to date.

- Each image's outputs are written into ``OUT/.partial-<name>-<pid>/`` and renamed to
  ``OUT/<name>/`` when every file is there (a rename is atomic), so a folder under its final
  name is always complete; a kill loses at most the image in flight.
- ``OUT/.mammopatch.lock`` is held (``fcntl.flock``) for the whole run: a second run on the
  same folder is refused at once with a clear message (exit code 3 on the command line).
- Partial folders left by a killed run are removed when the next run takes the lock.
- ``resume``: images whose folder exists are skipped ("done earlier"); ``overwrite``: they are
  recomputed and replace the old folder only once the new one is complete. Neither: an
  existing folder is reported as a failure for that image and left untouched.
- ``OUT/summary.csv`` is rewritten (atomically) after every image.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List

from ..errors import MammoPatchError
from ..vocabulary import PathLike

LOCK_NAME = ".mammopatch.lock"
PARTIAL_PREFIX = ".partial-"
OLD_PREFIX = ".replaced-"


class OutputError(MammoPatchError):
    """The output folder cannot be written (not a folder, read-only, locked by another run)."""


def safe_name(name: str) -> str:
    """A folder name that every writer can use: undecodable bytes of the input's name (kept by
    Python as surrogates) become U+FFFD, path separators are replaced."""
    text = os.fsencode(name).decode("utf-8", "replace") if isinstance(name, str) else str(name)
    return text.replace(os.sep, "_").replace("/", "_") or "image"


class OutputFolder:
    """The output root of one batch run (see the module docstring). Use as a context manager."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self._lock_file = None

    def __enter__(self) -> "OutputFolder":
        self.check_writable()
        self._lock()
        self.clean_stale()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def check_writable(self) -> None:
        """Create the folder and prove a file can be written there, before any image is read."""
        if self.root.exists() and not self.root.is_dir():
            raise OutputError("the output path exists and is not a folder", self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = "read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else exc.strerror or str(exc)
            raise OutputError(f"cannot write to the output folder ({reason})", self.root) from None

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
            return
        handle = open(self.root / LOCK_NAME, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError("another MammoPatch run is writing to this output folder; wait for it to finish or "
                              "choose another --out", self.root) from None
        self._lock_file = handle

    def clean_stale(self) -> List[str]:
        """Remove partial and replaced folders left by killed runs (we hold the lock, so no
        running process owns them)."""
        removed = []
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name.startswith((PARTIAL_PREFIX, OLD_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def is_complete(self, name: str) -> bool:
        return (self.root / name).is_dir()

    def partial(self, name: str) -> Path:
        """A fresh private folder to write ``name``'s outputs into."""
        folder = self.root / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        return folder

    def publish(self, partial: Path, name: str, overwrite: bool) -> Path:
        """Give a finished partial folder its final name (replacing an older one if asked)."""
        final = self.root / name
        if final.exists():
            if not overwrite:
                shutil.rmtree(partial, ignore_errors=True)
                raise MammoPatchError("outputs exist already (--resume skips them, --overwrite replaces them)", final)
            old = self.root / f"{OLD_PREFIX}{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
        return final


def output_stem(path: Path) -> str:
    """The file name without a known image extension ("1.2.840.5.dcm" -> "1.2.840.5")."""
    from ..io.readers import SUPPORTED_EXTENSIONS  # the readers' list, imported when first needed

    lowered = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if lowered.endswith(ext) and len(path.name) > len(ext):
            return path.name[: -len(ext)]
    return path.name


def unique_names(stems: Iterable[str]) -> List[str]:
    """Folder names for a batch's inputs in order: repeated names get _2, _3, ... (the same
    inputs always get the same names, so a resumed run finds its folders)."""
    used: Dict[str, int] = {}
    names = []
    for stem in stems:
        stem = safe_name(stem)
        used[stem] = used.get(stem, 0) + 1
        names.append(stem if used[stem] == 1 else f"{stem}_{used[stem]}")
    return names
