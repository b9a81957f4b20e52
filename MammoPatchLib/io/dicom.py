"""DICOM mammogram reading with pydicom.

Choices where DICOM leaves room (documented in README):
- Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) is always applied.
- VOI: by default the first VOI LUT (VOI LUT Sequence, else Window Center/Width) is applied,
  because it is the manufacturer's intended display of "For Presentation" images and clips
  the detector's unused range; ``apply_voi=False`` keeps the modality values instead.
- MONOCHROME1 is inverted (value range kept) so that higher always means denser.
- Pixel spacing: PixelSpacing, else ImagerPixelSpacing (the detector plane; mammography
  magnification is small), else unknown (:mod:`.spacing`: ``--spacing``, or 0.1 mm with a
  warning), stated in ``spacing_source``. A value that is not finite and positive counts as
  absent, and the warning quotes it.
- A file meta without a Transfer Syntax UID: uncompressed pixel data is read in the encoding
  its data set was parsed with (a warning says so); compressed data is refused.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import ImageReadError, UnsupportedImageError
from ..vocabulary import PathLike
from .image import DEFAULT_SPACING_MM, ImageGeometry, MammogramImage
from .validate import check_source_size
from .spacing import disagreement, format_number, judge, is_usable

logger = logging.getLogger(__name__)

DECODER_HINT = "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg (JPEG-LS: pyjpegls)"


def _spacing(ds) -> Tuple[Optional[Tuple[float, float]], str, str]:
    """(row, column) spacing, the attribute it came from, and why a stated one was not used."""
    problems = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _numbers(ds, keyword, 2)
        if value is None:
            continue
        spacing, problem = judge(list(value), f"{keyword} is")
        if spacing is None and not _is_two_numbers(ds, keyword):
            problem = f'{keyword} is "{_raw_text(ds, keyword)}", not two numbers'
        if spacing is not None:
            return spacing, keyword, "; ".join(problems)
        problems.append(problem)
    return None, "default", "; ".join(problems)


def _raw_text(ds, keyword: str) -> str:
    """An attribute's value as stored (multiple values joined by DICOM's backslash)."""
    value = ds.get(keyword, None)
    value = getattr(value, "value", value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1").strip()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _is_two_numbers(ds, keyword: str) -> bool:
    parts = _raw_text(ds, keyword).split("\\")
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return len(parts) == 2


def _numbers(ds, keyword: str, count: int) -> Optional[np.ndarray]:
    """A multi-valued numeric attribute as floats, None when absent or unreadable."""
    try:
        value = ds.get(keyword, None)
        if value is None:
            return None
        numbers = np.asarray([float(v) for v in (value if hasattr(value, "__len__") else [value])], dtype=float)
    except (TypeError, ValueError):
        return np.full(count, np.nan)
    return numbers if len(numbers) == count else np.full(count, np.nan)


def _geometry(ds, spacing: Tuple[float, float], warnings: List[str]) -> ImageGeometry:
    """Origin and direction from ImagePositionPatient / ImageOrientationPatient; unusable values
    (not numbers, not finite, not two orthonormal vectors) fall back to the identity, with a
    warning: mammograms often carry no patient geometry, and heatmaps stay aligned to pixels."""
    origin = (0.0, 0.0, 0.0)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    position = _numbers(ds, "ImagePositionPatient", 3)
    if position is not None:
        if np.all(np.isfinite(position)):
            origin = tuple(float(v) for v in position)
        else:
            warnings.append("ImagePositionPatient is not three numbers; outputs use origin (0, 0, 0)")
    orientation = _numbers(ds, "ImageOrientationPatient", 6)
    if orientation is not None:
        row_dir, col_dir = orientation[:3], orientation[3:]
        usable = (np.all(np.isfinite(orientation)) and abs(np.linalg.norm(row_dir) - 1) < 1e-3
                  and abs(np.linalg.norm(col_dir) - 1) < 1e-3 and abs(float(row_dir @ col_dir)) < 1e-3)
        if usable:
            normal = np.cross(row_dir, col_dir)
            direction = tuple(float(v) for v in np.stack([row_dir, col_dir, normal], axis=1).reshape(-1))
        else:
            warnings.append(f"ImageOrientationPatient ({', '.join(format_number(v) for v in orientation)}) is not "
                            "two orthonormal directions; "
                            "outputs use the identity orientation")
    return ImageGeometry(spacing=(spacing[1], spacing[0], 1.0), origin=origin, direction=direction)


def first_sentence(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of a library's exception, for a one-line message: pydicom's texts
    go on with generic advice for several hundred characters. Cut at a word, never mid-word."""
    text = " ".join(str(exc).split())
    match = re.match(r"(.+?[.;])(\s|$)", text)
    sentence = (match.group(1) if match else text).rstrip(".;")
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence or type(exc).__name__


def _integer(ds, keyword: str) -> Optional[int]:
    try:
        value = ds.get(keyword, None)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _transfer_syntax(ds, path: str, warnings: List[str]):
    """The Transfer Syntax UID from the file meta. Without one, uncompressed pixel data is read
    in the encoding the data set itself was parsed with (pydicom knows it), with a warning;
    compressed (encapsulated) pixel data cannot be, its codec being unknown."""
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID", None) if meta is not None else None
    if syntax:
        return UID(str(syntax))
    element = ds["PixelData"]
    value = element.value if isinstance(element.value, (bytes, bytearray)) else b""
    if value[:4] == b"\xfe\xff\x00\xe0" or getattr(element, "is_undefined_length", False):
        raise ImageReadError("the file meta has no Transfer Syntax UID (0002,0010) and the pixel data is compressed: "
                             "its codec is unknown", path)
    implicit, little = _encoding(ds)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    if meta is None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    warnings.append(f"the file meta has no Transfer Syntax UID (0002,0010); the pixel data is read as {syntax.name}, "
                    "the encoding of its data set")
    return syntax


def _encoding(ds) -> Tuple[bool, bool]:
    """(implicit VR, little endian) the data set was read with (pydicom 3 and 2.4)."""
    original = getattr(ds, "original_encoding", None)
    if original and original[0] is not None:
        return bool(original[0]), bool(original[1])
    implicit = getattr(ds, "is_implicit_VR", True)
    little = getattr(ds, "is_little_endian", True)
    return (True if implicit is None else bool(implicit)), (True if little is None else bool(little))


def _check_native_length(ds, path: str) -> None:
    """Uncompressed pixel data shorter than Rows x Columns x samples x BitsAllocated / 8: a
    truncated file (said with the numbers, instead of pydicom's paragraph)."""
    bits = _integer(ds, "BitsAllocated") or 16
    samples = _integer(ds, "SamplesPerPixel") or 1
    rows, cols = _integer(ds, "Rows") or 0, _integer(ds, "Columns") or 0
    needed = (rows * cols * samples * bits + 7) // 8
    value = ds["PixelData"].value
    held = len(value) if isinstance(value, (bytes, bytearray)) else needed
    if held < needed:
        raise ImageReadError(f"the pixel data holds {held} bytes where the {rows} x {cols} image it describes needs "
                             f"{needed}: the file is truncated", path)


def save_dicom(ds, path) -> None:
    """Save as a DICOM Part 10 file (preamble and file meta) with pydicom 3, or pydicom 2.4 as
    3D Slicer 5.6-5.10 bundle it (``enforce_file_format`` is new in pydicom 3)."""
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.save_as(path, write_like_original=False)


def _has_pixel_data_tag(path: str) -> bool:
    """Whether the file holds a (7FE0,0010) Pixel Data tag that pydicom dropped because the
    file ends inside it."""
    with open(path, "rb") as handle:
        data = handle.read()
    return b"\xe0\x7f\x10\x00" in data


def _lut_functions():
    """pydicom 3 keeps the LUT functions in ``pydicom.pixels``; pydicom 2.4 (3D Slicer 5.6-5.10)
    in ``pydicom.pixel_data_handlers.util``."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def read_dicom(path: PathLike, apply_voi: bool = True) -> MammogramImage:
    """Read a single-frame greyscale DICOM into a :class:`MammogramImage`.

    Raises:
        ImageReadError: not DICOM, no pixel data, truncated pixel data.
        UnsupportedImageError: multi-frame, colour, or a transfer syntax without decoder.
    """
    path = os.fspath(path)
    warnings: List[str] = []
    ds = _open_dataset(path, warnings)
    photometric = _check_image_attributes(ds, path)
    syntax = _transfer_syntax(ds, path, warnings)
    stored = _decode_pixels(ds, syntax, path)
    pixels, voi_applied = _display_values(stored, ds, apply_voi, photometric, warnings)
    spacing, spacing_source, spacing_problem = _spacing(ds)
    stated = [_numbers(ds, keyword, 2) for keyword in ("PixelSpacing", "ImagerPixelSpacing")]
    if all(v is not None and is_usable(v) for v in stated):
        conflict = disagreement(stated[0], stated[1], ("PixelSpacing", "ImagerPixelSpacing"))  # type: ignore[arg-type]
        if conflict:
            warnings.append(conflict)
    breast = _breast(ds)
    return MammogramImage(
        pixels=pixels,
        geometry=_geometry(ds, spacing or (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM), warnings),
        path=path,
        laterality=breast["laterality"],
        view_position=breast["view_position"],
        photometric_interpretation=photometric,
        bits_stored=int(getattr(ds, "BitsStored", stored.dtype.itemsize * 8)),
        spacing_source=spacing_source,
        spacing_problem=spacing_problem,
        uids=breast["uids"],
        extra={"transfer_syntax": str(syntax) if syntax else "", "voi": voi_applied,
               "modality": str(getattr(ds, "Modality", "") or ""),
               "sop_class": str(getattr(ds, "SOPClassUID", "") or ""),
               "presentation_intent": str(getattr(ds, "PresentationIntentType", "") or "")},
        warnings=warnings,
    )


def read_dicom_breast(path: PathLike) -> Dict[str, Any]:
    """What :func:`read_dicom` gives an image of its breast and study (``uids``, ``laterality``,
    ``view_position``, as in ``MammogramImage.metadata()``), from the header alone: a batch plans
    with them (which study each file belongs to, which films are the two breasts of a view)
    without decoding any pixels.

    Raises:
        ImageReadError: not DICOM, or a header that cannot be parsed.
    """
    return _breast(_open_dataset(os.fspath(path), [], header_only=True))


def _breast(ds) -> Dict[str, Any]:
    laterality = str(getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", "") or "").strip().upper()
    return {"uids": _uids(ds), "laterality": laterality[:1] if laterality in ("L", "R") else "",
            "view_position": str(getattr(ds, "ViewPosition", "") or "").strip().upper()}


def _uids(ds) -> Dict[str, str]:
    return {key: str(getattr(ds, key)) for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                                   "PatientID")
            if getattr(ds, key, None) not in (None, "")}


def _open_dataset(path: str, warnings: List[str], header_only: bool = False):
    """The parsed data set (``header_only``: up to the pixel data); a file without the Part 10
    preamble is accepted (many archives store bare data sets) when it parses and carries the
    attributes an image needs."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=header_only)
            if "PixelData" not in ds and "SOPClassUID" not in ds:
                raise InvalidDicomError("no image attributes")
        except Exception:  # noqa: BLE001 - whatever forced parsing raises, it is not DICOM
            raise ImageReadError("not a DICOM file (no DICM preamble, and not a readable data set)", path) from None
        warnings.append("DICOM file without the Part 10 preamble (read as a bare data set)")
        return ds
    except PermissionError:
        raise ImageReadError("permission denied", path) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageReadError(f"cannot parse DICOM ({first_sentence(exc)}); the file may be truncated", path) from None


def _check_image_attributes(ds, path: str) -> str:
    """Refuse what is not one 2-D greyscale image with pixels (before decoding anything);
    returns the photometric interpretation."""
    for keyword, words in (("FloatPixelData", "Float Pixel Data"), ("DoubleFloatPixelData", "Double Float Pixel Data")):
        if keyword in ds:
            raise UnsupportedImageError(
                f"the image is stored as {words} {ds[keyword].tag} (floating-point values, e.g. a parametric map), "
                "not as the integer Pixel Data of a mammogram", path)
    if "PixelData" not in ds:
        if _has_pixel_data_tag(path):
            raise ImageReadError("the pixel data is cut short (truncated file); it cannot be decoded", path)
        raise ImageReadError("DICOM without pixel data (not an image, e.g. a report or structured document)", path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"multi-frame DICOM ({frames} frames, e.g. tomosynthesis); MammoPatch reads single 2-D mammograms", path
        )
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(f"colour DICOM ({photometric}, {samples} samples per pixel); expected greyscale", path)
    for keyword in ("Rows", "Columns"):
        value = _integer(ds, keyword)
        if value is None or value < 1:
            tag = "(0028,0010)" if keyword == "Rows" else "(0028,0011)"
            raise ImageReadError(f"{keyword} {tag} is {'missing' if value is None else value}: the header describes "
                                 "an image without pixels", path)
    check_source_size(_integer(ds, "Rows") or 0, _integer(ds, "Columns") or 0, path)
    return photometric


def _decode_pixels(ds, syntax, path: str) -> np.ndarray:
    """The stored 2-D pixel array, each decoding failure said as what it is (no decoder for
    the transfer syntax, a truncated or corrupt stream, attributes that contradict the data)."""
    syntax_name = getattr(syntax, "name", str(syntax))
    if not getattr(syntax, "is_compressed", True):
        _check_native_length(ds, path)
    try:
        stored = ds.pixel_array
    except NotImplementedError as exc:
        raise UnsupportedImageError(
            f"transfer syntax {syntax_name} ({syntax}) cannot be decoded here: {DECODER_HINT}", path
        ) from exc
    except RuntimeError as exc:
        if "plugin" in str(exc).lower() or "decod" in str(exc).lower() or "handler" in str(exc).lower():
            raise UnsupportedImageError(
                f"transfer syntax {syntax_name} ({syntax}) cannot be decoded here: {DECODER_HINT}", path
            ) from exc
        raise ImageReadError(f"pixel data cannot be decoded ({first_sentence(exc)})", path) from exc
    except (ValueError, EOFError, OSError, AttributeError, KeyError, TypeError) as exc:
        compressed = syntax is not None and getattr(syntax, "is_compressed", False)
        what = f"the compressed {syntax_name} pixel data cannot be decoded (truncated or corrupt stream" if compressed \
            else "the pixel data cannot be decoded (its attributes contradict it"
        raise ImageReadError(f"{what}: {first_sentence(exc)})", path) from None
    if stored.ndim != 2:
        raise UnsupportedImageError(f"pixel array has shape {stored.shape}; expected a 2-D image", path)
    return stored


def _lut_input(values: np.ndarray, ds) -> np.ndarray:
    """What a VOI LUT Sequence is looked up with: a LUT is indexed by whole numbers, and a
    Rescale Slope / Intercept of 1 / 0 (most mammograms state it) makes the modality values
    floats that are whole numbers; handed over as floats, pydicom warns that the result may be
    wrong although it is not. Other values (a real rescale, a window) go as they are."""
    if "VOILUTSequence" not in ds or values.dtype.kind != "f" or not np.isfinite(values).all():
        return values
    whole = np.rint(values)
    if np.array_equal(whole, values) and np.abs(whole).max(initial=0) < 2**31:
        return whole.astype(np.int32)
    return values


def _display_values(stored: np.ndarray, ds, apply_voi: bool, photometric: str,
                    warnings: List[str]) -> Tuple[np.ndarray, str]:
    """Modality LUT always, the first VOI LUT / window when asked (the manufacturer's display
    intent), MONOCHROME1 inverted so higher means denser; returns (pixels, VOI applied)."""
    apply_modality_lut, apply_voi_lut = _lut_functions()
    values = apply_modality_lut(stored, ds)
    voi_applied = "none"
    if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        try:
            windowed = np.asarray(apply_voi_lut(_lut_input(values, ds), ds, index=0), dtype=np.float32)
            if not np.isfinite(windowed).all() or float(windowed.max()) == float(windowed.min()):
                raise ValueError("the window maps every pixel to one value")
            values = windowed
            voi_applied = "VOILUTSequence" if "VOILUTSequence" in ds else "Window"
        except (ValueError, TypeError, ZeroDivisionError, IndexError, KeyError, AttributeError) as exc:
            warnings.append(f"the VOI LUT / window cannot be applied ({exc}); modality values are used")
    pixels = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return pixels, voi_applied
