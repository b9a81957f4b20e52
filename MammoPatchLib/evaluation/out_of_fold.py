"""Out-of-fold predictions: what cross-validation's training produces and evaluation consumes.

Training (``training.crossval``) trains each fold's heads and turns their cell heatmaps of the
held-out women into :class:`ImageCase` s through :func:`case_from_cells` (the Predictor's own
second half, as ``predict`` would give them); an :class:`OutOfFold` holds one recipe's cases with
the folds and the breast pairing. Everything computed from them (figures, operating points,
reports) lives in evaluation and never trains.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..datasets import ImageRecord
from ..io import read_mammogram
from ..io.atomic import atomic_path
from ..other_breast import BreastKey, OtherBreastPoint, breast_key
from .lesions import ImageCase, case_from_result

RECIPES_DIR = "recipes"
CASES_FILE = "cases.json"
OUTCOME_FILE = "outcome.json"


@dataclass
class OutOfFold:
    """One recipe's out-of-fold predictions.

    Attributes:
        recipe: the recipe as a mapping (its ``name``, ``classes``, ``fp_per_image`` and
            ``normal_with_finding`` decide the figures and operating points).
        cases: every held-out image's case, predicted by heads that never saw her woman.
        fold_of_image: {image_id: fold}.
        breast_keys: {image_id: breast key} of every image (:func:`record_breast_keys`), for
            the other-breast view.
        seconds: training and prediction time of all folds.
    """

    recipe: Dict[str, Any]
    cases: List[ImageCase]
    fold_of_image: Dict[str, int]
    breast_keys: Dict[str, Optional[BreastKey]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return str(self.recipe["name"])

    @property
    def classes(self) -> List[str]:
        return list(self.recipe["classes"])


@dataclass
class ModelOperatingPoint:
    """Where a model built from a recipe operates: per-class thresholds (in the model's class
    order), the image gate, the point for an image read against her other breast, and a
    sentence saying how they were fitted."""

    thresholds: List[float]
    image_gate: float
    other_breast: OtherBreastPoint
    description: str


def case_from_cells(record: ImageRecord, probs: torch.Tensor, geometry, predictor,
                    image_top_k: Optional[int] = None) -> ImageCase:
    """A held-out image's case from its cell probabilities (classes x cells, each cell
    ``geometry.cell_px`` preprocessed pixels wide): findings from the Predictor's own mapping and
    detection; the image score is the Predictor's (the highest
    heatmap value) or, with ``image_top_k``, the mean of the top k cells of the best class."""
    from ..inference.predictor import CellHeatmaps

    classes = list(predictor.model.info.classes)
    source = read_mammogram(record.path, spacing_mm=record.spacing_mm)
    maps = CellHeatmaps(probs, geometry, geometry.cell_px)  # type: ignore[arg-type]
    result = predictor.result_from_cells(source, [maps])
    case = case_from_result(record, result, classes)
    if image_top_k is not None:
        cells = probs[[classes.index(c) for c in predictor.selected]].flatten(1)
        k = min(image_top_k, cells.shape[1])
        case.image_score = float(cells.topk(k, dim=1).values.mean(1).max())
    return case


def record_breast_keys(records: Sequence[ImageRecord]) -> Dict[str, Optional[BreastKey]]:
    """{image_id: breast key}. A record without a side (mini-MIAS states none) takes its place
    among its woman's images as the side when she has exactly two of that view: the data set
    gives one film per breast."""
    groups: Dict[Tuple[str, str], List[ImageRecord]] = {}
    for record in records:
        groups.setdefault((record.patient_id, record.view_position), []).append(record)
    keys: Dict[str, Optional[BreastKey]] = {}
    for (woman, view), members in groups.items():
        unknown = not any(r.laterality for r in members)
        for place, record in enumerate(sorted(members, key=lambda r: r.image_id)):
            side = str(place + 1) if unknown and len(members) == 2 else record.laterality
            keys[record.image_id] = breast_key(woman, view, side)
    return keys


# --- persistence: every recipe's out-of-fold cases stay in the report folder -------------------

def case_to_dict(case: ImageCase) -> Dict[str, Any]:
    return {"image_id": case.image_id, "patient_id": case.patient_id, "abnormal": case.abnormal,
            "image_score": case.image_score, "class_maxima": case.class_maxima,
            "detections": {k: [[float(s), list(map(float, b)), list(map(float, p))] for s, b, p in v]
                           for k, v in case.detections.items()},
            "truths": {k: [list(map(float, b)) for b in v] for k, v in case.truths.items()}}


def case_from_dict(d: Dict[str, Any]) -> ImageCase:
    return ImageCase(d["image_id"], d["patient_id"], bool(d["abnormal"]), float(d["image_score"]),
                     {k: [(s, tuple(b), tuple(p)) for s, b, p in v] for k, v in d["detections"].items()},
                     {k: [tuple(b) for b in v] for k, v in d["truths"].items()},
                     {k: float(v) for k, v in d.get("class_maxima", {}).items()})


def save_out_of_fold(outcome: OutOfFold, summary: Dict[str, Any], out_dir: Path) -> Path:
    """``out_dir/recipes/<name>/``: the cases (``cases.json``) and their figures (``outcome.json``)."""
    folder = Path(out_dir) / RECIPES_DIR / outcome.name
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CASES_FILE) as tmp:
        tmp.write_text(json.dumps({"fold_of_image": outcome.fold_of_image,
                                   "cases": [case_to_dict(c) for c in outcome.cases]}), encoding="utf-8")
    with atomic_path(folder / OUTCOME_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return folder


def load_out_of_folds(out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """{recipe name: {"summary", "cases"}} of every recipe run into ``out_dir``."""
    found: Dict[str, Dict[str, Any]] = {}
    for folder in sorted((Path(out_dir) / RECIPES_DIR).glob("*")):
        if not (folder / CASES_FILE).is_file() or not (folder / OUTCOME_FILE).is_file():
            continue
        cases = json.loads((folder / CASES_FILE).read_text(encoding="utf-8"))
        found[folder.name] = {"summary": json.loads((folder / OUTCOME_FILE).read_text(encoding="utf-8")),
                              "cases": [case_from_dict(c) for c in cases["cases"]]}
    return found
