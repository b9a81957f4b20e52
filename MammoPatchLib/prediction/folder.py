"""Crash-safe, resumable batches: one output folder per image that appears only when complete,
a lock so two runs cannot write one output folder at once, and a summary kept up to date.

- Each image's outputs are written into ``OUT/.partial-<name>-<pid>/`` and renamed to
  ``OUT/<name>/`` when every file is there (a rename is atomic), so a folder under its final
  name is always complete; a kill loses at most the image in flight.
- Every folder MammoPatch makes holds a marker file (``.mammopatch-output``). Only marked
  folders are ever replaced or removed: a file or a folder of the user's where an image's
  folder goes is reported as being in the way, that image fails, and it is left as it is
  (``--overwrite`` included).
- ``OUT/.mammopatch.lock`` is held (``fcntl.flock``) for the whole run: a second run on the
  same folder is refused at once with a clear message (exit code 3 on the command line). It is
  deleted when the run ends.
- Partial folders left by a killed run are removed when the next run takes the lock.
- ``resume``: images whose folder exists are skipped ("done earlier"); ``overwrite``: they are
  recomputed and replace the old folder only once the new one is complete. Neither: a run
  whose images have folders already (a stopped batch run again) is refused before any image,
  pointing to ``--resume`` / ``--overwrite``, and the folder is left untouched.
- ``OUT/summary.csv`` is rewritten (atomically) after every image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from ..errors import MammoPatchError
from ..io.discovery import MARKER_NAME
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
            # Delete the lock file while still holding it: a run that opened it meanwhile finds,
            # once it has the lock, that the name no longer leads to its file, and retries.
            with contextlib.suppress(OSError):
                os.unlink(self.root / LOCK_NAME)
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
        path = self.root / LOCK_NAME
        for _ in range(10):
            handle = open(path, "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                raise OutputError("another MammoPatch run is writing to this output folder; wait for it to finish or "
                                  "choose another --out", self.root) from None
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(handle.fileno())
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                self._lock_file = handle
                return
            handle.close()  # the run that held it deleted it on leaving: lock the new one
        raise OutputError("the lock file keeps being replaced by other runs; try again", self.root)

    def is_ours(self, path: Path) -> bool:
        """A real folder (not a link) holding MammoPatch's marker: one it may replace or remove."""
        return path.is_dir() and not path.is_symlink() and (path / MARKER_NAME).is_file()

    def clean_stale(self) -> List[str]:
        """Remove partial and replaced folders left by killed runs (we hold the lock, so no
        running process owns them); a folder without MammoPatch's marker is not touched."""
        removed = []
        for entry in self.root.iterdir():
            if entry.name.startswith((PARTIAL_PREFIX, OLD_PREFIX)) and self.is_ours(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def is_complete(self, name: str) -> bool:
        """Whether ``name``'s outputs, written by MammoPatch, are there."""
        return self.is_ours(self.root / name)

    def in_the_way(self, name: str) -> Optional[str]:
        """Why ``name``'s folder cannot be written: something MammoPatch did not write is there
        (said in words, for the image's error), else None."""
        target = self.root / name
        if not os.path.lexists(target) or self.is_ours(target):
            return None
        kind = ("a symbolic link" if target.is_symlink() else "a folder" if target.is_dir() else
                "a file" if target.is_file() else "something")
        return (f"{kind} that MammoPatch did not write is where this image's output folder goes ({target}); it is "
                "left as it is: move or rename it, or choose another --out")

    def earlier_outputs(self, names: Sequence[str], resume: bool, overwrite: bool) -> None:
        """Refuse to start a plain run (neither ``resume`` nor ``overwrite``) whose images have
        outputs already, typically a stopped batch run again: the user says what to do with
        them, instead of the finished images being reported as failures."""
        if resume or overwrite or not self.root.is_dir():
            return
        done = [name for name in names if self.is_complete(name)]
        if done:
            example = ", ".join(done[:3]) + (", ..." if len(done) > 3 else "")
            raise MammoPatchError(f"outputs of {len(done)} of the {len(names)} images exist already, from an earlier "
                                  f"run ({example}): --resume keeps them and finishes the batch, --overwrite "
                                  "recomputes them", self.root)

    def partial(self, name: str) -> Path:
        """A fresh private folder, marked as MammoPatch's, to write ``name``'s outputs into."""
        folder = self.root / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
        if self.is_ours(folder):
            shutil.rmtree(folder)
        folder.mkdir()
        (folder / MARKER_NAME).write_text("A MammoPatch output folder: MammoPatch may replace or remove it.\n")
        return folder

    def publish(self, partial: Path, name: str, overwrite: bool) -> Path:
        """Give a finished partial folder its final name (replacing an older one of MammoPatch's
        if asked; never anything else)."""
        final = self.root / name
        blocked = self.in_the_way(name)
        if blocked is not None:
            shutil.rmtree(partial, ignore_errors=True)
            raise MammoPatchError(blocked)
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
