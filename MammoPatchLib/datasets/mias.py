"""The mini-MIAS layout (MIAS MiniMammographic Database; Suckling et al. 1994).

``mdbNNN.png`` (or the original ``mdbNNN.pgm``), 1024 x 1024 px at 200 um, and
``annotations.csv`` with MIAS's columns. MIAS puts the origin at the bottom-left: the row of
a centre is ``row_top_left`` (= 1024 - y). Findings are circles; their box is the circle's
bounding square. Rows without coordinates (diffuse calcifications) become image-level
labels. Consecutive numbers are the two breasts of one woman (mdb001 + mdb002), which is
the patient key for splits. The database's images are research-use only (see its licence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ..errors import AnnotationError
from ..vocabulary import PathLike
from .records import Finding, ImageRecord, check_box, read_csv_rows, with_files

MIAS_SPACING_MM = 0.2
MIAS_SIZE = (1024, 1024)
MIAS_COLUMNS = ["refnum", "image", "class", "x", "y_bottom_left", "radius"]

#: MIAS abnormality class -> VinDr finding class (NORM -> no finding).
MIAS_TO_VINDR: Dict[str, str] = {
    "CIRC": "Mass",
    "SPIC": "Mass",
    "MISC": "Mass",
    "CALC": "Suspicious Calcification",
    "ARCH": "Architectural Distortion",
    "ASYM": "Asymmetry",
}


def mias_patient_id(refnum: str) -> str:
    """'mdb001' and 'mdb002' -> 'mias-woman-001' (consecutive images are one woman)."""
    digits = "".join(ch for ch in refnum if ch.isdigit())
    if not digits:
        raise ValueError(f"not a MIAS reference number: {refnum!r}")
    return f"mias-woman-{(int(digits) + 1) // 2:03d}"


def _image_path(root: Path, row: Dict[str, str]) -> Path:
    named = root / (row.get("image") or f"{row['refnum']}.png")
    if named.exists():
        return named
    for ext in (".png", ".pgm"):
        candidate = root / f"{row['refnum']}{ext}"
        if candidate.exists():
            return candidate
    return named


def read_mias(root: PathLike, require_files: bool = True) -> List[ImageRecord]:
    """Read the mini-MIAS folder into one :class:`ImageRecord` per image."""
    root = Path(root)
    table = root / "annotations.csv"
    rows = read_csv_rows(table, MIAS_COLUMNS)
    records: Dict[str, ImageRecord] = {}
    for index, row in enumerate(rows, start=2):
        line = f"{table}:{index}"
        refnum = row["refnum"]
        if refnum not in records:
            records[refnum] = ImageRecord(
                path=_image_path(root, row), image_id=refnum, patient_id=mias_patient_id(refnum),
                spacing_mm=MIAS_SPACING_MM, size=MIAS_SIZE,
            )
        record = records[refnum]
        label = row["class"].upper()
        if label == "NORM":
            continue
        if label not in MIAS_TO_VINDR:
            raise AnnotationError(f"unknown MIAS class {label!r}; expected NORM or one of {sorted(MIAS_TO_VINDR)}", line)
        category = MIAS_TO_VINDR[label]
        if row["x"] == "" or row["radius"] == "":
            if category not in record.image_labels:
                record.image_labels.append(category)
            continue
        try:
            x, radius = float(row["x"]), float(row["radius"])
            row_top = float(row["row_top_left"]) if row.get("row_top_left") else MIAS_SIZE[0] - float(row["y_bottom_left"])
        except ValueError:
            raise AnnotationError("x, y_bottom_left and radius must be numbers", line) from None
        box = (x - radius, row_top - radius, x + radius, row_top + radius)
        # MIAS circles may overhang the image edge (a large mass at the border): clip them, but a
        # centre outside the image is an error.
        if not (0 <= x <= MIAS_SIZE[1] and 0 <= row_top <= MIAS_SIZE[0]):
            raise AnnotationError(f"finding centre ({x:g}, {row_top:g}) lies outside the image", line)
        clipped = (max(0.0, box[0]), max(0.0, box[1]), min(float(MIAS_SIZE[1]), box[2]), min(float(MIAS_SIZE[0]), box[3]))
        record.findings.append(Finding(category, check_box(clipped, record.size, line)))
    result = list(records.values())
    return with_files(result, table, [row["refnum"] for row in rows]) if require_files else result
