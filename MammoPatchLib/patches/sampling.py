"""Training patches, as MONAI randomizable transforms: the poster's sampling and ours.

``mode="poster"`` (method.md): for a finding with box (w, h),
- area ~ U[0.05, 5.0] x w*h; aspect (w/h) ~ U[0.33, 1.66] x the box's aspect;
- centre ~ uniform in a disc of 50 px around the box centre. The 50 px are VinDr pixels
  (~0.1 mm), so the radius is 5 mm and is converted to the data's pixels by its spacing.
  Ours: the offset is also kept under half the region's width and height, so a patch always
  contains the centre of the finding it was drawn for;
- the region is resized to 256 x 256. Target (ours; the poster gives none): positive for a
  class when one of its boxes lies at least half inside the patch or covers half of it.
  The resize shows a finding at 1-10x its size, while inference slides 256 px windows over
  the image at its own scale: the scale sensitivity the poster names as a limit.

``mode="window"`` (ours, the default): patches are what inference sees, a window of
``patch_size`` pixels at the model's spacing (times a scale jitter in ``scale_range``), with
the finding at a random position. Target: positive for a class when a finding's centre lies
within ``positive_offset`` x the window side of the window centre (or its box covers
``cover_fraction`` of the window); no loss for that class when the centre lies between
``positive_offset`` and ``ignore_offset`` (ambiguous); negative otherwise. The heatmap then
peaks on findings instead of plateauing over every window that contains one.

No Finding patches: same size distribution, centred on a random point of the breast mask
away from every finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from ..config import config_from_dict
from ..vocabulary import Box

VINDR_SPACING_MM = 0.1
SAMPLING_MODES = ("window", "poster")


@dataclass
class SamplingConfig:
    """Sampling parameters (see module docstring)."""

    mode: str = "window"
    patch_size: int = 256
    # poster mode
    area_range: Tuple[float, float] = (0.05, 5.0)
    aspect_range: Tuple[float, float] = (0.33, 1.66)
    centre_jitter_px_at_vindr: float = 50.0
    min_side_px: int = 16
    overlap_fraction: float = 0.5
    # window mode
    scale_range: Tuple[float, float] = (0.8, 1.25)
    positive_offset: float = 0.1875
    ignore_offset: float = 0.4375
    cover_fraction: float = 0.5
    centred_fraction: float = 0.75

    def __post_init__(self) -> None:
        self.area_range = tuple(self.area_range)  # type: ignore[assignment]
        self.aspect_range = tuple(self.aspect_range)  # type: ignore[assignment]
        self.scale_range = tuple(self.scale_range)  # type: ignore[assignment]
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")
        if self.patch_size <= 0 or self.patch_size % 32:
            raise ValueError("patch_size must be a positive multiple of 32 (the network's feature stride)")
        if not 0 < self.positive_offset <= self.ignore_offset <= 0.5:
            raise ValueError("need 0 < positive_offset <= ignore_offset <= 0.5")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError("scale_range must be positive and increasing")

    def centre_jitter_px(self, spacing_mm: float) -> float:
        """The poster's 50 VinDr pixels in the data's pixels."""
        return self.centre_jitter_px_at_vindr * VINDR_SPACING_MM / spacing_mm

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> "SamplingConfig":
        return config_from_dict(cls, values, "sampling")


def draw_region(rng: np.random.RandomState, box: Box, centre: Tuple[float, float], config: SamplingConfig,
                jitter_px: float, image_shape: Tuple[int, int]) -> Box:
    """Poster mode: a random region around ``centre`` with the poster's area and aspect
    factors of ``box``, clipped to the image."""
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


def draw_window(rng: np.random.RandomState, centre: Tuple[float, float], config: SamplingConfig,
                max_offset: float = 0.0) -> Box:
    """Window mode: a square of ``patch_size`` x U(scale_range) pixels whose centre lies
    within ``max_offset`` x its side of ``centre`` (per axis). May extend past the image."""
    side = config.patch_size * rng.uniform(*config.scale_range)
    dx, dy = rng.uniform(-max_offset, max_offset, 2) * side
    cx, cy = centre[0] - dx, centre[1] - dy
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def patch_target(region: Box, boxes: Sequence[Box], labels: Sequence[int], num_classes: int,
                 overlap_fraction: float = 0.5) -> np.ndarray:
    """Poster mode's multi-hot target of a region (rule in the module docstring)."""
    target = np.zeros(num_classes, dtype=np.float32)
    region = Box(*region)
    for box, label in zip(boxes, labels):
        inter = region.intersection(box)
        if inter <= 0:
            continue
        if inter >= overlap_fraction * Box(*box).area or inter >= overlap_fraction * region.area:
            target[label] = 1.0
    return target


def window_target(region: Box, boxes: Sequence[Box], labels: Sequence[int], num_classes: int,
                  config: SamplingConfig) -> Tuple[np.ndarray, np.ndarray]:
    """Window mode's (target, loss mask) of a region (rule in the module docstring)."""
    target = np.zeros(num_classes, dtype=np.float32)
    ignore = np.zeros(num_classes, dtype=bool)
    region = Box(*region)
    rcx, rcy = region.centre
    for box, label in zip(boxes, labels):
        cx, cy = Box(*box).centre
        offset = max(abs(cx - rcx) / region.width, abs(cy - rcy) / region.height)
        if offset <= config.positive_offset or region.intersection(box) >= config.cover_fraction * region.area:
            target[label] = 1.0
        elif offset <= config.ignore_offset:
            ignore[label] = True
    mask = np.where(ignore & (target == 0), 0.0, 1.0).astype(np.float32)
    return target, mask


def crop_and_resize(image: torch.Tensor, region: Box, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size): the region (zero outside the image), resized with area
    averaging when shrinking and bilinear interpolation otherwise."""
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    rows, cols = image.shape[-2:]
    inner = image[:, max(0, y0):min(rows, y1), max(0, x0):min(cols, x1)].float()
    pad = (max(0, -x0), max(0, x1 - cols), max(0, -y0), max(0, y1 - rows))
    patch = F.pad(inner, pad)[None] if any(pad) else inner[None]
    if patch.shape[-1] == size and patch.shape[-2] == size:
        return patch[0]
    mode = "area" if patch.shape[-1] > size and patch.shape[-2] > size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(patch, size=(size, size), mode=mode, **kwargs)[0]


class RandFindingPatchd(Randomizable, MapTransform):
    """Draw one training sample from a preprocessed image dictionary.

    Input keys: ``image`` (C, H, W), ``boxes`` (N, 4) and ``labels`` (N,) in the image's
    pixels, ``mask`` (H, W) breast mask, ``spacing`` (mm), ``finding`` (index of the finding
    to sample around, or -1 for a No Finding sample), ``reference_box`` (poster mode: the
    size template for No Finding samples). Output: ``image`` (C, S, S) with S = patch_size,
    ``target`` and ``loss_mask`` (classes,; 0 = no loss for that class), ``region`` (the
    patch's box). ``image`` and ``mask`` may be memory-mapped: only the patch's pixels are read.
    """

    def __init__(self, num_classes: int, config: Optional[SamplingConfig] = None, image_key: str = "image",
                 max_tries: int = 20) -> None:
        MapTransform.__init__(self, [image_key])
        self.config = config or SamplingConfig()
        self.num_classes, self.image_key, self.max_tries = num_classes, image_key, max_tries

    def randomize(self, data=None) -> None:  # randomness is drawn inside __call__ through self.R
        pass

    def _breast_point(self, mask: np.ndarray, boxes: np.ndarray) -> Tuple[float, float]:
        rows, cols = np.nonzero(mask)
        if len(rows) == 0:
            return (mask.shape[1] / 2, mask.shape[0] / 2)
        for _ in range(self.max_tries):
            i = self.R.randint(len(rows))
            x, y = float(cols[i]), float(rows[i])
            if not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes):
                break
        return (x, y)

    def _poster(self, d, boxes, labels, shape) -> Tuple[Box, np.ndarray, np.ndarray]:
        cfg = self.config
        finding = int(d.get("finding", -1))
        ones = np.ones(self.num_classes, dtype=np.float32)
        if finding >= 0:
            box = tuple(boxes[finding])
            jitter = cfg.centre_jitter_px(float(d["spacing"]))
            region = draw_region(self.R, box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), cfg, jitter, shape)
            target = patch_target(region, boxes, labels, self.num_classes, cfg.overlap_fraction)
            target[labels[finding]] = 1.0  # the finding it was drawn around always counts
            return region, target, ones
        template = tuple(d["reference_box"])
        for _ in range(self.max_tries):
            region = draw_region(self.R, template, self._breast_point(np.asarray(d["mask"]), boxes), cfg, 0.0, shape)
            target = patch_target(region, boxes, labels, self.num_classes, cfg.overlap_fraction)
            if not target.any() and not any(Box(*region).intersection(b) > 0 for b in boxes):
                break
        return region, target, ones

    def _window(self, d, boxes, labels) -> Tuple[Box, np.ndarray, np.ndarray]:
        cfg = self.config
        finding = int(d.get("finding", -1))
        if finding >= 0:
            box = boxes[finding]
            centre = (0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3]))
            reach = cfg.positive_offset if self.R.uniform() < cfg.centred_fraction else 0.5
            region = draw_window(self.R, centre, cfg, reach)
        else:
            region = draw_window(self.R, self._breast_point(np.asarray(d["mask"]), boxes), cfg, 0.0)
        target, mask = window_target(region, boxes, labels, self.num_classes, cfg)
        return region, target, mask

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        image = d[self.image_key]
        boxes = np.asarray(d.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(d.get("labels", np.zeros(0)), dtype=np.int64).reshape(-1)
        if self.config.mode == "poster":
            region, target, mask = self._poster(d, boxes, labels, tuple(image.shape[-2:]))
        else:
            region, target, mask = self._window(d, boxes, labels)
        d[self.image_key] = crop_and_resize(torch.as_tensor(image), region, self.config.patch_size)
        d["target"] = torch.from_numpy(target)
        d["loss_mask"] = torch.from_numpy(mask)
        d["region"] = torch.tensor(region, dtype=torch.float32)
        return d
