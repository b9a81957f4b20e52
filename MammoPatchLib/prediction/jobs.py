"""A batch's inputs as jobs: files, folders, glob patterns and manifests, in a deterministic
order with unique output names, and each rank's share of them under torchrun.

- A manifest is a CSV with a ``path`` column (relative paths are relative to the manifest), an
  optional ``spacing_mm`` column for files that store no spacing, and optional ``study``,
  ``view`` and ``laterality`` columns for files that state none (PNG, PGM): they let a batch
  read the two breasts of a view against each other (:class:`~.runner.PairWait`).
- Rank r of W takes jobs r, r + W, r + 2W, ... of the job list (:func:`shard`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import MammoPatchError
from ..vocabulary import PathLike
from .folder import output_stem, unique_names


@dataclass(frozen=True)
class Stated:
    """What a manifest row says of its film (empty: not stated)."""

    study: str = ""
    view_position: str = ""
    laterality: str = ""

    def apply_to(self, image) -> None:
        """Fill in what ``image`` (a MammogramImage) does not state itself; the file's own
        header wins where it states a value."""
        if self.study and not (image.uids.get("StudyInstanceUID") or image.uids.get("PatientID")):
            image.uids = {**image.uids, "StudyInstanceUID": self.study}
        if self.view_position and not image.view_position:
            image.view_position = self.view_position
        if self.laterality and not image.laterality:
            image.laterality = self.laterality


@dataclass(frozen=True)
class Job:
    """One input of a batch: its position in the batch, its file, output folder name, spacing,
    and what its manifest row states of it."""

    index: int
    path: Path
    name: str
    spacing_mm: Optional[float] = None
    stated: Stated = Stated()


def read_manifest(path: PathLike) -> List[Tuple[Path, Optional[float]]]:
    """(path, spacing or None) of every row of a manifest CSV (see the module docstring)."""
    return [(file, spacing) for file, spacing, _ in read_manifest_rows(path)]


def read_manifest_rows(path: PathLike) -> List[Tuple[Path, Optional[float], Stated]]:
    """(path, spacing or None, what the row states) of every row of a manifest CSV."""
    from ..datasets.records import read_csv_rows
    from ..io.validate import check_spacing_value

    manifest = Path(path)
    rows = read_csv_rows(manifest, ["path"])
    out = []
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise MammoPatchError(f"line {line}: empty path", manifest)
        file = Path(row["path"])
        file = file if file.is_absolute() else manifest.parent / file
        spacing = None
        if row.get("spacing_mm"):
            try:
                spacing = check_spacing_value(float(row["spacing_mm"]), "spacing_mm")
            except ValueError as exc:
                raise MammoPatchError(f"line {line}: {exc}", manifest) from None
        laterality = (row.get("laterality") or "").strip().upper()
        if laterality not in ("", "L", "R"):
            raise MammoPatchError(f"line {line}: laterality must be L or R, got {row['laterality']!r}", manifest)
        out.append((file, spacing, Stated((row.get("study") or "").strip(), (row.get("view") or "").strip().upper(),
                                          laterality)))
    return out


def is_manifest(path: PathLike) -> bool:
    """A CSV file given as an input is a manifest (a list of images), not an image."""
    return str(path).lower().endswith(".csv") and Path(path).is_file()


def plan_jobs(inputs, spacing_mm: Optional[float] = None) -> List[Job]:
    """The batch's jobs, in a deterministic order (inputs in the order given, folders sorted)."""
    from ..io.discovery import collect_images

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    entries: List[Tuple[Path, Optional[float], Stated]] = []
    for item in inputs:
        if is_manifest(item):
            entries.extend(read_manifest_rows(item))
        else:
            entries.extend((p, None, Stated()) for p in collect_images([item]))
    seen, unique = set(), []
    for path, spacing, stated in entries:
        if path not in seen:
            seen.add(path)
            unique.append((path, spacing, stated))
    names = unique_names(output_stem(p) for p, _, _ in unique)
    return [Job(i, p, n, s if s is not None else spacing_mm, stated)
            for i, ((p, s, stated), n) in enumerate(zip(unique, names))]



def shard(jobs: Sequence[Job], rank: int, world_size: int) -> List[Job]:
    """Rank ``rank``'s share of the batch: jobs rank, rank + W, rank + 2W, ... Interleaving
    (rather than blocks) keeps the ranks' loads even when neighbouring inputs differ in size,
    e.g. a VinDr study's four views."""
    return [job for job in jobs if job.index % world_size == rank]
