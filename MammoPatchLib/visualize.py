"""PNG renderings for people: the preprocessing preview and (later) heatmap overlays."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

Box = Tuple[int, int, int, int]  # row0, row1, col0, col1


def crop_box(tensor) -> Optional[Box]:
    """The breast crop (row0, row1, col0, col1) recorded on a preprocessed MetaTensor, in the
    pixels of the image the crop was applied to; None when no crop was applied."""
    for op in getattr(tensor, "applied_operations", []):
        if op.get("class") in ("CropForeground", "BreastCrop") and "cropped" in op.get("extra_info", {}):
            rows, cols = op["orig_size"]
            r0, r1, c0, c1 = op["extra_info"]["cropped"]
            return int(r0), int(rows - r1), int(c0), int(cols - c1)
    return None


def _to_uint8(plane: np.ndarray) -> np.ndarray:
    lo, hi = float(plane.min()), float(plane.max())
    return np.zeros(plane.shape, np.uint8) if hi <= lo else ((plane - lo) / (hi - lo) * 255).astype(np.uint8)


def draw_rectangle(rgb: np.ndarray, box: Box, colour: Sequence[int], width: int = 3) -> None:
    """Draw a rectangle outline (row0, row1, col0, col1) in place."""
    r0, r1, c0, c1 = (int(v) for v in box)
    r1, c1 = min(r1, rgb.shape[0]) - 1, min(c1, rgb.shape[1]) - 1
    r0, c0 = max(r0, 0), max(c0, 0)
    rgb[r0 : r0 + width, c0 : c1 + 1] = colour
    rgb[max(r1 - width + 1, 0) : r1 + 1, c0 : c1 + 1] = colour
    rgb[r0 : r1 + 1, c0 : c0 + width] = colour
    rgb[r0 : r1 + 1, max(c1 - width + 1, 0) : c1 + 1] = colour


def preprocessing_preview(source: np.ndarray, channels: torch.Tensor, box: Optional[Box]) -> np.ndarray:
    """One RGB panel: the source with the crop box (red), then each preprocessed channel.

    Panels are scaled to the source's height so they sit side by side.
    """
    from skimage.transform import resize

    height = source.shape[0]
    first = np.repeat(_to_uint8(source)[..., None], 3, axis=2)
    if box is not None:
        draw_rectangle(first, box, (255, 0, 0), width=max(2, height // 200))
    panels = [first]
    for plane in channels.detach().cpu().numpy():
        scale = height / plane.shape[0]
        resized = resize(plane, (height, max(1, int(round(plane.shape[1] * scale)))), order=1, preserve_range=True)
        panels.append(np.repeat(_to_uint8(resized)[..., None], 3, axis=2))
    gap = np.full((height, 8, 3), 255, np.uint8)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


# A perceptual colour map (matplotlib's "inferno", sampled at 9 points and interpolated), so the
# library needs no plotting dependency to draw overlays.
_INFERNO = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]], dtype=np.float32)


def inferno(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 with the inferno colour map."""
    x = np.clip(values, 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    t = (x - lo)[..., None]
    return (_INFERNO[lo] * (1 - t) + _INFERNO[hi] * t).astype(np.uint8)


def heatmap_overlay(pixels: np.ndarray, heatmap: np.ndarray, findings, max_side: int = 1400,
                    alpha: float = 0.45) -> np.ndarray:
    """RGB overlay: mammogram in grey, the max-over-classes heatmap in inferno where it is
    above 0.1, and each finding's box labelled with its class and score."""
    from PIL import Image, ImageDraw

    scale = min(1.0, max_side / max(pixels.shape))
    size = (max(1, int(round(pixels.shape[1] * scale))), max(1, int(round(pixels.shape[0] * scale))))
    grey = np.asarray(Image.fromarray(_to_uint8(pixels)).resize(size, Image.BILINEAR)).astype(np.float32)
    heat = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    colour = inferno(heat).astype(np.float32)
    weight = (alpha * np.clip((heat - 0.1) / 0.4, 0.0, 1.0))[..., None]
    rgb = (grey[..., None] * (1 - weight) + colour * weight).astype(np.uint8)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    for finding in findings:
        x0, y0, x1, y1 = (v * scale for v in finding.box_px)
        draw.rectangle([x0, y0, x1, y1], outline=(0, 255, 120), width=2)
        draw.text((x0 + 3, max(0, y0 - 12)), f"{finding.category} {finding.score:.2f}", fill=(0, 255, 120))
    return np.asarray(canvas)
