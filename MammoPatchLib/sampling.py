"""Training patches exactly as the poster samples them (method.md), as MONAI transforms.

For a finding with box (w, h):
- area ~ U[0.05, 5.0] x w*h; aspect (w/h) ~ U[0.33, 1.66] x the box's aspect;
- centre ~ uniform in a disc of 50 px around the box centre. The 50 px are VinDr pixels
  (~0.1 mm), so the radius is 5 mm and is converted to the data's pixels by its spacing.
  Ours: the offset is also kept under half the region's width and height, so a patch always
  contains the centre of the finding it was drawn for (a 0.05 x area patch of a small
  calcification cluster would otherwise often miss it);
- the region is clipped to the image and resized to 256 x 256.

No Finding patches: same size distribution (the factors are applied to a finding box drawn
from the training set), centred on a random point of the Otsu breast mask, on normal images
or on abnormal images away from every finding.

Target rule (ours; the poster gives none): a patch is positive for a class when one of that
class's boxes lies at least half inside the patch, or covers at least half of the patch
(a small patch inside a large mass).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

Box = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (pixels)

VINDR_SPACING_MM = 0.1


@dataclass
class SamplingConfig:
    """The poster's sampling parameters (see module docstring)."""

    area_range: Tuple[float, float] = (0.05, 5.0)
    aspect_range: Tuple[float, float] = (0.33, 1.66)
    centre_jitter_px_at_vindr: float = 50.0
    patch_size: int = 256
    min_side_px: int = 16
    overlap_fraction: float = 0.5

    def centre_jitter_px(self, spacing_mm: float) -> float:
        """The 50 VinDr pixels in the data's pixels."""
        return self.centre_jitter_px_at_vindr * VINDR_SPACING_MM / spacing_mm

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def draw_region(rng: np.random.RandomState, box: Box, centre: Tuple[float, float], config: SamplingConfig,
                jitter_px: float, image_shape: Tuple[int, int]) -> Box:
    """A random region around ``centre`` with the poster's area and aspect factors of ``box``,
    clipped to the image."""
    w = max(box[2] - box[0], 1.0)
    h = max(box[3] - box[1], 1.0)
    area = w * h * rng.uniform(*config.area_range)
    aspect = (w / h) * rng.uniform(*config.aspect_range)
    rw = max(config.min_side_px, math.sqrt(area * aspect))
    rh = max(config.min_side_px, math.sqrt(area / aspect))
    radius = jitter_px * math.sqrt(rng.uniform())
    angle = rng.uniform(0, 2 * math.pi)
    dx = float(np.clip(radius * math.cos(angle), -0.45 * rw, 0.45 * rw))
    dy = float(np.clip(radius * math.sin(angle), -0.45 * rh, 0.45 * rh))
    cx, cy = centre[0] + dx, centre[1] + dy
    rows, cols = image_shape
    x0, x1 = max(0.0, cx - rw / 2), min(float(cols), cx + rw / 2)
    y0, y1 = max(0.0, cy - rh / 2), min(float(rows), cy + rh / 2)
    if x1 - x0 < 2:
        x0, x1 = max(0.0, min(x0, cols - 2.0)), min(float(cols), max(x1, 2.0))
    if y1 - y0 < 2:
        y0, y1 = max(0.0, min(y0, rows - 2.0)), min(float(rows), max(y1, 2.0))
    return (x0, y0, x1, y1)


def intersection(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def box_area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def patch_target(region: Box, boxes: Sequence[Box], labels: Sequence[int], num_classes: int,
                 overlap_fraction: float = 0.5) -> np.ndarray:
    """Multi-hot target of a region (rule in the module docstring)."""
    target = np.zeros(num_classes, dtype=np.float32)
    region_area = box_area(region)
    for box, label in zip(boxes, labels):
        inter = intersection(region, box)
        if inter <= 0:
            continue
        if inter >= overlap_fraction * box_area(box) or inter >= overlap_fraction * region_area:
            target[label] = 1.0
    return target


def crop_and_resize(image: torch.Tensor, region: Box, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): the region, bilinearly resized (area-averaged when shrinking)."""
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    patch = image[:, y0:y1, x0:x1].float()[None]
    mode = "area" if patch.shape[-1] > size and patch.shape[-2] > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(patch, size=(size, size), mode=mode, **kwargs)[0]


class RandFindingPatchd(Randomizable, MapTransform):
    """Draw one training patch from a preprocessed image dictionary.

    Input keys: ``image`` (C, H, W), ``boxes`` (N, 4) and ``labels`` (N,) in the image's
    pixels, ``mask`` (H, W) breast mask, ``spacing`` (mm), ``finding`` (index of the finding
    to sample around, or -1 for a No Finding patch), ``reference_box`` (the size template
    for No Finding patches). Output: ``image`` (C, 256, 256), ``target`` (classes,),
    ``region`` (the box sampled).
    """

    def __init__(self, num_classes: int, config: Optional[SamplingConfig] = None, image_key: str = "image",
                 max_tries: int = 20) -> None:
        MapTransform.__init__(self, [image_key])
        self.config = config or SamplingConfig()
        self.num_classes, self.image_key, self.max_tries = num_classes, image_key, max_tries

    def randomize(self, data=None) -> None:  # randomness is drawn inside __call__ through self.R
        pass

    def _normal_centre(self, mask: np.ndarray, boxes: np.ndarray) -> Tuple[float, float]:
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            return (mask.shape[1] / 2, mask.shape[0] / 2)
        for _ in range(self.max_tries):
            i = self.R.randint(len(rows))
            x, y = float(cols[i]), float(rows[i])
            if not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes):
                return (x, y)
        return (x, y)

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        image = d[self.image_key]
        shape = tuple(image.shape[-2:])
        boxes = np.asarray(d.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(d.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
        jitter = self.config.centre_jitter_px(float(d["spacing"]))
        finding = int(d.get("finding", -1))
        if finding >= 0:
            box = tuple(boxes[finding])
            region = draw_region(self.R, box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), self.config,
                                 jitter, shape)
            target = patch_target(region, boxes, labels, self.num_classes, self.config.overlap_fraction)
            target[labels[finding]] = 1.0  # the finding it was drawn around always counts
        else:
            template = tuple(d["reference_box"])
            for _ in range(self.max_tries):
                centre = self._normal_centre(np.asarray(d["mask"]), boxes)
                region = draw_region(self.R, template, centre, self.config, 0.0, shape)
                target = patch_target(region, boxes, labels, self.num_classes, self.config.overlap_fraction)
                if not target.any() and not any(intersection(region, tuple(b)) > 0 for b in boxes):
                    break
        d[self.image_key] = crop_and_resize(torch.as_tensor(np.asarray(image)), region, self.config.patch_size)
        d["target"] = torch.from_numpy(target)
        d["region"] = torch.tensor(region, dtype=torch.float32)
        return d
