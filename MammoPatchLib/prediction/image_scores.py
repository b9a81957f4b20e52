"""A batch's image-level scores, each also read against the woman's other breast
(:mod:`MammoPatchLib.other_breast`), in ``image_scores.csv`` beside ``summary.csv``.

The scores are taken from the images' own outputs (``findings.json``), so a resumed batch
lists the images done earlier too, and the pairs are found across the whole batch, whichever
rank analysed each side. A DICOM image pairs with the image of the same study and view from
the other side (ImageLaterality / ViewPosition); files without a study or a side, and the
images of a view that holds more than one image of a side, get their own score only (the rule
the findings follow: :func:`~MammoPatchLib.other_breast.crowded_views`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..io.atomic import atomic_path
from ..results.files import findings_document
from ..other_breast import other_breast_scores, scores_against_other_breast, source_breast_key, source_study
from ..vocabulary import PathLike
from .rows import Row

#: The file a batch writes, and its columns.
IMAGE_SCORES_FILE = "image_scores.csv"
IMAGE_SCORE_COLUMNS = ["image", "image_score", "other_breast_score", "image_score_vs_other_breast", "study",
                       "view", "laterality"]


def image_score_rows(rows: Sequence[Row]) -> List[Dict[str, str]]:
    """One CSV row per analysed input of the batch (failed ones have no score)."""
    entries = []
    for row in rows:
        document = findings_document(row.output) if row.output and not row.failed else None
        if document is None:
            continue
        source = document.get("source", {})
        score = document.get("image_score")
        entries.append((row.image, source, float(score) if isinstance(score, (int, float)) else None))
    keys = [source_breast_key(source) for _, source, _ in entries]
    scores = [score for _, _, score in entries]
    others = other_breast_scores(keys, scores)
    against = scores_against_other_breast(keys, scores, others=others)

    def text(value: Optional[float]) -> str:
        return "" if value is None else f"{value:.4f}"

    return [{"image": image, "image_score": text(score), "other_breast_score": text(other),
             "image_score_vs_other_breast": text(relative), "study": source_study(source),
             "view": source.get("view_position", "") or "", "laterality": source.get("laterality", "") or ""}
            for (image, source, score), other, relative in zip(entries, others, against)]


def write_image_scores(rows: Sequence[Row], root: PathLike) -> str:
    """``root/image_scores.csv`` for the batch's ``rows`` (atomically)."""
    path = Path(root) / IMAGE_SCORES_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.DictWriter(handle, fieldnames=IMAGE_SCORE_COLUMNS)
            writer.writeheader()
            writer.writerows(image_score_rows(rows))
    return os.fspath(path)


__all__ = ["IMAGE_SCORES_FILE", "IMAGE_SCORE_COLUMNS", "image_score_rows", "write_image_scores"]
