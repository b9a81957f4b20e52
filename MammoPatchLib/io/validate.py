"""Checks at the boundary, done once per image before any work: geometry (spacing, orientation,
the size the analysis will have), content (blank, binary, noise-like) and what kind of image
it is (modality, "For Processing" raw data).

Hard failures raise :class:`~MammoPatchLib.errors.InvalidImageError` /
:class:`~MammoPatchLib.errors.UnsupportedImageError` naming the file and the problem;
doubtful inputs are analysed with a warning in ``MammogramImage.warnings`` that travels into
every output (findings.json, summary.csv) and is printed by the command line.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidImageError, UnsupportedImageError
from .image import MammogramImage
from .spacing import MAX_BREAST_MM, format_number, format_spacing

#: Pixel spacings a mammogram can have (mm): digital detectors are 0.05-0.1 mm, scanned film
#: up to ~0.2 mm (mini-MIAS), downsampled copies up to ~0.5 mm.
MIN_SPACING_MM = 0.02
MAX_SPACING_MM = 1.0
#: Largest source image read (pixels): 20,000 x 20,000 would be 1.6 GB of float32 before any work.
MAX_SOURCE_PIXELS = 120_000_000
#: Bytes the analysis needs per pixel of the resampled image (three fused channels, window
#: padding, features and heatmaps), used to refuse what the machine's memory cannot hold.
BYTES_PER_ANALYSED_PIXEL = 400
#: Modalities analysed without a warning.
MAMMOGRAPHY_MODALITIES = ("MG", "")


#: Linux's own estimate of the memory a new process can use (``MemAvailable``).
LINUX_MEMINFO = "/proc/meminfo"


def available_memory_bytes(meminfo: str = LINUX_MEMINFO) -> Optional[int]:
    """Memory available now, None when unknown. On Linux the kernel's ``MemAvailable``, which
    counts the page cache it would reclaim: free pages alone (sysconf's ``SC_AVPHYS_PAGES``)
    fall to a few hundred MB on any machine that has just read or installed some GB of files,
    and an image that fits would be refused. Elsewhere (macOS) sysconf's free pages."""
    try:
        with open(meminfo, encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_spacing_value(spacing_mm: float, what: str = "pixel spacing") -> float:
    """A usable spacing or ValueError naming the range (for argument parsers and configs)."""
    value = float(spacing_mm)
    if not math.isfinite(value) or not MIN_SPACING_MM <= value <= MAX_SPACING_MM:
        raise ValueError(f"{what} must be a number of mm in [{MIN_SPACING_MM}, {MAX_SPACING_MM}], got {spacing_mm}")
    return value


def check_source_size(rows: int, columns: int, where) -> None:
    """Refuse an image larger than :data:`MAX_SOURCE_PIXELS`, from its header's size before any
    pixel is read (so a header that claims 60000 x 60000 px is called too large, not truncated)."""
    if rows * columns > MAX_SOURCE_PIXELS:
        raise InvalidImageError(f"image is {rows} x {columns} px ({rows * columns / 1e6:.0f} Mpx), too large: above "
                                f"the {MAX_SOURCE_PIXELS / 1e6:.0f} Mpx limit", where)


def check_geometry(image: MammogramImage, target_spacing_mm: Optional[float] = None,
                   scales: Sequence[float] = (1.0,), window: int = 256,
                   memory_bytes: Optional[int] = None) -> None:
    """Refuse a geometry that cannot be analysed: spacing outside the mammography range or not
    finite, an image that would be smaller than one window or larger than memory allows once
    resampled to ``target_spacing_mm`` x each scale."""
    where = image.path or "<array>"
    row, col = image.geometry.row_spacing, image.geometry.col_spacing
    for name, value in (("row", row), ("column", col)):
        if not math.isfinite(value) or not MIN_SPACING_MM <= value <= MAX_SPACING_MM:
            raise InvalidImageError(
                f"{name} pixel spacing {format_number(value)} mm (from {_source(image)}) is outside the range of "
                f"mammograms [{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm; {_spacing_advice(image)}", where)
    check_breast_size(image)
    rows, cols = image.shape
    check_source_size(rows, cols, where)
    memory = memory_bytes if memory_bytes is not None else available_memory_bytes()
    for scale in scales:
        target = (target_spacing_mm or image.spacing_mm) * float(scale)
        out_rows, out_cols = rows * row / target, cols * col / target
        if min(out_rows, out_cols) < window / 4:
            raise InvalidImageError(
                f"at {target:.3g} mm per pixel the image is only {out_rows:.0f} x {out_cols:.0f} px, far smaller "
                f"than one {window} px window: check the pixel spacing or the scales", where)
        needed = out_rows * out_cols * BYTES_PER_ANALYSED_PIXEL
        if memory is not None and needed > memory:
            raise InvalidImageError(
                f"analysing the image at {target:.3g} mm per pixel ({out_rows:.0f} x {out_cols:.0f} px) needs "
                f"~{needed / 2**30:.1f} GiB, more than the {memory / 2**30:.1f} GiB available: check the pixel "
                "spacing or the scales", where)


def _source(image: MammogramImage) -> str:
    return {"given": "--spacing / spacing_mm", "default": "the default for files without one",
            "file header": "the file header"}.get(image.spacing_source, image.spacing_source)


def _spacing_advice(image: MammogramImage) -> str:
    """What the user can do: a given or assumed spacing is theirs to change; a file's own is
    used as stated (--spacing applies only where the file's is unknown)."""
    if image.spacing_source in ("given", "default"):
        return "pass the right spacing (--spacing)"
    return "correct the file's spacing (--spacing applies only to files without a usable one)"


def breast_extent_mm(image: MammogramImage) -> Tuple[float, float]:
    """(height, width) in mm of the breast's box: the largest Otsu foreground component of a
    subsampled copy (as the analysis crops it), times the pixel spacing."""
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    pixels = image.pixels
    step = max(1, int(math.ceil(math.sqrt(pixels.size / 250_000))))
    small = np.ascontiguousarray(pixels[::step, ::step], dtype=np.float32)
    if float(small.max()) == float(small.min()):
        return 0.0, 0.0
    labels = label(small > threshold_otsu(small), connectivity=2)
    if labels.max() == 0:
        return 0.0, 0.0
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    rows, cols = np.nonzero(labels == largest)
    height = (rows.max() - rows.min() + 1) * step * image.geometry.row_spacing
    width = (cols.max() - cols.min() + 1) * step * image.geometry.col_spacing
    return float(height), float(width)


def check_breast_size(image: MammogramImage) -> None:
    """Refuse an image whose breast would be larger than any breast (:data:`MAX_BREAST_MM`) at
    its pixel spacing: the spacing is wrong, and every size and the resampling with it. Only
    images whose whole extent exceeds the limit are measured."""
    rows, cols = image.shape
    if max(rows * image.geometry.row_spacing, cols * image.geometry.col_spacing) <= MAX_BREAST_MM:
        return
    height, width = breast_extent_mm(image)
    if max(height, width) > MAX_BREAST_MM:
        raise InvalidImageError(
            f"at {format_spacing((image.geometry.row_spacing, image.geometry.col_spacing))} per pixel (from "
            f"{_source(image)}) the breast would be {height / 10:.0f} x {width / 10:.0f} cm, larger than any breast "
            f"(at most {MAX_BREAST_MM / 10:.0f} cm): the pixel spacing is wrong; {_spacing_advice(image)}",
            image.path or "<array>")


def content_warnings(image: MammogramImage) -> list:
    """Warnings for images that are probably not mammograms: almost blank, two-level (binary)
    or noise-like (neighbouring pixels unrelated, where a mammogram is smooth)."""
    pixels = image.pixels
    step = max(1, int(math.sqrt(pixels.size / 250_000)))
    sample = pixels[::step, ::step]
    warnings = []
    distinct = np.unique(sample[:: max(1, sample.shape[0] // 64), :: max(1, sample.shape[1] // 64)])
    lo, hi = np.percentile(sample, [1, 99])
    if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        warnings.append("98 % of the image has one value (nearly blank); findings are unlikely to mean anything")
    elif len(distinct) <= 2:
        warnings.append(f"the image has only {len(distinct)} grey levels (binary?); it does not look like a mammogram")
    else:
        a, b = sample[:, :-1].ravel(), sample[:, 1:].ravel()
        if a.std() > 0 and b.std() > 0:
            correlation = float(np.corrcoef(a, b)[0, 1])
            if correlation < 0.5:
                warnings.append(f"neighbouring pixels are nearly unrelated (correlation {correlation:.2f}): the "
                                "image looks like noise, not a mammogram")
    return warnings


def kind_warnings(image: MammogramImage) -> list:
    """Refuse "For Processing" (raw detector) images; warn for non-mammography modalities, for a
    For Processing SOP class that states no presentation intent, and for a tomosynthesis SOP
    class (one frame of it: a slice or a synthetic view, not a 2-D mammogram)."""
    where = image.path or "<array>"
    intent = str(image.extra.get("presentation_intent", "")).upper()
    if intent == "FOR PROCESSING":
        raise UnsupportedImageError(
            "a 'FOR PROCESSING' mammogram (raw detector data, before the manufacturer's image processing); "
            "MammoPatch analyses 'FOR PRESENTATION' images, which is what radiologists read", where)
    warnings = []
    sop_class = _sop_class_name(str(image.extra.get("sop_class", "")))
    if "for processing" in sop_class.lower() and not intent:
        warnings.append(f"SOP class {sop_class} holds raw detector data, before the manufacturer's image "
                        "processing; the model was trained on For Presentation images, so its findings may be wrong")
    if "tomosynthesis" in sop_class.lower():
        warnings.append(f"SOP class {sop_class}: one frame of a tomosynthesis series (a slice or synthetic view), "
                        "not a 2-D mammogram, which is what the model was trained on")
    modality = str(image.extra.get("modality", "")).upper()
    if modality not in MAMMOGRAPHY_MODALITIES:
        warnings.append(f"modality {modality} is not mammography (MG); MammoPatch's findings are meaningless on it")
    return warnings


def _sop_class_name(uid: str) -> str:
    """A SOP Class UID's name from pydicom's UID dictionary ("" when none; the UID when unknown)."""
    if not uid:
        return ""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid
