"""The in-memory mammogram: pixels plus everything needed to put results back in place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

DEFAULT_SPACING_MM = 0.1


@dataclass(frozen=True)
class ImageGeometry:
    """Physical geometry of a single-slice image in ITK/LPS conventions.

    ``spacing`` and ``origin`` are (x, y, z) = (column, row, slice) in mm; ``direction`` is a
    row-major 3 x 3 matrix. Numpy arrays are indexed [row, column], i.e. [y, x].
    """

    spacing: Tuple[float, float, float] = (DEFAULT_SPACING_MM, DEFAULT_SPACING_MM, 1.0)
    origin: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def row_spacing(self) -> float:
        return float(self.spacing[1])

    @property
    def col_spacing(self) -> float:
        return float(self.spacing[0])

    @property
    def mean_spacing(self) -> float:
        """In-plane spacing used where one number is needed (square pixels are the norm)."""
        return 0.5 * (self.row_spacing + self.col_spacing)

    def ijk_to_ras(self) -> np.ndarray:
        """4 x 4 matrix from (column, row, slice) indices to RAS mm (what Slicer's IJKToRAS holds)."""
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = direction @ np.diag(self.spacing)
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

    @classmethod
    def from_ijk_to_ras(cls, matrix: np.ndarray) -> "ImageGeometry":
        """Inverse of :meth:`ijk_to_ras`; used by the Slicer module to read a volume node."""
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(matrix, dtype=float)
        columns = lps[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        direction = columns / np.where(spacing == 0, 1.0, spacing)
        return cls(
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in lps[:3, 3]),
            direction=tuple(float(d) for d in direction.reshape(-1)),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}


@dataclass
class MammogramImage:
    """A mammogram as float32 pixels (high = dense/bright) plus metadata.

    Attributes:
        pixels: 2-D float32 array [rows, columns], modality (and VOI) values, MONOCHROME1
            already inverted so that higher means denser.
        geometry: physical geometry, for writing heatmaps back in the same place.
        path: the file it came from ("" for arrays).
        laterality: "L", "R" or "" when unknown.
        view_position: "CC", "MLO", ... or "".
        photometric_interpretation: as stored in the source (before inversion).
        bits_stored: bit depth of the stored values (8 for 8-bit PNG/PGM).
        spacing_source: where the pixel spacing came from: "PixelSpacing",
            "ImagerPixelSpacing", "file header", "given" or "default" (unknown: the file states
            none, or none that can be used; see :mod:`.spacing`).
        spacing_problem: why a spacing the file states was not used ("" when it states none
            or its spacing is used); the warning quotes it.
        uids: DICOM identifiers (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, PatientID).
        extra: other format-specific facts (transfer syntax, VOI choice, ...).
        warnings: doubts about the input found while reading it (non-mammography modality,
            unusable orientation, content that does not look like a mammogram); they are
            copied into every output.
    """

    pixels: np.ndarray
    geometry: ImageGeometry = field(default_factory=ImageGeometry)
    path: str = ""
    laterality: str = ""
    view_position: str = ""
    photometric_interpretation: str = "MONOCHROME2"
    bits_stored: int = 16
    spacing_source: str = "default"
    spacing_problem: str = ""
    uids: Dict[str, str] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> float:
        return self.geometry.mean_spacing

    def metadata(self) -> Dict[str, Any]:
        """JSON-ready description of the source, copied into every output's metadata."""
        return {
            "path": self.path,
            "shape": list(self.shape),
            "laterality": self.laterality,
            "view_position": self.view_position,
            "photometric_interpretation": self.photometric_interpretation,
            "bits_stored": self.bits_stored,
            "pixel_spacing_mm": [self.geometry.row_spacing, self.geometry.col_spacing],
            "spacing_source": self.spacing_source,
            "geometry": self.geometry.to_dict(),
            "uids": dict(self.uids),
            "warnings": list(self.warnings),
            **{k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool, list))},
        }
