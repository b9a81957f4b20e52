"""A batch's inputs as jobs: files, folders, glob patterns and manifests, in a deterministic
order with unique output names, and each rank's share of them under torchrun.

- A manifest is a CSV with a ``path`` column (relative paths are relative to the manifest), an
  optional ``spacing_mm`` column for files that store no spacing, and optional ``study``,
  ``view`` and ``laterality`` columns for files that state none (PNG, PGM): they let a batch
  read the two breasts of a view against each other (:class:`~.runner.PairWait`).
- Under torchrun each rank takes whole studies (:func:`shard`): the jobs are grouped by the
  study of their film (DICOM: StudyInstanceUID, else PatientID, read from the header alone; other
  files: the manifest's ``study``), and the groups are dealt to the ranks in turn in the order of
  their first job, so that the two breasts of a view meet on one rank and are read against each
  other, and the ranks' loads stay even over many studies.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

from ..errors import MammoPatchError
from ..other_breast import source_study
from ..vocabulary import PathLike
from .folder import output_stem, unique_names

#: Threads reading the files' headers when a batch is dealt to torchrun ranks (:func:`study_groups`).
HEADER_READERS = 8


@dataclass(frozen=True)
class Stated:
    """What a manifest row says of its film (empty: not stated)."""

    study: str = ""
    view_position: str = ""
    laterality: str = ""

    def apply_to(self, image) -> None:
        """Fill in what ``image`` (a MammogramImage) does not state itself; the file's own
        header wins where it states a value."""
        image.uids = self.uids_for(image.uids)
        if self.view_position and not image.view_position:
            image.view_position = self.view_position
        if self.laterality and not image.laterality:
            image.laterality = self.laterality

    def uids_for(self, uids: Dict[str, str]) -> Dict[str, str]:
        """A file's identifiers with the stated study where the file states no study (and no
        patient, which stands for one: :func:`~MammoPatchLib.other_breast.source_study`)."""
        if self.study and not source_study({"uids": uids}):
            return {**uids, "StudyInstanceUID": self.study}
        return uids


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


def plan_jobs(inputs, spacing_mm: Optional[float] = None, exclude: Sequence[PathLike] = ()) -> List[Job]:
    """The batch's jobs, in a deterministic order (inputs in the order given, folders sorted);
    a folder search skips the ``exclude`` folders (the batch's output folder) and MammoPatch's
    output folders (:func:`~MammoPatchLib.io.discovery.collect_images`)."""
    from ..io.discovery import collect_images

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    entries: List[Tuple[Path, Optional[float], Stated]] = []
    for item in inputs:
        if is_manifest(item):
            entries.extend(read_manifest_rows(item))
        else:
            entries.extend((p, None, Stated()) for p in collect_images([item], exclude=exclude))
    seen, unique = set(), []
    for path, spacing, stated in entries:
        if path not in seen:
            seen.add(path)
            unique.append((path, spacing, stated))
    names = unique_names(output_stem(p) for p, _, _ in unique)
    return [Job(i, p, n, s if s is not None else spacing_mm, stated)
            for i, ((p, s, stated), n) in enumerate(zip(unique, names))]


def shard(jobs: Sequence[Job], rank: int, world_size: int,
          breasts: Optional[Mapping[Job, Dict[str, Any]]] = None) -> List[Job]:
    """Rank ``rank``'s share of the batch, in job order: the jobs of every W-th study, counting
    the studies in the order of their first job (:func:`study_groups`). Every rank computes the
    same deal from the same job list. Whole studies, so that the two breasts of a view are on one
    rank (:class:`~.runner.PairWait`); dealt in turn rather than in blocks, so that each rank gets
    as many studies as the next (give or take one) wherever the large ones lie. ``breasts``:
    the jobs' :func:`job_breasts`, where the batch has read them already."""
    if world_size <= 1:
        return list(jobs)
    groups = study_groups(jobs, breasts)
    turn: Dict[Hashable, int] = {}
    for group in groups:
        turn.setdefault(group, len(turn))
    return [job for job, group in zip(jobs, groups) if turn[group] % world_size == rank]


def study_groups(jobs: Sequence[Job], breasts: Optional[Mapping[Job, Dict[str, Any]]] = None) -> List[Hashable]:
    """Each job's group: its film's study as the batch will read it (the file's StudyInstanceUID
    or PatientID, from its header alone, else the study its manifest row states), or the job
    itself for a film of no known study, or whose header cannot be read (loading it reports why).
    The headers are read on a few threads (:func:`job_breasts`; or given as ``breasts``)."""
    breasts = breasts if breasts is not None else job_breasts(jobs)
    studies = [source_study(breasts[job]) for job in jobs]
    return [("study", study) if study else ("job", job.index) for job, study in zip(jobs, studies)]


def job_breasts(jobs: Sequence[Job]) -> Dict[Job, Dict[str, Any]]:
    """Every job's :func:`job_breast`, its header read once for all that needs it (the deal of
    studies to ranks, the check for crowded views), on a few threads: on a network share,
    reading is mostly waiting."""
    with ThreadPoolExecutor(max_workers=HEADER_READERS) as readers:
        return dict(zip(jobs, readers.map(job_breast, jobs)))


def job_breast(job: Job) -> Dict[str, Any]:
    """What a job's film will state of its study and breast (``uids``, ``laterality``,
    ``view_position``, as ``MammogramImage.metadata()`` gives them once the manifest row is
    applied), from its header alone; empty values when unknown or unreadable."""
    from ..io.readers import read_breast

    try:
        breast = read_breast(job.path)
    except Exception:  # noqa: BLE001 - a file that cannot be read fails when it is loaded, named there
        breast = {"uids": {}, "laterality": "", "view_position": ""}
    return {"uids": job.stated.uids_for(breast["uids"]),
            "laterality": breast["laterality"] or job.stated.laterality,
            "view_position": breast["view_position"] or job.stated.view_position}
