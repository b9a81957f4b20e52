"""A batch's summary: one typed :class:`Row` per input, and ``summary.csv`` written from them.

The row is what a batch reports about each input, whichever way it ended (:class:`Status`):
analysed (``ok``), skipped by a resumed run because its outputs exist (``done earlier``), or
``failed`` with a one-line error naming the file. The CSV is rewritten atomically after every
image, so a killed batch still lists what it did.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields, replace
from typing import Dict, List, Optional, Sequence

from ..io.atomic import atomic_path
from ..vocabulary import PathLike, Status

#: A batch's summary file, in its output folder, and its columns, in order.
SUMMARY_FILE = "summary.csv"
SUMMARY_COLUMNS = ["image", "status", "error", "findings", "top_class", "top_score", "seconds", "output", "warnings",
                   "rank"]

#: A rank's results file (``results-rank<r>.csv``): the summary's columns and the input's place
#: in the batch, so the ranks' files merge back into job order.
RESULT_COLUMNS = ["index", *SUMMARY_COLUMNS]


@dataclass(frozen=True)
class Row:
    """What became of one input of a batch.

    Attributes:
        image: the input file.
        status: ok, done earlier or failed.
        error: why it failed (file and cause, one line); empty otherwise.
        findings, top_class, top_score: how many findings, and the best one (None / "" when
            it failed, or it has none).
        seconds: time spent on it.
        output: its output folder (empty when it failed).
        warnings: what the reader warned about (e.g. a default pixel spacing), "; "-joined.
        index, rank: its place in the batch and the rank that ran it.
    """

    image: str
    status: Status
    error: str = ""
    findings: Optional[int] = None
    top_class: str = ""
    top_score: Optional[float] = None
    seconds: Optional[float] = None
    output: str = ""
    warnings: str = ""
    index: Optional[int] = None
    rank: int = 0

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def failed(self) -> bool:
        return self.status == Status.FAILED

    def placed(self, index: int, rank: int, seconds: float) -> "Row":
        """This row at its place in the batch (``seconds``: when the row has no time of its own)."""
        return replace(self, index=index, rank=rank, seconds=self.seconds if self.seconds is not None else seconds)

    def to_csv(self) -> Dict[str, str]:
        """The row as ``summary.csv`` writes it (scores to 4 digits, seconds to 2)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["status"] = str(self.status)
        values["top_score"] = "" if self.top_score is None else f"{self.top_score:.4f}"
        values["seconds"] = "" if self.seconds is None else f"{self.seconds:.2f}"
        return {k: "" if v is None else str(v) for k, v in values.items()}


def write_summary(rows: Sequence[Row], path: PathLike, columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """The batch's summary CSV: one line per input, in ``columns`` (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(row.to_csv() for row in rows)
    return os.fspath(path)


def failed_images(rows: Sequence[Row]) -> List[str]:
    """The inputs that failed, in batch order."""
    return [row.image for row in rows if row.failed]
