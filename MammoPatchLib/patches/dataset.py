"""The patch dataset (indexed by (slot, seed): the same pair always gives the same sample,
whichever DataLoader worker or torchrun rank draws it) and a fixed patch set for evaluation."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .prepare import PreparedImage
from .sampling import RandFindingPatchd, SamplingConfig
from .slots import Slot, build_slots


class PatchDataset(Dataset):
    """Samples (image (C, S, S), target (classes,), loss mask (classes,)) from slots, then
    augmented. Images may be released (:meth:`PreparedImage.released`): each sample then maps
    its image's cache file and reads only the patch, so a worker holds no image between samples."""

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
        image, mask = img.pixels()
        self.sampler.set_random_state(seed=seed % (2**31 - 1))
        reference = self.reference_boxes[self.sampler.R.randint(len(self.reference_boxes))]
        item = self.sampler({"image": image, "boxes": img.boxes, "labels": img.labels, "mask": mask,
                             "spacing": img.spacing_mm, "finding": slot.finding, "reference_box": reference})
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed=(seed * 7 + 1) % (2**31 - 1))
            item = {**item, **self.augmentation({"image": item["image"]})}
        return torch.as_tensor(item["image"]).float(), item["target"], item["loss_mask"]


def validation_patches(images: Sequence[PreparedImage], num_classes: int, sampling: SamplingConfig,
                       per_finding: int = 4, per_image: int = 2, seed: int = 1234
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, List[str]]:
    """A fixed, reproducible set of patches: ``per_finding`` around each finding and
    ``per_image`` No Finding patches per image. Returns (patches, targets, loss masks, image ids)."""
    dataset = PatchDataset(images, build_slots(images), num_classes, sampling)
    xs, ys, ms, ids = [], [], [], []
    rng = np.random.RandomState(seed)
    for index, slot in enumerate(dataset.slots):
        for _ in range(per_finding if slot.finding >= 0 else per_image):
            x, y, m = dataset[(index, int(rng.randint(2**31 - 1)))]
            xs.append(x.half())
            ys.append(y)
            ms.append(m)
            ids.append(images[slot.image].image_id)
    if not xs:
        size = sampling.patch_size
        return torch.zeros(0, 3, size, size), torch.zeros(0, num_classes), torch.zeros(0, num_classes), []
    return torch.stack(xs), torch.stack(ys), torch.stack(ms), ids
