"""Synthetic mammograms with findings of known class and position, as real DICOM.

For tests, demos and benchmarks: no real data needed, every finding's box is known exactly.
A phantom is a half-ellipse breast against the chest wall with smoothed-noise
fibroglandular texture (denser towards the chest wall), a bright skin line, a pectoral
muscle triangle on MLO views, and findings drawn in physical units:

- "round mass" and "spiculated mass" -> Mass
- "calcification cluster" -> Suspicious Calcification
- "architectural distortion" -> Architectural Distortion
- "asymmetric density" -> Asymmetry (or Focal Asymmetry)

:func:`make_vindr_dataset` writes a small data set in the VinDr-Mammo v1.0.0 layout.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .io.atomic import atomic_path
from .io.dicom import save_dicom
from .vocabulary import PathLike, VinDrSchema

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

FINDING_KINDS: Dict[str, str] = {
    "round mass": "Mass",
    "spiculated mass": "Mass",
    "calcification cluster": "Suspicious Calcification",
    "architectural distortion": "Architectural Distortion",
    "asymmetric density": "Asymmetry",
}

#: DICOM transfer syntaxes the generator can write (those pydicom can encode).
TRANSFER_SYNTAXES = {
    "explicit": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpegls": "1.2.840.10008.1.2.4.80",
}

MAMMO_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

#: Patient Orientation (row, column directions) of the phantom: the chest wall is on the image's
#: left for "L", mirrored for "R"; an MLO's columns run towards the feet as well.
PATIENT_ORIENTATION = {("L", "CC"): ["A", "R"], ("R", "CC"): ["P", "L"], ("L", "MLO"): ["A", "FR"],
                       ("R", "MLO"): ["P", "FL"]}


@dataclass
class SyntheticFinding:
    """A drawn finding: kind, VinDr class and its box (xmin, ymin, xmax, ymax) in pixels."""

    kind: str
    category: str
    box: Tuple[float, float, float, float]


@dataclass
class SyntheticMammogram:
    """Stored pixel values (uint16, MONOCHROME2 sense) and what was drawn."""

    pixels: np.ndarray
    spacing_mm: float
    laterality: str
    view_position: str
    findings: List[SyntheticFinding]
    breast_mask: np.ndarray


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma_px: float) -> np.ndarray:
    # Generate on a coarse grid and zoom: orders of magnitude faster than a wide Gaussian.
    factor = max(1, int(sigma_px // 2))
    small_shape = (max(2, shape[0] // factor + 2), max(2, shape[1] // factor + 2))
    small = ndimage.gaussian_filter(rng.standard_normal(small_shape), sigma=max(sigma_px / factor, 0.5))
    big = ndimage.zoom(small, factor, order=1)[: shape[0], : shape[1]]
    big = np.pad(big, ((0, shape[0] - big.shape[0]), (0, shape[1] - big.shape[1])), mode="edge")
    return (big - big.mean()) / (big.std() + 1e-8)


def _breast_mask(shape: Tuple[int, int], rng: np.random.Generator) -> Tuple[np.ndarray, float, float, float]:
    rows, cols = shape
    cy = rows * rng.uniform(0.45, 0.55)
    a = cols * rng.uniform(0.62, 0.78)  # depth from the chest wall (left edge)
    b = rows * rng.uniform(0.40, 0.47)  # half height
    yy, xx = np.mgrid[0:rows, 0:cols]
    mask = (xx / a) ** 2 + ((yy - cy) / b) ** 2 < 1.0
    return mask, cy, a, b


def _inside_point(rng, mask: np.ndarray, margin: int) -> Tuple[int, int]:
    eroded = ndimage.binary_erosion(mask, iterations=max(1, margin)) if margin > 0 else mask
    candidates = np.argwhere(eroded[::4, ::4]) * 4
    if len(candidates) == 0:
        candidates = np.argwhere(mask)
    r, c = candidates[rng.integers(len(candidates))]
    return int(r), int(c)


def _draw_finding(kind: str, image: np.ndarray, mask: np.ndarray, rng, spacing: float) -> SyntheticFinding:
    rows, cols = image.shape
    yy, xx = np.ogrid[0:rows, 0:cols]
    if kind in ("round mass", "spiculated mass"):
        radius = rng.uniform(5.0, 12.0) / spacing
        margin = int(radius * 1.6)
        r, c = _inside_point(rng, mask, margin)
        dist = np.sqrt((yy - r) ** 2 + (xx - c) ** 2)
        image += 0.35 / (1.0 + np.exp((dist - radius) / max(radius * 0.08, 0.8)))
        extent = radius
        if kind == "spiculated mass":
            for angle in rng.uniform(0, 2 * np.pi, rng.integers(8, 14)):
                length = radius * rng.uniform(1.3, 1.6)
                t = np.linspace(radius * 0.8, length, int(length * 2))
                ys = np.clip((r + t * np.sin(angle)).astype(int), 0, rows - 1)
                xs = np.clip((c + t * np.cos(angle)).astype(int), 0, cols - 1)
                image[ys, xs] += 0.25
            extent = radius * 1.6
    elif kind == "calcification cluster":
        spread = rng.uniform(3.0, 6.0) / spacing
        r, c = _inside_point(rng, mask, int(spread * 1.5))
        n = int(rng.integers(8, 20))
        pr = np.clip(r + rng.normal(0, spread / 2.5, n), 0, rows - 1).astype(int)
        pc = np.clip(c + rng.normal(0, spread / 2.5, n), 0, cols - 1).astype(int)
        dots = np.zeros_like(image)
        dots[pr, pc] = 1.0
        size = max(0.6, 0.25 / spacing)
        dots = ndimage.gaussian_filter(dots, size) * (2 * np.pi * size**2)
        image += 0.6 * dots
        r, c = int(np.round(np.mean(pr))), int(np.round(np.mean(pc)))
        half_r, half_c = max(np.abs(pr - r).max(), 3) + 2, max(np.abs(pc - c).max(), 3) + 2
        return SyntheticFinding(kind, FINDING_KINDS[kind], _box(r, c, half_r, half_c, rows, cols))
    elif kind == "architectural distortion":
        radius = rng.uniform(8.0, 15.0) / spacing
        r, c = _inside_point(rng, mask, int(radius * 1.2))
        for angle in np.linspace(0, 2 * np.pi, int(rng.integers(10, 16)), endpoint=False) + rng.uniform(0, 1):
            t = np.linspace(radius * 0.1, radius, int(radius * 2))
            ys = np.clip((r + t * np.sin(angle)).astype(int), 0, rows - 1)
            xs = np.clip((c + t * np.cos(angle)).astype(int), 0, cols - 1)
            image[ys, xs] += 0.18
        image[:] = np.maximum(image, ndimage.gaussian_filter(image, 0.7))
        extent = radius
    elif kind == "asymmetric density":
        radius = rng.uniform(12.0, 22.0) / spacing
        r, c = _inside_point(rng, mask, int(radius))
        dist2 = ((yy - r) ** 2 + ((xx - c) * 1.3) ** 2) / radius**2
        image += 0.18 * np.exp(-2.0 * dist2)
        extent = radius
    else:
        raise ValueError(f"unknown synthetic finding kind {kind!r}; choose from {sorted(FINDING_KINDS)}")
    return SyntheticFinding(kind, FINDING_KINDS[kind], _box(r, c, extent, extent, rows, cols))


def _box(r: float, c: float, half_r: float, half_c: float, rows: int, cols: int) -> Tuple[float, float, float, float]:
    return (float(max(0, c - half_c)), float(max(0, r - half_r)), float(min(cols - 1, c + half_c)),
            float(min(rows - 1, r + half_r)))


def synthesize_mammogram(
    shape: Tuple[int, int] = (1024, 832),
    spacing_mm: float = 0.2,
    laterality: str = "L",
    view_position: str = "CC",
    findings: Sequence[str] = ("round mass", "calcification cluster"),
    bits_stored: int = 12,
    seed: Optional[int] = None,
) -> SyntheticMammogram:
    """Draw one phantom mammogram.

    Args:
        shape: (rows, columns) in pixels.
        spacing_mm: pixel spacing; finding sizes are drawn in mm, so they scale with it.
        laterality: "L" (chest wall on the left of the image) or "R" (mirrored).
        view_position: "CC" or "MLO" (MLO adds a pectoral muscle triangle).
        findings: kinds to draw, from :data:`FINDING_KINDS`.
        bits_stored: 8 to 16; stored values use the full range.
        seed: random seed (same seed -> same image).
    """
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view_position not in ("CC", "MLO"):
        raise ValueError(f"view_position must be 'CC' or 'MLO', got {view_position!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    rng = np.random.default_rng(seed)
    rows, cols = shape
    mask, cy, a, b = _breast_mask(shape, rng)
    yy, xx = np.mgrid[0:rows, 0:cols]
    depth = np.clip(1.0 - xx / a, 0, 1)
    texture = 0.5 * _smooth_noise(rng, shape, 3.0 / spacing_mm) + 0.25 * _smooth_noise(rng, shape, 0.8 / spacing_mm)
    density = 0.30 + 0.18 * depth + 0.07 * texture
    image = np.where(mask, density, 0.0).astype(np.float64)
    if view_position == "MLO":
        pectoral = xx < (cols * rng.uniform(0.25, 0.35)) * (1.0 - yy / (rows * rng.uniform(0.45, 0.6)))
        image[pectoral & mask] += 0.22
    skin = mask & ~ndimage.binary_erosion(mask, iterations=max(1, int(round(1.0 / spacing_mm))))
    image[skin] += 0.08
    drawn = [_draw_finding(kind, image, mask, rng, spacing_mm) for kind in findings]
    image = np.where(mask, image, 0.0)
    image += rng.normal(0, 0.006, shape)
    image = ndimage.gaussian_filter(image, 0.6)
    top = 2**bits_stored - 1
    pixels = np.clip(np.rint(image / max(image.max(), 1e-6) * top * 0.92 + top * 0.02), 0, top).astype(np.uint16)
    if laterality == "R":
        pixels = pixels[:, ::-1].copy()
        mask = mask[:, ::-1].copy()
        drawn = [SyntheticFinding(f.kind, f.category, (cols - 1 - f.box[2], f.box[1], cols - 1 - f.box[0], f.box[3]))
                 for f in drawn]
    return SyntheticMammogram(pixels, spacing_mm, laterality, view_position, drawn, mask)


def _view_code(view_position: str):
    """The View Code (CID 4014) of a view position, from pydicom's code dictionary."""
    from pydicom.sr.codedict import codes

    return {"CC": codes.SCT.CranioCaudal, "MLO": codes.SCT.MedioLateralObliqueProjection}[view_position]


def _coded(code, **nested) -> "Dataset":
    """A code sequence item (Code Value, Coding Scheme Designator, Code Meaning) of a pydicom
    ``Code``, with ``nested`` sequences (keyword: items) inside it."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    for keyword, items in nested.items():
        setattr(item, keyword, list(items))
    return item


def _describe_mammogram(ds, mammogram: SyntheticMammogram) -> None:
    """The Mammography and DX modules' acquisition attributes a vendor's For Presentation file
    carries (view and anatomy codes, positioner, detector), so readers take the same paths."""
    from pydicom.sr.codedict import codes

    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    # Image Type: a processed "For Presentation" image, as vendors derive it from the raw one.
    ds.ImageType = ["DERIVED", "PRIMARY", ""]
    ds.PatientOrientation = PATIENT_ORIENTATION[(mammogram.laterality, mammogram.view_position)]
    ds.ImageLaterality = mammogram.laterality
    ds.ViewPosition = mammogram.view_position
    ds.ViewCodeSequence = [_coded(_view_code(mammogram.view_position), ViewModifierCodeSequence=[])]
    ds.AnatomicRegionSequence = [_coded(codes.SCT.Breast)]
    ds.OrganExposed = "BREAST"
    ds.BodyPartExamined = "BREAST"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.DetectorType = "DIRECT"
    ds.AcquisitionContextSequence = []
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"  # every syntax written is lossless


def _describe_pixels(ds, stored: np.ndarray, photometric: str, bits: int) -> None:
    """Image Pixel and DX Image attributes of the stored values: a log-exposure image whose
    denser tissue is brighter in MONOCHROME2 (stored inverted in MONOCHROME1), no rescaling."""
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"


def write_dicom(
    mammogram: SyntheticMammogram,
    path: PathLike,
    photometric: str = "MONOCHROME2",
    transfer_syntax: str = "explicit",
    bits_stored: Optional[int] = None,
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    sop_uid: Optional[str] = None,
    patient_id: str = "SYNTHETIC",
    spacing_tag: str = "PixelSpacing",
    window: bool = True,
) -> str:
    """Write a synthetic mammogram as a Digital Mammography X-Ray Image "For Presentation",
    atomically, with the attributes a vendor's file carries (dciodvfy finds no error in it):
    view and anatomy codes, detector and positioner, pixel intensity relationship, Presentation
    LUT Shape and a VOI window. The window spans the stored range, so the reader's VOI step
    (always taken on such files) gives back the stored values.

    Args:
        photometric: "MONOCHROME2", or "MONOCHROME1" (values stored inverted).
        transfer_syntax: a key of :data:`TRANSFER_SYNTAXES`.
        spacing_tag: "PixelSpacing": Pixel Spacing and the same Imager Pixel Spacing (as most
            vendors write); "ImagerPixelSpacing": that alone; "": no spacing (a file the
            standard does not allow, for tests of the reader's fallback).
        window: False leaves the VOI window out (also not allowed; for tests).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    if spacing_tag not in ("PixelSpacing", "ImagerPixelSpacing", ""):
        raise ValueError(f"spacing_tag must be PixelSpacing, ImagerPixelSpacing or '', got {spacing_tag!r}")
    bits = int(bits_stored or max(8, int(mammogram.pixels.max()).bit_length()))
    stored = mammogram.pixels.astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (2**bits - 1 - stored).astype(np.uint16)
    elif photometric != "MONOCHROME2":
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MAMMO_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid or generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Phantom"
    # The patient / study attributes the MG IOD requires (type 2: present, may be empty).
    ds.PatientBirthDate, ds.PatientSex = "", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "MammoPatch synthetic"
    _describe_mammogram(ds, mammogram)
    _describe_pixels(ds, stored, photometric, bits)
    spacing = [f"{mammogram.spacing_mm:.4f}", f"{mammogram.spacing_mm:.4f}"]
    if spacing_tag:
        ds.ImagerPixelSpacing = spacing
    if spacing_tag == "PixelSpacing":
        ds.PixelSpacing = spacing
    if window:
        # Linear window over the whole stored range: the identity on stored values.
        ds.WindowCenter = int(2 ** (bits - 1))
        ds.WindowWidth = int(2**bits)
    ds.PixelData = stored.tobytes()
    if transfer_syntax != "explicit":
        ds.compress(UID(TRANSFER_SYNTAXES[transfer_syntax]), stored)
    with atomic_path(path) as tmp:
        save_dicom(ds, tmp)
    return os.fspath(path)


VINDR_FINDING_COLUMNS = list(VinDrSchema.FINDING_COLUMNS)
VINDR_BREAST_COLUMNS = list(VinDrSchema.BREAST_COLUMNS)


def make_vindr_dataset(
    root: PathLike,
    n_studies: int = 4,
    shape: Tuple[int, int] = (512, 416),
    spacing_mm: float = 0.2,
    abnormal_fraction: float = 0.5,
    test_fraction: float = 0.25,
    seed: int = 0,
    photometric: str = "MONOCHROME2",
) -> Path:
    """Write a small synthetic data set in the VinDr-Mammo v1.0.0 layout and return its root.

    Layout: ``images/<study_id>/<image_id>.dicom``, ``finding_annotations.csv``,
    ``breast-level_annotations.csv``. Each study is one woman with four views (L/R x CC/MLO);
    abnormal studies carry findings on one breast (both views), the rest are 'No Finding'.
    """
    from pydicom.uid import generate_uid

    root = Path(root)
    rng = np.random.default_rng(seed)
    kinds = list(FINDING_KINDS)
    finding_rows: List[Dict[str, object]] = []
    breast_rows: List[Dict[str, object]] = []
    n_test = max(1, int(round(n_studies * test_fraction))) if n_studies > 1 else 0
    for s in range(n_studies):
        study_id = f"{rng.integers(16**8):08x}{s:024x}"
        split = "test" if s >= n_studies - n_test else "training"
        abnormal_side = rng.choice(["L", "R"]) if rng.random() < abnormal_fraction else None
        study_kinds = list(rng.choice(kinds, size=int(rng.integers(1, 3)), replace=False)) if abnormal_side else []
        series_id = f"{rng.integers(16**8):08x}{s:024x}"
        study_uid, series_uid = generate_uid(), generate_uid()
        for side in ("L", "R"):
            for view in ("CC", "MLO"):
                image_id = f"{rng.integers(16**12):012x}{s:04x}{side}{view}".lower()
                drawn_kinds = study_kinds if side == abnormal_side else []
                mammo = synthesize_mammogram(shape, spacing_mm, side, view, drawn_kinds, seed=int(rng.integers(2**31)))
                write_dicom(mammo, root / "images" / study_id / f"{image_id}.dicom", photometric=photometric,
                            study_uid=study_uid, series_uid=series_uid, patient_id=f"P{s:04d}")
                birads = "BI-RADS 4" if drawn_kinds else "BI-RADS 1"
                common = {"study_id": study_id, "series_id": series_id, "image_id": image_id, "laterality": side,
                          "view_position": view, "height": shape[0], "width": shape[1], "breast_birads": birads,
                          "breast_density": "DENSITY C"}
                breast_rows.append({**common, "split": split})
                if not mammo.findings:
                    finding_rows.append({**common, "finding_categories": "['No Finding']", "finding_birads": "",
                                         "xmin": "", "ymin": "", "xmax": "", "ymax": "", "split": split})
                for finding in mammo.findings:
                    x0, y0, x1, y1 = finding.box
                    finding_rows.append({**common, "finding_categories": str([finding.category]),
                                         "finding_birads": "BI-RADS 4", "xmin": f"{x0:.2f}", "ymin": f"{y0:.2f}",
                                         "xmax": f"{x1:.2f}", "ymax": f"{y1:.2f}", "split": split})
    _write_csv(root / "finding_annotations.csv", VINDR_FINDING_COLUMNS, finding_rows)
    _write_csv(root / "breast-level_annotations.csv", VINDR_BREAST_COLUMNS, breast_rows)
    return root


def _write_csv(path: Path, columns: List[str], rows: List[Dict[str, object]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
