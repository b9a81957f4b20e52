"""One pixel-spacing policy for every reader.

A reader says what its file states (:func:`stated_spacing`); the policy decides:

- a stated spacing that is finite and positive is the image's spacing ("PixelSpacing",
  "file header", ...), except
- a format's default written where no spacing was known (ITK's 1 x 1 mm, what SimpleITK,
  NIfTI tools and many converters put in NRRD / MetaImage / NIfTI headers) on an image that
  it would make larger than any breast (a 1024 px mammogram: a metre; a 1 mm heatmap that
  MammoPatch wrote itself stays 1 mm), and
- a stated spacing that is not finite and positive (NaN, inf, 0, -0.1: ITK would turn NaN
  into 1 mm and -0.1 into 0.1 mm without a word),

count as **unknown**, like a file that states none: ``--spacing`` / ``spacing_mm`` then
applies, else :data:`~.image.DEFAULT_SPACING_MM` with a warning that says what the file
stated. A stated spacing that is usable but implausible is refused later
(:func:`~.validate.check_geometry`: range, and the breast's physical size).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from .image import DEFAULT_SPACING_MM, ImageGeometry, MammogramImage

#: The spacing ITK-family formats hold when the writer knew none (SimpleITK's default).
FORMAT_DEFAULT_SPACING_MM = 1.0
#: The largest breast (its box, either side, mm) a mammogram can show: the largest detectors
#: are 24 x 30 cm (DR) and 35 x 43 cm (CR plates), and a breast fills less than its detector.
#: Larger means a wrong pixel spacing (ITK's 1 mm default on a 0.1 mm image: a metre).
MAX_BREAST_MM = 400.0
#: The largest ratio of two spacings one file states (PixelSpacing at the breast, ImagerPixelSpacing
#: at the detector) that geometry explains: a magnification view enlarges 1.5-2x. More means one
#: of them is wrong.
MAX_MAGNIFICATION = 2.0


def format_number(value: float) -> str:
    """A number for a message: ``0.1``, ``nan``, ``inf``, ``-0.1`` (never ``np.float64(...)``)."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return repr(str(value))


def format_spacing(values: Sequence[float]) -> str:
    """``0.1 x 0.1 mm``."""
    return " x ".join(format_number(v) for v in values) + " mm"


def is_usable(values: Optional[Sequence[float]]) -> bool:
    """Finite and positive, every value."""
    try:
        return values is not None and len(values) > 0 and all(math.isfinite(float(v)) and float(v) > 0
                                                              for v in values)
    except (TypeError, ValueError):
        return False


def disagreement(first: Sequence[float], second: Sequence[float], names: Tuple[str, str]) -> str:
    """Why two usable spacings one file states cannot both be right ("" when they can: equal,
    or as far apart as a magnification view puts them, :data:`MAX_MAGNIFICATION`)."""
    if not (is_usable(first) and is_usable(second)) or len(first) != len(second):
        return ""
    ratio = max(max(float(a) / float(b), float(b) / float(a)) for a, b in zip(first, second))
    if ratio <= MAX_MAGNIFICATION:
        return ""
    return (f"{names[0]} {format_spacing(first)} and {names[1]} {format_spacing(second)} differ {ratio:.3g}x, more "
            f"than a magnification view's {MAX_MAGNIFICATION:g}x: one of them is wrong ({names[0]} is used)")


def judge(values: Optional[Sequence[float]], subject: str = "the file states pixel spacing",
          format_default_possible: bool = False, shape: Optional[Tuple[int, int]] = None
          ) -> Tuple[Optional[Tuple[float, float]], str]:
    """(row, column) spacing to use, or None with why it counts as unknown ("" when the file
    states none).

    Args:
        values: the (row, column) spacing the file states, None when it states none.
        subject: the start of the reason ("the file states pixel spacing", "PixelSpacing is").
        format_default_possible: the format's writers put :data:`FORMAT_DEFAULT_SPACING_MM`
            where they know no spacing (NRRD, MetaImage, NIfTI), so exactly that value, on an
            image of ``shape`` (rows, columns) it would make larger than :data:`MAX_BREAST_MM`,
            is no evidence of a real spacing.
    """
    if values is None:
        return None, ""
    if not is_usable(values):
        return None, f"{subject} {format_spacing(values)}, which is not a spacing (it must be finite and positive)"
    row, col = (float(values[0]), float(values[1]))
    if format_default_possible and row == col == FORMAT_DEFAULT_SPACING_MM and shape is not None:
        height, width = shape[0] * row, shape[1] * col
        if max(height, width) > MAX_BREAST_MM:
            return None, (f"{subject} {format_spacing((row, col))}, the default its format's writers put when they "
                          f"know no spacing, which would make the image {height / 10:.0f} x {width / 10:.0f} cm")
    return (row, col), ""


def apply_policy(image: MammogramImage, spacing_mm: Optional[float]) -> None:
    """Give an image whose spacing is unknown (``spacing_source == "default"``) the given
    spacing, else the default with a warning naming what the file stated."""
    if image.spacing_source != "default":
        return
    reason = image.spacing_problem or "the file states no pixel spacing"
    if spacing_mm is not None:
        spacing, image.spacing_source = float(spacing_mm), "given"
        if image.spacing_problem:
            image.warnings.append(f"{reason}; the given {format_number(spacing)} mm is used")
    else:
        spacing = DEFAULT_SPACING_MM
        image.warnings.append(f"{reason}; {DEFAULT_SPACING_MM} mm assumed (pass --spacing / spacing_mm)")
    image.geometry = ImageGeometry(spacing=(spacing, spacing, 1.0), origin=image.geometry.origin,
                                   direction=image.geometry.direction)
