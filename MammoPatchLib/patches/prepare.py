"""Data set records -> prepared images: preprocessed once (optionally cached on disk), with
their findings mapped into the preprocessed pixels through the preprocessing chain."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..io import read_mammogram
from ..transforms import OtsuBreastMask, PreprocessConfig, PreprocessedImage, preprocess

logger = logging.getLogger(__name__)


@dataclass
class PreparedImage:
    """A preprocessed image with its findings in its own (resampled, cropped) pixels."""

    image_id: str
    patient_id: str
    split: str
    image: torch.Tensor  # (C, H, W) float16
    mask: np.ndarray  # (H, W) bool breast mask
    boxes: np.ndarray  # (N, 4) xmin, ymin, xmax, ymax
    labels: np.ndarray  # (N,) class indices
    image_labels: List[int] = field(default_factory=list)
    spacing_mm: float = 0.1
    source_path: str = ""

    @property
    def is_normal(self) -> bool:
        return len(self.labels) == 0 and not self.image_labels


def _cache_key(record: ImageRecord, config: PreprocessConfig) -> str:
    text = json.dumps([str(record.path), record.image_id, config.to_dict()], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _labels(record: ImageRecord, classes: Sequence[str]):
    class_index = {c: i for i, c in enumerate(classes)}
    kept = [f for f in record.findings if f.category in class_index]
    labels = np.array([class_index[f.category] for f in kept], dtype=np.int64)
    boxes = np.array([f.box for f in kept], dtype=np.float64).reshape(-1, 4)
    return labels, boxes, [class_index[c] for c in record.image_labels if c in class_index]


def _prepared(record: ImageRecord, image: torch.Tensor, boxes: np.ndarray, labels: np.ndarray,
              image_labels: List[int], spacing: float) -> PreparedImage:
    mask = OtsuBreastMask(subsample=2).mask2d(image[0].float().numpy())
    return PreparedImage(image_id=record.image_id, patient_id=record.patient_id, split=record.split, image=image,
                         mask=mask, boxes=boxes, labels=labels, image_labels=image_labels, spacing_mm=spacing,
                         source_path=str(record.path))


def prepared_from(record: ImageRecord, preprocessed: PreprocessedImage, classes: Sequence[str]) -> PreparedImage:
    """A prepared image from an image already run through the preprocessing chain (window
    padding, if any, is cut off): evaluation preprocesses each image once for both the patch
    table and the Predictor."""
    labels, source_boxes, image_labels = _labels(record, classes)
    rows, cols = preprocessed.valid_shape
    image = preprocessed.tensor.as_tensor()[:, :rows, :cols].to(torch.float16)
    return _prepared(record, image, preprocessed.boxes_to_processed(source_boxes), labels, image_labels,
                     preprocessed.spacing_mm)


def prepare_image(record: ImageRecord, config: PreprocessConfig, classes: Sequence[str],
                  cache_dir: Optional[Path] = None) -> PreparedImage:
    """Read, preprocess and map the boxes of one record (cached as compressed .npz if asked)."""
    labels, source_boxes, image_labels = _labels(record, classes)
    cache = cache_dir / f"{record.image_id}-{_cache_key(record, config)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        stored = np.load(cache)
        image, boxes, spacing = torch.from_numpy(stored["image"]), stored["boxes"], float(stored["spacing"])
    else:
        mammogram = read_mammogram(record.path, spacing_mm=record.spacing_mm)
        prepared = preprocess(mammogram, config)
        boxes = prepared.boxes_to_processed(source_boxes)
        spacing = prepared.spacing_mm
        image = prepared.tensor.as_tensor().to(torch.float16)
        if cache is not None:
            from ..io.atomic import atomic_path

            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, image=image.numpy(), boxes=boxes, spacing=spacing)
    return _prepared(record, image, boxes, labels, image_labels, spacing)


def prepare_images(records: Sequence[ImageRecord], config: PreprocessConfig, classes: Sequence[str],
                   cache_dir: Optional[Path] = None, progress: bool = True, workers: int = 0
                   ) -> Tuple[List[PreparedImage], List[str]]:
    """Prepare every record; unreadable ones are reported and skipped. Returns (images, errors).

    ``workers`` > 0 prepares in that many threads (OpenCV and NumPy release the GIL)."""
    def one(record):
        try:
            return prepare_image(record, config, classes, cache_dir), None
        except MammoPatchError as exc:
            return None, str(exc)

    if workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, records))
    else:
        iterator = records
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(records, desc="preparing images", unit="img")
        results = [one(r) for r in iterator]
    prepared = [p for p, _ in results if p is not None]
    errors = [e for _, e in results if e is not None]
    for error in errors:
        logger.warning("skipped: %s", error)
    return prepared, errors
