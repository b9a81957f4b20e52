"""From data set records to training patches: prepared (preprocessed) images, the weighted
slot sampler (DDP-aware), the patch dataset, and a fixed validation patch set."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..io import read_mammogram
from ..sampling import RandFindingPatchd, SamplingConfig
from ..transforms import OtsuBreastMask, PreprocessConfig, preprocess
from ..transforms.spacing import pixel_spacing_mm

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


def boxes_to_preprocessed(boxes: np.ndarray, tensor, source_shape: Tuple[int, int]) -> np.ndarray:
    """Map (N, 4) source-pixel boxes through the recorded resampling, crop and flip."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    rows, cols = source_shape
    for op in tensor.applied_operations:
        name = op.get("class")
        if name in ("SpatialResample", "Spacing", "Spacingd", "Resize", "Zoom"):
            continue  # handled by the size ratio below, at the crop that follows
        if name in ("CropForeground", "BreastCrop"):
            orig_rows, orig_cols = op["orig_size"]
            sy, sx = orig_rows / rows, orig_cols / cols
            out[:, [0, 2]] *= sx
            out[:, [1, 3]] *= sy
            r0, _, c0, _ = op["extra_info"]["cropped"]
            out[:, [0, 2]] -= c0
            out[:, [1, 3]] -= r0
            rows, cols = orig_rows - r0 - op["extra_info"]["cropped"][1], orig_cols - c0 - op["extra_info"]["cropped"][3]
        elif name == "NormaliseLaterality" and op["extra_info"]["flipped"]:
            width = op["orig_size"][1]
            out[:, [0, 2]] = width - out[:, [2, 0]]
    final_rows, final_cols = tensor.shape[-2:]
    if (rows, cols) != (final_rows, final_cols):  # resampled with no crop after it
        out[:, [0, 2]] *= final_cols / cols
        out[:, [1, 3]] *= final_rows / rows
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, final_cols)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, final_rows)
    return out


def _cache_key(record: ImageRecord, config: PreprocessConfig) -> str:
    text = json.dumps([str(record.path), record.image_id, config.to_dict(), config.target_spacing_mm], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def prepare_image(record: ImageRecord, config: PreprocessConfig, classes: Sequence[str],
                  cache_dir: Optional[Path] = None) -> PreparedImage:
    """Read, preprocess and map the boxes of one record (cached as compressed .npz if asked)."""
    class_index = {c: i for i, c in enumerate(classes)}
    labels = np.array([class_index[f.category] for f in record.findings if f.category in class_index], dtype=np.int64)
    source_boxes = np.array([f.box for f in record.findings if f.category in class_index], dtype=np.float64).reshape(-1, 4)
    cache = cache_dir / f"{record.image_id}-{_cache_key(record, config)}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        stored = np.load(cache)
        image, boxes, spacing = torch.from_numpy(stored["image"]), stored["boxes"], float(stored["spacing"])
    else:
        mammogram = read_mammogram(record.path, spacing_mm=record.spacing_mm)
        tensor, _ = preprocess(mammogram, config)
        boxes = boxes_to_preprocessed(source_boxes, tensor, mammogram.shape)
        spacing = pixel_spacing_mm(tensor, mammogram.spacing_mm)
        image = tensor.as_tensor().to(torch.float16)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, image=image.numpy(), boxes=boxes, spacing=spacing)
    mask = OtsuBreastMask(subsample=2).mask2d(image[0].float().numpy())
    return PreparedImage(image_id=record.image_id, patient_id=record.patient_id, split=record.split, image=image,
                         mask=mask, boxes=boxes, labels=labels,
                         image_labels=[class_index[c] for c in record.image_labels if c in class_index],
                         spacing_mm=spacing, source_path=str(record.path))


def prepare_images(records: Sequence[ImageRecord], config: PreprocessConfig, classes: Sequence[str],
                   cache_dir: Optional[Path] = None, progress: bool = True) -> Tuple[List[PreparedImage], List[str]]:
    """Prepare every record; unreadable ones are reported and skipped. Returns (images, errors)."""
    iterator = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc="preparing images", unit="img")
    prepared, errors = [], []
    for record in iterator:
        try:
            prepared.append(prepare_image(record, config, classes, cache_dir))
        except MammoPatchError as exc:
            errors.append(str(exc))
            logger.warning("skipped: %s", exc)
    return prepared, errors


@dataclass(frozen=True)
class Slot:
    """One thing a patch can be drawn from: a finding (finding >= 0) or the breast (-1)."""

    image: int
    finding: int
    category: int  # class index, or -1 for No Finding


def build_slots(images: Sequence[PreparedImage]) -> List[Slot]:
    slots = []
    for i, img in enumerate(images):
        for k, label in enumerate(img.labels):
            slots.append(Slot(i, k, int(label)))
        if not img.image_labels:  # an image-level-only abnormal image has no safe "normal" region
            slots.append(Slot(i, -1, -1))
    return slots


def slot_weights(slots: Sequence[Slot], no_finding_share: float) -> torch.Tensor:
    """Weighted sampling against class imbalance: every present finding class gets the same
    share of patches, No Finding gets ``no_finding_share``."""
    counts: Dict[int, int] = {}
    for s in slots:
        counts[s.category] = counts.get(s.category, 0) + 1
    finding_classes = [c for c in counts if c >= 0]
    weights = []
    for s in slots:
        if s.category < 0:
            share = no_finding_share if finding_classes else 1.0
        else:
            share = (1.0 - no_finding_share) / len(finding_classes)
        weights.append(share / counts[s.category])
    return torch.tensor(weights, dtype=torch.double)


class WeightedSlotSampler(Sampler):
    """Draws ``num_samples`` (slot, seed) pairs per epoch with replacement, by weight; with
    ``num_replicas`` > 1 each rank takes its share of the same draw (DDP). The draw depends
    only on (seed, epoch), so a resumed run repeats it exactly."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int = 0, rank: int = 0, num_replicas: int = 1):
        self.weights, self.seed, self.rank, self.num_replicas = weights, seed, rank, num_replicas
        self.total = int(math.ceil(num_samples / num_replicas)) * num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        slots = torch.multinomial(self.weights, self.total, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (self.total,), generator=generator)
        for i in range(self.rank, self.total, self.num_replicas):
            yield int(slots[i]), int(seeds[i])


class PatchDataset(Dataset):
    """Map-style dataset indexed by (slot, seed): the same pair always gives the same patch,
    whichever DataLoader worker draws it."""

    def __init__(self, images: Sequence[PreparedImage], slots: Sequence[Slot], num_classes: int,
                 sampling: SamplingConfig, augmentation=None) -> None:
        self.images, self.slots, self.augmentation = images, list(slots), augmentation
        self.sampler = RandFindingPatchd(num_classes, sampling)
        boxes = [b for img in images for b in img.boxes]
        self.reference_boxes = np.array(boxes if boxes else [[0, 0, 96, 96]], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index):
        slot_index, seed = index if isinstance(index, tuple) else (index, index)
        slot = self.slots[slot_index]
        img = self.images[slot.image]
        self.sampler.set_random_state(seed=seed % (2**31 - 1))
        reference = self.reference_boxes[self.sampler.R.randint(len(self.reference_boxes))]
        item = self.sampler({"image": img.image, "boxes": img.boxes, "labels": img.labels, "mask": img.mask,
                             "spacing": img.spacing_mm, "finding": slot.finding, "reference_box": reference})
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed=(seed * 7 + 1) % (2**31 - 1))
            item = self.augmentation({"image": item["image"], "target": item["target"]})
        return torch.as_tensor(item["image"]).float(), item["target"]


def validation_patches(images: Sequence[PreparedImage], num_classes: int, sampling: SamplingConfig,
                       per_finding: int = 4, per_image: int = 2, seed: int = 1234
                       ) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """A fixed, reproducible set of validation patches: ``per_finding`` around each finding and
    ``per_image`` No Finding patches per image. Returns (patches, targets, image ids)."""
    dataset = PatchDataset(images, build_slots(images), num_classes, sampling)
    xs, ys, ids = [], [], []
    rng = np.random.RandomState(seed)
    for index, slot in enumerate(dataset.slots):
        for _ in range(per_finding if slot.finding >= 0 else per_image):
            x, y = dataset[(index, int(rng.randint(2**31 - 1)))]
            xs.append(x.half())
            ys.append(y)
            ids.append(images[slot.image].image_id)
    if not xs:
        return torch.zeros(0, 3, sampling.patch_size, sampling.patch_size), torch.zeros(0, num_classes), []
    return torch.stack(xs), torch.stack(ys), ids
