"""DICOM mammogram reading with pydicom.

Choices where DICOM leaves room (documented in README):
- Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) is always applied.
- VOI: by default the first VOI LUT (VOI LUT Sequence, else Window Center/Width) is applied,
  because it is the manufacturer's intended display of "For Presentation" images and clips
  the detector's unused range; ``apply_voi=False`` keeps the modality values instead.
- MONOCHROME1 is inverted (value range kept) so that higher always means denser.
- Pixel spacing: PixelSpacing, else ImagerPixelSpacing (the detector plane; mammography
  magnification is small), else a warning and 0.1 mm, stated in ``spacing_source``.
"""

from __future__ import annotations

import logging
import os
from typing import Tuple

import numpy as np

from ..errors import ImageReadError, UnsupportedImageError
from ..vocabulary import PathLike
from .image import DEFAULT_SPACING_MM, ImageGeometry, MammogramImage

logger = logging.getLogger(__name__)

DECODER_HINT = "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg (JPEG-LS: pyjpegls)"


def _spacing(ds, path: str) -> Tuple[Tuple[float, float], str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, keyword, None)
        if value is not None and len(value) == 2:
            try:
                row, col = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
            if row > 0 and col > 0:
                return (row, col), keyword
    logger.warning("%s: no PixelSpacing or ImagerPixelSpacing; assuming %.2f mm", path, DEFAULT_SPACING_MM)
    return (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM), "default"


def _geometry(ds, spacing: Tuple[float, float]) -> ImageGeometry:
    origin = (0.0, 0.0, 0.0)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    position = getattr(ds, "ImagePositionPatient", None)
    orientation = getattr(ds, "ImageOrientationPatient", None)
    if position is not None and len(position) == 3:
        origin = tuple(float(v) for v in position)
    if orientation is not None and len(orientation) == 6:
        row_dir = np.asarray([float(v) for v in orientation[:3]])
        col_dir = np.asarray([float(v) for v in orientation[3:]])
        normal = np.cross(row_dir, col_dir)
        direction = tuple(float(v) for v in np.stack([row_dir, col_dir, normal], axis=1).reshape(-1))
    return ImageGeometry(spacing=(spacing[1], spacing[0], 1.0), origin=origin, direction=direction)


def read_dicom(path: PathLike, apply_voi: bool = True) -> MammogramImage:
    """Read a single-frame greyscale DICOM into a :class:`MammogramImage`.

    Raises:
        ImageReadError: not DICOM, no pixel data, truncated pixel data.
        UnsupportedImageError: multi-frame, colour, or a transfer syntax without decoder.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError("not a DICOM file (no DICM preamble)", path) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ImageReadError(f"cannot parse DICOM ({type(exc).__name__}: {exc}); the file may be truncated", path) from None

    if "PixelData" not in ds:
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

    syntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    syntax_name = getattr(syntax, "name", str(syntax))
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
        raise ImageReadError(f"pixel data cannot be decoded ({exc})", path) from exc
    except (ValueError, EOFError, OSError, AttributeError, KeyError) as exc:
        raise ImageReadError(f"pixel data cannot be read; the file may be truncated ({exc})", path) from exc

    if stored.ndim != 2:
        raise UnsupportedImageError(f"pixel array has shape {stored.shape}; expected a 2-D image", path)

    values = apply_modality_lut(stored, ds)
    voi_applied = "none"
    if apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds):
        values = apply_voi_lut(values, ds, index=0)
        voi_applied = "VOILUTSequence" if "VOILUTSequence" in ds else "Window"
    pixels = np.asarray(values, dtype=np.float32)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels

    spacing, spacing_source = _spacing(ds, path)
    laterality = str(getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", "") or "").strip().upper()
    uids = {
        key: str(getattr(ds, key))
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")
        if getattr(ds, key, None) not in (None, "")
    }
    return MammogramImage(
        pixels=pixels,
        geometry=_geometry(ds, spacing),
        path=path,
        laterality=laterality[:1] if laterality in ("L", "R") else "",
        view_position=str(getattr(ds, "ViewPosition", "") or "").strip().upper(),
        photometric_interpretation=photometric,
        bits_stored=int(getattr(ds, "BitsStored", stored.dtype.itemsize * 8)),
        spacing_source=spacing_source,
        uids=uids,
        extra={"transfer_syntax": str(syntax) if syntax else "", "voi": voi_applied, "modality": str(getattr(ds, "Modality", ""))},
    )
