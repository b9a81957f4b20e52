"""One entry point, :func:`read_mammogram`, for every supported file format.

- DICOM (any extension, recognised by its "DICM" preamble): :mod:`.dicom`.
- PGM / PNG / TIFF / JPEG: Pillow (SimpleITK has no PGM reader; mini-MIAS ships PGM).
- NRRD / NIfTI / MHA / MHD: SimpleITK, keeping origin, spacing and direction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np

from ..errors import ImageReadError, InvalidImageError, UnsupportedImageError
from ..vocabulary import PathLike
from . import headers
from .dicom import read_dicom, read_dicom_breast
from .image import ImageGeometry, MammogramImage
from .paths import file_problem
from .spacing import apply_policy, is_usable, judge
from .validate import MAX_SOURCE_PIXELS, check_spacing_value, content_warnings, kind_warnings

logger = logging.getLogger(__name__)

PILLOW_EXTENSIONS = (".pgm", ".png", ".tif", ".tiff", ".jpg", ".jpeg")
ITK_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
SUPPORTED_EXTENSIONS = DICOM_EXTENSIONS + PILLOW_EXTENSIONS + ITK_EXTENSIONS

#: The smallest side accepted by default: one sliding window (256 px).
MIN_IMAGE_SIDE = 256


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom_file(path: PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _reads_as_dicom(path: Path) -> bool:
    """Whether :func:`read_mammogram` reads the file as DICOM (its preamble, or its extension)."""
    return is_dicom_file(path) or _extension(path) in DICOM_EXTENSIONS


def read_breast(path: PathLike) -> Dict[str, Any]:
    """What :func:`read_mammogram` would give the file's image of its breast and study (``uids``:
    study, series, instance, patient; ``laterality``; ``view_position``), from its header alone,
    without decoding pixels: empty values for the formats that store none.

    Raises:
        ImageReadError: a DICOM file whose header cannot be parsed.
    """
    file = Path(path)
    return read_dicom_breast(file) if _reads_as_dicom(file) else {"uids": {}, "laterality": "", "view_position": ""}


def _read_pillow(path: Path) -> MammogramImage:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS  # Pillow warns above this and refuses above twice it
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_SOURCE_PIXELS:
                raise InvalidImageError(f"image is {img.height} x {img.width} px, above the "
                                        f"{MAX_SOURCE_PIXELS / 1e6:.0f} Mpx limit", path)
            pages = int(getattr(img, "n_frames", 1) or 1)
            if pages > 1:
                raise UnsupportedImageError(
                    f"multi-page {img.format or 'image'} ({pages} pages or frames, e.g. a stack or tomosynthesis); "
                    "MammoPatch reads single 2-D mammograms: save the page you mean on its own", path)
            img.load()
            mode = img.mode
            if mode in ("RGB", "RGBA", "P", "CMYK", "LA"):
                raise UnsupportedImageError(f"colour image (mode {mode}); expected a greyscale mammogram", path)
            pixels = np.asarray(img)
    except (UnsupportedImageError, InvalidImageError):
        raise
    except Image.DecompressionBombError:
        raise InvalidImageError(f"image is far above the {MAX_SOURCE_PIXELS / 1e6:.0f} Mpx limit (not read)",
                                path) from None
    except UnidentifiedImageError:
        raise ImageReadError("not a readable image file", path) from None
    except PermissionError:
        raise ImageReadError("permission denied", path) from None
    except (OSError, ValueError, SyntaxError) as exc:
        if "truncated" in str(exc).lower():
            raise ImageReadError("the image data is cut short (truncated file)", path) from None
        raise ImageReadError(f"cannot read image ({exc}); the file may be truncated", path) from None
    bits = 8 if pixels.dtype == np.uint8 else 16 if pixels.dtype in (np.uint16, np.int16, np.int32) else 32
    return MammogramImage(pixels=pixels.astype(np.float32), path=str(path), bits_stored=bits, spacing_source="default")


def _itk_readable_name(path: Path, stack: contextlib.ExitStack) -> str:
    """SimpleITK aborts the whole process on a file name that is not valid UTF-8; such files
    are read through a temporary link with a plain name (detached-header formats refused)."""
    name = os.fsencode(path)
    try:
        name.decode("utf-8")
        return str(path)
    except UnicodeDecodeError:
        pass
    if _extension(path) in (".nhdr", ".mhd"):
        raise ImageReadError("file name is not valid UTF-8 and the header names a separate data file; "
                             "rename the files", path)
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mammopatch-"))
    link = os.path.join(folder, "image" + _extension(path))
    os.symlink(os.path.abspath(name), os.fsencode(link))
    return link


def _itk_message(exc: RuntimeError) -> str:
    """ITK's exception text without its source locations and object addresses, on one line."""
    lines = []
    for line in str(exc).strip().splitlines():
        line = re.sub(r"^.*?ITK ERROR: \w+\(0x[0-9a-f]+\):\s*", "", line.strip())
        if not line or line.startswith("Exception thrown in SimpleITK") or re.match(r"^/\S+:\d+:?$", line):
            continue
        lines.append(line.rstrip("."))
    teem = [line for line in lines if line.startswith("[nrrd]") and "trouble" not in line]
    if teem:  # the NRRD library's chain of "trouble" lines ends with the cause
        return teem[-1]
    return "; ".join(lines) or "unknown ITK error"


_QUIET = {"readers": 0, "saved": True}
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """ITK prints warnings straight to stderr, beside MammoPatch's one-line error; the failure
    is reported through the exception instead. ITK's switch is global: the reading threads
    share it, and the last one out restores what was there before."""
    import SimpleITK as sitk

    with _QUIET_LOCK:
        if _QUIET["readers"] == 0:
            _QUIET["saved"] = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        _QUIET["readers"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["readers"] -= 1
            if _QUIET["readers"] == 0:
                sitk.ProcessObject.SetGlobalWarningDisplay(_QUIET["saved"])


def _read_itk(path: Path) -> MammogramImage:
    import SimpleITK as sitk

    ext = _extension(path)
    header = headers.read_header(path, ext)
    stated: Optional[tuple] = None
    if header is not None:
        headers.check_header(header, path)
        stated = header.stated_spacing()
    unusable_spacing = stated is not None and not is_usable(stated)
    try:
        with contextlib.ExitStack() as stack, _itk_warnings_off():
            name = _itk_readable_name(path, stack)
            if unusable_spacing:
                # The only fault ITK would trip over (or silently "correct") is the spacing: read
                # the pixels through a copy of the header without it.
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mammopatch-"))
                name = headers.without_spacing(header, path, folder)
            img = sitk.ReadImage(name)
    except RuntimeError as exc:
        raise ImageReadError(f"cannot read image ({_itk_message(exc)})", path) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UnsupportedImageError("multi-component image; expected a greyscale mammogram", path)
    pixels = sitk.GetArrayFromImage(img)
    dim = img.GetDimension()
    if dim == 3:
        if pixels.shape[0] != 1:
            raise UnsupportedImageError(f"3-D image with {pixels.shape[0]} slices; expected one 2-D mammogram", path)
        pixels = pixels[0]
        geometry = ImageGeometry(
            spacing=tuple(float(v) for v in img.GetSpacing()),
            origin=tuple(float(v) for v in img.GetOrigin()),
            direction=tuple(float(v) for v in img.GetDirection()),
        )
    elif dim == 2:
        d = img.GetDirection()
        geometry = ImageGeometry(
            spacing=(*(float(v) for v in img.GetSpacing()), 1.0),
            origin=(*(float(v) for v in img.GetOrigin()), 0.0),
            direction=(d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0),
        )
    else:
        raise UnsupportedImageError(f"{dim}-D image; expected a 2-D mammogram", path)
    bits = 8 * pixels.dtype.itemsize if pixels.dtype.kind in "ui" else 32
    if header is None:  # NIfTI (always stores a spacing) or a file ITK recognised by content
        stated = (geometry.row_spacing, geometry.col_spacing)
    spacing, problem = judge(stated, format_default_possible=True, shape=pixels.shape)
    return MammogramImage(pixels=pixels.astype(np.float32), geometry=geometry, path=str(path), bits_stored=bits,
                          spacing_source="file header" if spacing is not None else "default", spacing_problem=problem)


def validate_pixels(image: MammogramImage, min_side: int = MIN_IMAGE_SIDE) -> None:
    """Reject images that cannot be analysed: empty, one value everywhere, non-finite, tiny."""
    pixels = image.pixels
    where = image.path or "<array>"
    if pixels.ndim != 2 or pixels.size == 0:
        raise InvalidImageError(f"image has shape {pixels.shape}; expected a non-empty 2-D image", where)
    if not np.isfinite(pixels).all():
        raise InvalidImageError("image contains NaN or infinite values", where)
    if float(pixels.max()) == float(pixels.min()):
        raise InvalidImageError(f"image is blank (every pixel is {float(pixels.min()):g})", where)
    if min(pixels.shape) < min_side:
        raise InvalidImageError(
            f"image is {pixels.shape[0]} x {pixels.shape[1]} px, smaller than one {min_side} px window", where
        )


def read_mammogram(
    path: PathLike,
    spacing_mm: Optional[float] = None,
    apply_voi: bool = True,
    min_side: int = MIN_IMAGE_SIDE,
) -> MammogramImage:
    """Read a mammogram file of any supported format and check it can be analysed.

    Args:
        path: DICOM (any extension), PGM/PNG/TIFF/JPEG, or NRRD/NIfTI/MHA.
        spacing_mm: pixel spacing to use where the file's is unknown (PNG/PGM: mini-MIAS is
            0.2): it states none, none that is finite and positive, or only its format's
            default (:mod:`.spacing`); a usable stated spacing is never overridden.
        apply_voi: DICOM only: apply the first VOI LUT / window (see :mod:`.dicom`).
        min_side: smallest accepted side in pixels (one window by default); 0 disables.

    Raises:
        ImageReadError, UnsupportedImageError, InvalidImageError: with the path and cause.
    """
    file = Path(path)
    problem = file_problem(file, "image file")
    if problem is not None:
        raise ImageReadError(problem, file)
    ext = _extension(file)
    if _reads_as_dicom(file):
        image = read_dicom(file, apply_voi=apply_voi)
    elif ext in PILLOW_EXTENSIONS:
        image = _read_pillow(file)
    elif ext in ITK_EXTENSIONS:
        image = _read_itk(file)
    else:
        raise UnsupportedImageError(
            f"unknown file type {ext or '(no extension)'}; supported: DICOM, {', '.join(PILLOW_EXTENSIONS + ITK_EXTENSIONS)}",
            file,
        )
    if image.spacing_source == "default" and spacing_mm is not None:
        spacing_mm = check_spacing_value(spacing_mm, "spacing_mm")
    apply_policy(image, spacing_mm)
    validate_pixels(image, min_side=min_side)
    image.warnings.extend(kind_warnings(image))
    image.warnings.extend(content_warnings(image))
    for warning in image.warnings:
        logger.warning("%s: %s", file, warning)
    return image
