"""What every data set reader yields: one record per image, boxes in pixel coordinates."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import AnnotationError

logger = logging.getLogger(__name__)

#: Image names a warning about missing files lists before "...".
NAMES_SHOWN = 5


@dataclass(frozen=True)
class Finding:
    """One annotated finding: a VinDr class and its box (xmin, ymin, xmax, ymax) in pixels
    of the stored image (x = column, y = row, origin top-left)."""

    category: str
    box: Tuple[float, float, float, float]

    @property
    def centre(self) -> Tuple[float, float]:
        """(x, y) centre of the box."""
        return (0.5 * (self.box[0] + self.box[2]), 0.5 * (self.box[1] + self.box[3]))


@dataclass
class ImageRecord:
    """One mammogram of a data set.

    Attributes:
        path: image file.
        image_id: the data set's identifier of the image.
        patient_id: the woman; splits never separate two images of one patient.
        split: "training", "validation", "test" or "" (unassigned).
        findings: boxed findings.
        image_labels: classes known for the whole image without a box (e.g. MIAS
            calcifications without coordinates).
        laterality, view_position: "L"/"R", "CC"/"MLO" where known.
        spacing_mm: pixel spacing when the data set states it and the file may not.
        size: (rows, columns) when the annotations state it.
    """

    path: Path
    image_id: str
    patient_id: str
    split: str = ""
    findings: List[Finding] = field(default_factory=list)
    image_labels: List[str] = field(default_factory=list)
    laterality: str = ""
    view_position: str = ""
    spacing_mm: Optional[float] = None
    size: Optional[Tuple[int, int]] = None

    @property
    def categories(self) -> List[str]:
        """Every class present on the image (boxed or image-level), without repeats."""
        seen: Dict[str, None] = {}
        for name in [f.category for f in self.findings] + list(self.image_labels):
            seen.setdefault(name, None)
        return list(seen)

    @property
    def is_normal(self) -> bool:
        return not self.findings and not self.image_labels


def read_csv_rows(path: Path, required: Sequence[str]) -> List[Dict[str, str]]:
    """Rows of a CSV as dicts, after checking the header has every ``required`` column."""
    if not path.is_file():
        raise AnnotationError("annotation table not found", path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise AnnotationError(f"missing column(s) {missing}; found {header}", path)
        rows = []
        for row in reader:
            if None in row:  # DictReader's key for the fields beyond the header
                raise AnnotationError(f"line {reader.line_num}: more fields than the {len(header)} columns of the "
                                      "header (an unquoted comma?)", path)
            rows.append({k.strip(): (v or "").strip() for k, v in row.items()})
        return rows


def with_files(records: List[ImageRecord], table: Path, row_images: Sequence[str] = ()) -> List[ImageRecord]:
    """The records whose image file is there. An annotation table may name more images than a
    folder holds (a partial download, a folder of a few images beside the full table): those are
    skipped with one warning that says how many rows and images, and names a few, so that a
    wrong folder is noticed instead of silently training or evaluating on a fraction of it.

    Args:
        row_images: the image id of each row of the table(s), to count the rows skipped.
    """
    present = [r for r in records if r.path.is_file()]
    missing = [r for r in records if not r.path.is_file()]
    if missing:
        gone = {r.image_id for r in missing}
        skipped = sum(image in gone for image in row_images)
        names = ", ".join(r.path.name for r in missing[:NAMES_SHOWN]) + (", ..." if len(missing) > NAMES_SHOWN else "")
        rows = f"{skipped} of {len(row_images)} row(s), naming " if row_images else ""
        logger.warning("%s: %s%d of %d annotated image(s), skipped: no such file in %s (%s)", table, rows,
                       len(missing), len(records), table.parent, names)
    return present


def check_box(box: Tuple[float, float, float, float], size: Optional[Tuple[int, int]], where: str,
              tolerance: float = 2.0) -> Tuple[float, float, float, float]:
    """Validate a box against the image size; raises AnnotationError naming ``where``."""
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise AnnotationError(f"box {box} is empty or inverted (need xmin < xmax, ymin < ymax)", where)
    if size is not None:
        rows, cols = size
        if x0 < -tolerance or y0 < -tolerance or x1 > cols + tolerance or y1 > rows + tolerance:
            raise AnnotationError(f"box {box} lies outside the {rows} x {cols} image", where)
        box = (max(0.0, x0), max(0.0, y0), min(float(cols), x1), min(float(rows), y1))
    return box


#: A box keeps its finding when at least this share of its area lies on the image.
MIN_INSIDE_FRACTION = 0.5


def fit_box(box: Tuple[float, float, float, float], size: Optional[Tuple[int, int]]
            ) -> Tuple[Optional[Tuple[float, float, float, float]], str]:
    """A box clipped to the image, and what happened: "ok", "clipped" (it overhung the border,
    as real VinDr-Mammo boxes do by up to tens of pixels), or why it is no box: "not finite",
    "empty" (xmax <= xmin or ymax <= ymin), "outside" (less than half of it on the image)."""
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        return None, "not finite"
    if not (x1 > x0 and y1 > y0):
        return None, "empty"
    if size is None:
        return box, "ok"
    rows, cols = size
    clipped = (max(0.0, x0), max(0.0, y0), min(float(cols), x1), min(float(rows), y1))
    if clipped == tuple(box):
        return box, "ok"
    inside = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1])
    if inside < MIN_INSIDE_FRACTION * (x1 - x0) * (y1 - y0):
        return None, "outside"
    return clipped, "clipped"
