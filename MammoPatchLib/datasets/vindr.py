"""The VinDr-Mammo v1.0.0 layout (PhysioNet, DOI 10.13026/BR2V-7517).

``images/<study_id>/<image_id>.dicom`` plus ``finding_annotations.csv`` (one row per finding,
or one 'No Finding' row per normal image) and ``breast-level_annotations.csv`` (one row per
image). A study is one woman's exam, so ``study_id`` is the patient key for splits.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import AnnotationError
from ..vocabulary import FINDING_CLASSES, NO_FINDING, PathLike, VinDrSchema
from .records import Finding, ImageRecord, fit_box, read_csv_rows, with_files

logger = logging.getLogger(__name__)

FINDING_COLUMNS = list(VinDrSchema.FINDING_COLUMNS)
BREAST_COLUMNS = list(VinDrSchema.BREAST_COLUMNS_READ)


def parse_categories(text: str, where: str) -> List[str]:
    """Parse VinDr's list string "['Mass', 'Suspicious Calcification']" into names."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise AnnotationError(f"finding_categories {text!r} is not a list string such as \"['Mass']\"", where) from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise AnnotationError(f"finding_categories {text!r} is not a list of class names", where)
    return [v.strip() for v in value]


def read_vindr(
    root: PathLike,
    classes: Sequence[str] = FINDING_CLASSES,
    require_files: bool = True,
    counts: Optional[Dict[str, int]] = None,
) -> List[ImageRecord]:
    """Read a VinDr-Mammo tree into one :class:`ImageRecord` per image.

    Args:
        root: the folder holding ``images/`` and the two CSVs.
        classes: the finding classes kept; other categories are ignored with a warning.
        require_files: skip (with one warning) images whose DICOM is missing, e.g. a partial
            download; False keeps them.
        counts: filled with what was read: images, findings, boxes clipped to the image,
            findings dropped (no usable box), images without a file.

    Boxes overhanging the image border (common in the real annotations) are clipped; a box
    that cannot be one (not numbers, empty, mostly outside the image) drops that finding only.
    One summary warning reports both, with the first examples.

    Raises:
        AnnotationError: missing CSV or columns, malformed category lists, image sizes that are
            not numbers.
    """
    root = Path(root)
    table = root / "finding_annotations.csv"
    rows = read_csv_rows(table, FINDING_COLUMNS)
    breast_table = root / "breast-level_annotations.csv"
    breast_rows = read_csv_rows(breast_table, BREAST_COLUMNS) if breast_table.exists() else []

    known = {c.lower(): c for c in classes}
    records: Dict[str, ImageRecord] = {}
    ignored: Dict[str, int] = {}
    tally = {"findings": 0, "clipped": 0, "dropped": 0, "missing_files": 0}
    examples: List[str] = []

    def record_for(row: Dict[str, str], line: str) -> ImageRecord:
        if row["image_id"] not in records:
            records[row["image_id"]] = _new_record(root, row, line)
        return records[row["image_id"]]

    for index, row in enumerate(breast_rows, start=2):
        record_for(row, f"{breast_table}:{index}")
    for index, row in enumerate(rows, start=2):
        line = f"{table}:{index}"
        record = record_for(row, line)
        names = [n for n in parse_categories(row["finding_categories"], line) if n != NO_FINDING]
        has_box = all(row[c] != "" for c in ("xmin", "ymin", "xmax", "ymax"))
        for name in names:
            if name.lower() not in known:
                ignored[name] = ignored.get(name, 0) + 1
                continue
            category = known[name.lower()]
            if has_box:
                box, status = _annotated_box(row, record.size)
                if box is None:
                    tally["dropped"] += 1
                    if len(examples) < 3:
                        examples.append(f"line {index}: {status}")
                    continue
                tally["clipped"] += status == "clipped"
                tally["findings"] += 1
                record.findings.append(Finding(category, box))
            elif category not in record.image_labels:
                record.image_labels.append(category)
    if ignored:
        logger.warning("%s: ignored categories not in the class list: %s", table, ignored)
    if tally["clipped"] or tally["dropped"]:
        logger.warning("%s: %d box(es) overhanging the image clipped to it; %d finding(s) without a usable box "
                       "dropped%s", table, tally["clipped"], tally["dropped"],
                       f" ({'; '.join(examples)})" if examples else "")

    annotated = list(records.values())
    result = with_files(annotated, table, [r["image_id"] for r in rows + breast_rows]) if require_files else annotated
    tally["missing_files"] = len(annotated) - len(result)
    tally["images"] = len(result)
    if counts is not None:
        counts.update(tally)
    return result


def _new_record(root: Path, row: Dict[str, str], line: str) -> ImageRecord:
    """The record of the image a table row names (its findings are added by the caller)."""
    try:
        size = (int(float(row["height"])), int(float(row["width"])))
    except ValueError:
        raise AnnotationError(f"height/width {row['height']!r}/{row['width']!r} are not numbers", line) from None
    return ImageRecord(path=root / "images" / row["study_id"] / f"{row['image_id']}.dicom",
                       image_id=row["image_id"], patient_id=row["study_id"], split=row["split"],
                       laterality=row["laterality"], view_position=row["view_position"], size=size)


def _annotated_box(row: Dict[str, str], size):
    """(box fitted to the image, "ok" / "clipped") of a row's box, or (None, why not)."""
    try:
        raw = tuple(float(row[c]) for c in ("xmin", "ymin", "xmax", "ymax"))
        return fit_box(raw, size)  # type: ignore[arg-type]
    except ValueError:
        return None, "not numbers"
