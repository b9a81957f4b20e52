"""PNG renderings for people: the preprocessing preview and the findings overlay.

Boxes here are (xmin, ymin, xmax, ymax) in pixels (x = column), like every box in the library.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .vocabulary import Box

# One colour per finding class (model class order), distinct on a grey mammogram and on inferno.
CLASS_COLOURS: List[Tuple[int, int, int]] = [
    (0, 230, 118), (0, 176, 255), (255, 64, 129), (255, 234, 0), (170, 0, 255),
    (0, 229, 255), (118, 255, 3), (255, 145, 0), (224, 224, 224), (255, 23, 68)]


def _to_uint8(plane: np.ndarray) -> np.ndarray:
    lo, hi = float(plane.min()), float(plane.max())
    return np.zeros(plane.shape, np.uint8) if hi <= lo else ((plane - lo) / (hi - lo) * 255).astype(np.uint8)


def draw_rectangle(rgb: np.ndarray, box: Box, colour: Sequence[int], width: int = 3) -> None:
    """Draw a rectangle outline of an (xmin, ymin, xmax, ymax) box in place."""
    c0, r0, c1, r1 = (int(round(v)) for v in box)
    r1, c1 = min(r1, rgb.shape[0]) - 1, min(c1, rgb.shape[1]) - 1
    r0, c0 = max(r0, 0), max(c0, 0)
    rgb[r0 : r0 + width, c0 : c1 + 1] = colour
    rgb[max(r1 - width + 1, 0) : r1 + 1, c0 : c1 + 1] = colour
    rgb[r0 : r1 + 1, c0 : c0 + width] = colour
    rgb[r0 : r1 + 1, max(c1 - width + 1, 0) : c1 + 1] = colour


def preprocessing_preview(source: np.ndarray, channels: torch.Tensor, box: Optional[Box]) -> np.ndarray:
    """One RGB panel: the source with the analysed (crop) box in red, then each preprocessed
    channel. Panels are scaled to the source's height so they sit side by side."""
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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: Sequence[Box], sizes: Sequence[Tuple[int, int]], canvas: Tuple[int, int]) -> List[Box]:
    """A position for each label (w, h) near its box that overlaps no label placed before it:
    above the box, below it, inside its top edge, then further down in steps."""
    width, height = canvas
    placed: List[Box] = []
    for box, (w, h) in zip(boxes, sizes):
        x = min(max(0.0, box[0]), max(0.0, width - w))
        options = [box[1] - h - 2, box[3] + 2, box[1] + 2]
        options += [box[3] + 2 + k * (h + 2) for k in range(1, 40)]
        chosen = None
        for y in options:
            y = min(max(0.0, y), max(0.0, height - h))
            rect = (x, y, x + w, y + h)
            if not any(_overlaps(rect, other) for other in placed):
                chosen = rect
                break
        placed.append(chosen or (x, min(max(0.0, box[1]), height - h), x + w, min(max(0.0, box[1]), height - h) + h))
    return placed


def heatmap_overlay(pixels: np.ndarray, heatmap: np.ndarray, findings, classes: Optional[Sequence[str]] = None,
                    max_side: int = 1400, alpha: float = 0.6) -> np.ndarray:
    """RGB overlay: the mammogram in grey, the max-over-classes heatmap in inferno (fading in
    from 0.05, fully drawn from 0.35), each finding's box in its class colour with a label that
    overlaps no other label, and a legend (classes shown, heatmap colour scale)."""
    from PIL import Image, ImageDraw

    classes = list(classes) if classes is not None else sorted({f.category for f in findings})
    scale = min(1.0, max_side / max(pixels.shape))
    size = (max(1, int(round(pixels.shape[1] * scale))), max(1, int(round(pixels.shape[0] * scale))))
    grey = np.asarray(Image.fromarray(_to_uint8(pixels)).resize(size, Image.BILINEAR)).astype(np.float32)
    heat = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    colour = inferno(heat).astype(np.float32)
    weight = (alpha * np.clip((heat - 0.05) / 0.3, 0.0, 1.0))[..., None]
    rgb = (grey[..., None] * (1 - weight) + colour * weight).astype(np.uint8)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(11, min(size) // 60))
    line = max(2, min(size) // 400)

    def colour_of(name: str) -> Tuple[int, int, int]:
        return CLASS_COLOURS[classes.index(name) % len(CLASS_COLOURS)] if name in classes else (0, 255, 120)

    boxes = [tuple(v * scale for v in f.box_px) for f in findings]
    texts = [f"{f.category} {f.score:.2f}" for f in findings]
    sizes = []
    for text in texts:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        sizes.append((right - left + 6, bottom - top + 4))
    for f, box in zip(findings, boxes):
        draw.rectangle(box, outline=colour_of(f.category), width=line)
    for f, text, rect in zip(findings, texts, place_labels(boxes, sizes, size)):
        draw.rectangle(rect, fill=(0, 0, 0))
        draw.text((rect[0] + 3, rect[1] + 1), text, fill=colour_of(f.category), font=font)
    _legend(draw, font, size, [c for c in classes if any(f.category == c for f in findings)], colour_of)
    return np.asarray(canvas)


def _legend(draw, font, size: Tuple[int, int], shown: Sequence[str], colour_of) -> None:
    """Bottom-left legend: one swatch per class shown, and the heatmap's colour scale."""
    entries = list(shown)
    left, top, right, bottom = draw.textbbox((0, 0), "Ag", font=font)
    row = bottom - top + 6
    width = max([draw.textbbox((0, 0), e, font=font)[2] for e in entries + ["heatmap 0 .. 1"]]) + 40
    height = row * (len(entries) + 2) + 6
    x0, y0 = 6, size[1] - height - 6
    draw.rectangle((x0, y0, x0 + width, y0 + height), fill=(0, 0, 0))
    y = y0 + 4
    for name in entries:
        draw.rectangle((x0 + 6, y + 2, x0 + 22, y + row - 6), outline=colour_of(name), width=3)
        draw.text((x0 + 30, y), name, fill=(255, 255, 255), font=font)
        y += row
    draw.text((x0 + 6, y), "heatmap 0 .. 1", fill=(255, 255, 255), font=font)
    y += row
    ramp = inferno(np.linspace(0, 1, width - 12)[None, :])[0]
    for i, c in enumerate(ramp):
        draw.line((x0 + 6 + i, y, x0 + 6 + i, y + row - 8), fill=tuple(int(v) for v in c))
