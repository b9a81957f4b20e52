"""Lesion-level and image-level evaluation of whole images, through the same Predictor that
users run, with bootstrap intervals over women.

- FROC: for each class, and pooled over classes (a hit needs the right class), the
  sensitivity reached at 0.25, 0.5, 1, 2 and 4 false positives per image. Candidates are the
  Predictor's findings with a low score floor, so the curve covers the whole range.
- Any finding (:func:`any_finding_case`): the class-agnostic view a reader of the heatmaps
  has, where a finding of any class on a lesion of any class finds it, and findings of several
  classes at one place count once. With few lesions per class, the class-matched pooled figure
  mostly measures which class the model names; this one measures whether it looks in the right
  place.
- Image level: abnormal vs normal ROC AUC from each image's highest heatmap value (over the
  classes the model reports).
- ``score``: the mean pooled sensitivity over the five rates (as in the LUNA16 challenge's
  CPM), one number for model selection.
- Bootstrap: women are resampled with replacement (2,000 draws by default) and every figure
  recomputed: 2.5th / 97.5th percentiles are the 95 % interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from .metrics import FALSE_POSITIVE, FOUND_AGAIN, froc, is_hit, match_image, merged_by_score, roc_auc

FP_RATES = (0.25, 0.5, 1, 2, 4)

#: The single class of the class-agnostic view (:func:`any_finding_case`).
ANY_FINDING = "any finding"


@dataclass
class ImageCase:
    """What one whole image contributes to the lesion- and image-level figures."""

    image_id: str
    patient_id: str
    abnormal: bool
    image_score: float
    detections: Dict[str, List[Tuple[float, tuple, tuple]]] = field(default_factory=dict)  # (score, box, peak)
    truths: Dict[str, List[tuple]] = field(default_factory=dict)
    class_maxima: Dict[str, float] = field(default_factory=dict)  # each class's highest heatmap value

    def class_maximum(self, name: str) -> float:
        """The class's highest heatmap value (its best detection's score when not recorded)."""
        if name in self.class_maxima:
            return self.class_maxima[name]
        return max((d[0] for d in self.detections.get(name, [])), default=0.0)


def case_from_result(record: ImageRecord, result, classes: Sequence[str]) -> ImageCase:
    """What one prediction contributes: detections and truths per class, the image score
    (:attr:`~MammoPatchLib.inference.PredictionResult.image_score`)."""
    maxima = result.max_probability()
    case = ImageCase(record.image_id, record.patient_id, not record.is_normal, result.image_score,
                     class_maxima={name: maxima[name] for name in classes if name in maxima})
    for name in classes:
        case.detections[name] = [(f.score, f.box_px, f.peak_px) for f in result.findings if f.category == name]
        case.truths[name] = [f.box for f in record.findings if f.category == name]
    return case


def any_finding_case(case: ImageCase, classes: Sequence[str], nms_iou: float = 0.3) -> ImageCase:
    """``case`` seen class-agnostically: one class, :data:`ANY_FINDING`, holding every lesion of
    ``classes`` and their findings merged across classes, highest score first; a finding whose
    peak lies inside a kept finding's box, or whose box overlaps one by ``nms_iou``, is the same
    place seen by another class and is dropped (the rule the Predictor applies within a class)."""
    merged = sorted((d for name in classes for d in case.detections.get(name, [])), key=lambda d: -d[0])
    kept: List[Tuple[float, tuple, tuple]] = []
    for score, box, peak in merged:
        if not any(is_hit(box, peak, other, iou_threshold=nms_iou) for _, other, _ in kept):
            kept.append((score, box, peak))
    truths = [b for name in classes for b in case.truths.get(name, [])]
    return ImageCase(case.image_id, case.patient_id, case.abnormal, case.image_score,
                     {ANY_FINDING: kept}, {ANY_FINDING: truths})


def collect_cases(predictor, records: Sequence[ImageRecord], classes: Sequence[str], images=None,
                  progress: bool = False) -> Tuple[List[ImageCase], List[str]]:
    """Run ``predictor`` (built with low thresholds) on every record. ``images`` may hold the
    already-read MammogramImages in record order. Returns (cases, errors)."""
    from ..io import read_mammogram

    cases, errors = [], []
    iterator = list(enumerate(records))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="whole images", unit="img")
    for i, record in iterator:
        try:
            image = images[i] if images is not None else read_mammogram(record.path, spacing_mm=record.spacing_mm)
            result = predictor.predict_image(image)
        except MammoPatchError as exc:
            errors.append(str(exc))
            continue
        cases.append(case_from_result(record, result, classes))
    return cases, errors


def _same_class_hit(box, peak, truth) -> bool:
    """The class-judged hit rule on (class, box) pairs."""
    return box[0] == truth[0] and is_hit(box[1], peak, truth[1])


def _class_tagged(case: ImageCase, classes: Sequence[str]) -> Tuple[List[tuple], List[tuple]]:
    """The case's detections as (score, (class, box), peak) and its truths as (class, box)."""
    return ([(s, (c, b), p) for c in classes for s, b, p in case.detections.get(c, [])],
            [(c, b) for c in classes for b in case.truths.get(c, [])])


def _pooled_froc(cases: Sequence[ImageCase], classes: Sequence[str]) -> Dict[str, Any]:
    tagged = [_class_tagged(case, classes) for case in cases]
    return froc([d for d, _ in tagged], [t for _, t in tagged], FP_RATES, hit=_same_class_hit)


def lesion_metrics(cases: Sequence[ImageCase], classes: Sequence[str]) -> Dict[str, Any]:
    """Per-class and pooled FROC, image-level AUC and the selection score."""
    per_class: Dict[str, Any] = {}
    for name in classes:
        truths = [case.truths.get(name, []) for case in cases]
        if not sum(len(t) for t in truths):
            continue
        curve = froc([case.detections.get(name, []) for case in cases], truths, FP_RATES)
        per_class[name] = {"froc": curve["sensitivity_at_fp"], "lesions": curve["lesions"], "curve": curve["curve"]}
    pooled = _pooled_froc(cases, classes)
    sens = pooled["sensitivity_at_fp"]
    labels = np.array([c.abnormal for c in cases])
    scores = np.array([c.image_score for c in cases])
    return {"per_class": per_class, "all_classes_froc": sens, "all_classes_curve": pooled["curve"],
            "lesions": pooled["lesions"], "images": len(cases),
            "score": float(np.mean([sens[str(r)] for r in FP_RATES])) if pooled["lesions"] else float("nan"),
            "image_auc": roc_auc(labels, scores), "abnormal": int(labels.sum()), "normal": int((~labels).sum())}


@dataclass
class ImageOutcomes:
    """One image's pooled FROC candidates, matched once: the scores of the detections that
    found a new lesion (``hit``) or no lesion (false positives), in the order ``froc`` takes
    them; second detections of a found lesion count as neither. Matching is image-local, so a
    resample of images only re-sorts these: the bootstrap need not match boxes again."""

    scores: np.ndarray
    hit: np.ndarray
    lesions: int
    abnormal: bool
    image_score: float


def image_outcomes(case: ImageCase, classes: Sequence[str]) -> ImageOutcomes:
    detections, truths = _class_tagged(case, classes)
    kept = [(score, outcome) for score, outcome in match_image(detections, truths, _same_class_hit)
            if outcome is not FOUND_AGAIN]
    return ImageOutcomes(np.asarray([s for s, _ in kept], float), np.asarray([o for _, o in kept], bool),
                         len(truths), case.abnormal, case.image_score)


def pooled_figures(outcomes: Sequence[ImageOutcomes]) -> Dict[str, float]:
    """"sens@<rate>", "score" and "image_auc" of the images (repeats allowed), equal to
    :func:`lesion_metrics`' pooled figures."""
    n_images = len(outcomes)
    lesions = sum(o.lesions for o in outcomes)
    scores = np.concatenate([o.scores for o in outcomes]) if outcomes else np.zeros(0)
    hits = np.concatenate([o.hit for o in outcomes]) if outcomes else np.zeros(0, bool)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    out: Dict[str, float] = {}
    for rate in FP_RATES:
        if not lesions:
            out[f"sens@{rate}"] = float("nan")
            continue
        within = np.nonzero(fp / max(n_images, 1) <= rate)[0]
        out[f"sens@{rate}"] = float(tp[within[-1]] / lesions) if len(within) else 0.0
    out["score"] = float(np.mean([out[f"sens@{r}"] for r in FP_RATES])) if lesions else float("nan")
    out["image_auc"] = roc_auc(np.array([o.abnormal for o in outcomes]), np.array([o.image_score for o in outcomes]))
    return out


def bootstrap_intervals(cases: Sequence[ImageCase], classes: Sequence[str], draws: int = 2000, seed: int = 0
                        ) -> Dict[str, Tuple[float, float]]:
    """95 % intervals of the pooled sensitivities, the score and the image AUC, resampling
    women (all images of a drawn woman together)."""
    women: Dict[str, List[ImageOutcomes]] = {}
    for case in cases:
        women.setdefault(case.patient_id, []).append(image_outcomes(case, classes))
    names = sorted(women)
    rng = np.random.default_rng(seed)
    samples: Dict[str, List[float]] = {}
    for _ in range(draws):
        drawn = [c for k in rng.integers(0, len(names), len(names)) for c in women[names[k]]]
        for key, value in pooled_figures(drawn).items():
            samples.setdefault(key, []).append(value)
    out = {}
    for key, values in samples.items():
        finite = np.asarray([v for v in values if np.isfinite(v)])
        out[key] = (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if len(finite) else (
            float("nan"), float("nan"))
    return out


def operating_thresholds(cases: Sequence[ImageCase], classes: Sequence[str], fp_per_image: float = 0.5,
                         floor: float = 0.1, default: float = 0.5) -> List[float]:
    """Per-class thresholds: the lowest score at which the class makes at most ``fp_per_image``
    false positives per validation image (never below ``floor``); ``default`` for classes
    without validation lesions."""
    thresholds = []
    for name in classes:
        truths = [case.truths.get(name, []) for case in cases]
        if not sum(len(t) for t in truths):
            thresholds.append(default)
            continue
        matched = merged_by_score([match_image(case.detections.get(name, []), t) for case, t in zip(cases, truths)])
        allowed = fp_per_image * max(len(cases), 1)
        fps, chosen = 0, 1.0
        for score, outcome in matched:
            if outcome is FALSE_POSITIVE:
                fps += 1
                if fps > allowed:
                    break
            chosen = score
        thresholds.append(float(round(max(floor, chosen), 3)))
    return thresholds


def image_gate(cases: Sequence[ImageCase], normal_with_finding: float) -> float:
    """The lowest image score an image must reach to keep its findings so that at most
    ``normal_with_finding`` of the normal ``cases`` (already cut at the class thresholds) keep
    one (0.0: no gate needed).

    Why: a per-class false-positive budget does not bound how many healthy women are recalled,
    which is what the image-level view asks; the image score separates normal from abnormal
    images better than the findings of any one class do."""
    normal = [c for c in cases if not c.abnormal]
    flagged = sorted((c.image_score for c in normal if any(c.detections.values())), reverse=True)
    allowed = int(np.floor(normal_with_finding * len(normal) + 1e-9))
    if len(flagged) <= allowed:
        return 0.0
    return float(np.nextafter(flagged[allowed], np.inf))


def gated(case: ImageCase, gate: float) -> ImageCase:
    """``case`` as the Predictor reports it with image gate ``gate``: no findings below it; 0.0
    is no gate, as for the Predictor (a score read against the other breast can be below 0)."""
    if not gate or case.image_score >= gate:
        return case
    return replace(case, detections={name: [] for name in case.detections})


def evaluate_lesions(predictor, records: Sequence[ImageRecord], classes: Sequence[str], images=None,
                     intervals: bool = False, progress: bool = False) -> Dict[str, Any]:
    """Everything above for one predictor and a list of records."""
    cases, errors = collect_cases(predictor, records, classes, images, progress)
    if not cases:
        raise MammoPatchError("no image could be evaluated: " + "; ".join(errors[:3]))
    metrics = lesion_metrics(cases, classes)
    metrics["skipped"] = errors
    metrics["women"] = len({c.patient_id for c in cases})
    if intervals:
        metrics["intervals"] = bootstrap_intervals(cases, classes)
    metrics["cases"] = cases
    return metrics


def candidate_predictor(model, mode: str = "fast", device: str = "auto", floor: float = 0.02,
                        max_per_class: int = 10, classes: Optional[Sequence[str]] = None, **options):
    """A Predictor whose findings are FROC candidates: every local maximum above ``floor``."""
    from ..inference import Predictor

    info = model.info
    detection = replace(info.inference.detection, max_per_class=max_per_class, image_threshold=0.0)
    return Predictor(model, mode=mode, device=device, thresholds=[floor] * len(info.classes), detection=detection,
                     classes=classes, **options)
