"""Data set records -> prepared images: preprocessed once, with their findings mapped into the
preprocessed pixels through the preprocessing chain.

With a cache folder each image is written once, atomically, as one file (``torch.save`` of
the fp16 pixels, the breast mask and the mapped boxes) and read back memory-mapped: a patch
cut from it reads only the pages it covers, so training streams images from disk instead of
holding every one in memory (:meth:`PreparedImage.released` drops the pixels of an image whose
file is cached; :meth:`PreparedImage.pixels` maps them again).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..io import read_mammogram
from ..io.atomic import atomic_path
from ..transforms import OtsuBreastMask, PreprocessConfig, PreprocessedImage, preprocess

logger = logging.getLogger(__name__)

#: The cache's file format version (in every file name: a new layout never reads an old file).
CACHE_FORMAT = "v2"


@dataclass
class PreparedImage:
    """A preprocessed image with its findings in its own (resampled, cropped) pixels.

    ``image`` (C, H, W) float16 and ``mask`` (H, W) bool are None once :meth:`released`;
    ``cache_path`` is the file they are read back from."""

    image_id: str
    patient_id: str
    split: str
    image: Optional[torch.Tensor]
    mask: Optional[np.ndarray]
    boxes: np.ndarray  # (N, 4) xmin, ymin, xmax, ymax
    labels: np.ndarray  # (N,) class indices
    image_labels: List[int] = field(default_factory=list)
    spacing_mm: float = 0.1
    source_path: str = ""
    cache_path: str = ""

    @property
    def is_normal(self) -> bool:
        return len(self.labels) == 0 and not self.image_labels

    def released(self) -> "PreparedImage":
        """This image without its pixels (read back from ``cache_path`` when needed)."""
        if not self.cache_path:
            raise ValueError(f"{self.image_id}: only a cached image can release its pixels")
        return replace(self, image=None, mask=None)

    def pixels(self) -> Tuple[torch.Tensor, np.ndarray]:
        """(image, breast mask): held, or memory-mapped from the cache file."""
        if self.image is not None:
            return self.image, self.mask
        stored = torch.load(self.cache_path, map_location="cpu", weights_only=True, mmap=True)
        return stored["image"], stored["mask"].numpy()


def cache_file(record: ImageRecord, config: PreprocessConfig, cache_dir: Path) -> Path:
    """Where ``record`` preprocessed by ``config`` is cached (the key covers both)."""
    text = json.dumps([str(record.path), record.image_id, config.to_dict()], sort_keys=True)
    return Path(cache_dir) / f"{record.image_id}-{hashlib.sha1(text.encode()).hexdigest()[:16]}-{CACHE_FORMAT}.pt"


def _labels(record: ImageRecord, classes: Sequence[str]):
    """(kept finding indices, their class indices, image-level class indices)."""
    class_index = {c: i for i, c in enumerate(classes)}
    kept = [k for k, f in enumerate(record.findings) if f.category in class_index]
    labels = np.array([class_index[record.findings[k].category] for k in kept], dtype=np.int64)
    return kept, labels, [class_index[c] for c in record.image_labels if c in class_index]


def _source_boxes(record: ImageRecord) -> np.ndarray:
    return np.array([f.box for f in record.findings], dtype=np.float64).reshape(-1, 4)


def _prepared(record: ImageRecord, image: torch.Tensor, mask: np.ndarray, all_boxes: np.ndarray,
              classes: Sequence[str], spacing: float, cache_path: str = "") -> PreparedImage:
    kept, labels, image_labels = _labels(record, classes)
    return PreparedImage(image_id=record.image_id, patient_id=record.patient_id, split=record.split, image=image,
                         mask=mask, boxes=np.asarray(all_boxes, dtype=np.float64).reshape(-1, 4)[kept],
                         labels=labels, image_labels=image_labels, spacing_mm=spacing, source_path=str(record.path),
                         cache_path=cache_path)


def _breast_mask(image: torch.Tensor) -> np.ndarray:
    return OtsuBreastMask(subsample=2).mask2d(image[0].float().numpy())


def prepared_from(record: ImageRecord, preprocessed: PreprocessedImage, classes: Sequence[str]) -> PreparedImage:
    """A prepared image from an image already run through the preprocessing chain (window
    padding, if any, is cut off): evaluation preprocesses each image once for both the patch
    table and the Predictor."""
    rows, cols = preprocessed.valid_shape
    image = preprocessed.tensor.as_tensor()[:, :rows, :cols].to(torch.float16)
    return _prepared(record, image, _breast_mask(image), preprocessed.boxes_to_processed(_source_boxes(record)),
                     classes, preprocessed.spacing_mm)


def prepare_image(record: ImageRecord, config: PreprocessConfig, classes: Sequence[str],
                  cache_dir: Optional[Path] = None) -> PreparedImage:
    """Read, preprocess and map the boxes of one record; with ``cache_dir`` the result is
    written there once (atomically) and read back memory-mapped."""
    cache = cache_file(record, config, cache_dir) if cache_dir else None
    if cache is not None and cache.exists():
        try:
            stored = torch.load(cache, map_location="cpu", weights_only=True, mmap=True)
            return _prepared(record, stored["image"], stored["mask"].numpy(), stored["boxes"].numpy(), classes,
                             float(stored["spacing"]), str(cache))
        except (RuntimeError, KeyError, OSError) as exc:  # a damaged entry is made again
            logger.warning("%s: damaged cache entry made again (%s)", cache, exc)
    mammogram = read_mammogram(record.path, spacing_mm=record.spacing_mm)
    prepared = preprocess(mammogram, config)
    image = prepared.tensor.as_tensor().to(torch.float16).contiguous()
    mask = _breast_mask(image)
    boxes = prepared.boxes_to_processed(_source_boxes(record))
    if cache is None:
        return _prepared(record, image, mask, boxes, classes, prepared.spacing_mm)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        torch.save({"image": image, "mask": torch.from_numpy(np.ascontiguousarray(mask)),
                    "boxes": torch.as_tensor(boxes, dtype=torch.float64), "spacing": float(prepared.spacing_mm)}, tmp)
    return _prepared(record, image, mask, boxes, classes, prepared.spacing_mm, str(cache))


def prepare_images(records: Sequence[ImageRecord], config: PreprocessConfig, classes: Sequence[str],
                   cache_dir: Optional[Path] = None, progress: bool = True, release: bool = False,
                   workers: int = 0) -> Tuple[List[PreparedImage], List[str]]:
    """Prepare every record; unreadable ones are reported and skipped. Returns (images, errors).

    ``release`` (with ``cache_dir``): keep only each image's findings and cache file, not its
    pixels, so that the list stays small however many images there are; ``workers`` > 0 (with
    ``release``) prepares them in that many DataLoader worker processes."""
    if release and cache_dir is None:
        raise ValueError("release needs a cache folder to read the pixels back from")
    if workers and not release:
        raise ValueError("workers prepare released images only (their pixels stay in the cache)")
    one = _Preparation(records, config, classes, cache_dir, release)
    results = iter(one[i] for i in range(len(records)))
    if workers:
        from torch.utils.data import DataLoader

        results = iter(DataLoader(one, batch_size=None, num_workers=workers, collate_fn=_as_is))
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(records), desc="preparing images", unit="img")
    prepared, errors = [], []
    for image, error in results:
        if error:
            errors.append(error)
            logger.warning("skipped: %s", error)
        else:
            prepared.append(image)
    return prepared, errors


class _Preparation(torch.utils.data.Dataset):
    """(prepared image, "") or (None, the error) of each record, for a loop or DataLoader workers."""

    def __init__(self, records, config, classes, cache_dir, release: bool) -> None:
        self.records, self.config, self.classes, self.cache_dir, self.release = records, config, classes, \
            cache_dir, release

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        try:
            image = prepare_image(self.records[index], self.config, self.classes, self.cache_dir)
        except MammoPatchError as exc:
            return None, str(exc)
        return (image.released() if self.release else image), ""


def _as_is(item):
    return item
