"""The words every part of MammoPatch shares: finding classes, inference and blend modes, the
output choices, a batch row's status, the box type, the VinDr-Mammo table schema and the path
type.

Pure Python (no torch, numpy or MONAI) so the command line starts fast and the Slicer module
can build its GUI from it before any dependency is installed. Enums follow
``monai.utils.enums.StrEnum``: members are strings, so ``InferenceMode.FAST == "fast"``.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from typing import List, NamedTuple, Sequence, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]


class StrEnum(str, Enum):
    """An Enum whose members are their string values (as in ``monai.utils.enums``)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> List[str]:
        return [member.value for member in cls]


class FindingClass(StrEnum):
    """The ten VinDr-Mammo finding classes, in the order of the poster (method.md). The order
    is the order of the network's outputs and of the label map's values (label k = the k-th
    class); 'No Finding' is the absence of every class."""

    MASS = "Mass"
    SUSPICIOUS_CALCIFICATION = "Suspicious Calcification"
    FOCAL_ASYMMETRY = "Focal Asymmetry"
    ARCHITECTURAL_DISTORTION = "Architectural Distortion"
    ASYMMETRY = "Asymmetry"
    SUSPICIOUS_LYMPH_NODE = "Suspicious Lymph Node"
    SKIN_THICKENING = "Skin Thickening"
    NIPPLE_RETRACTION = "Nipple Retraction"
    GLOBAL_ASYMMETRY = "Global Asymmetry"
    SKIN_RETRACTION = "Skin Retraction"


FINDING_CLASSES: List[str] = FindingClass.values()
NO_FINDING = "No Finding"


#: Coded concepts of the finding classes for DICOM outputs (SEG segment types, SR finding
#: types): SNOMED CT codes from DICOM's mammography context groups (CID 6014-6016, via
#: pydicom's code dictionary); Global Asymmetry has none there and uses a private scheme.
FINDING_CODES = {
    "Mass": ("4147007", "SCT", "Mass"),
    "Suspicious Calcification": ("129769006", "SCT", "Calcification Cluster"),
    "Focal Asymmetry": ("129789007", "SCT", "Focal asymmetric breast tissue"),
    "Architectural Distortion": ("129792006", "SCT", "Architectural distortion of breast"),
    "Asymmetry": ("129790003", "SCT", "Asymmetric breast tissue"),
    "Suspicious Lymph Node": ("59441001", "SCT", "Lymph Node"),
    "Skin Thickening": ("129797000", "SCT", "Skin thickening of breast"),
    "Nipple Retraction": ("271955004", "SCT", "Nipple retraction"),
    "Global Asymmetry": ("GLOBAL-ASYMMETRY", "99MAMMOPATCH", "Global asymmetry"),
    "Skin Retraction": ("129796009", "SCT", "Skin retraction of breast"),
}
#: The category of every finding class (a SEG segment's SegmentedPropertyCategory), and the
#: breast with its side (its AnatomicRegion and modifier), as (value, scheme, meaning).
FINDING_CATEGORY_CODE = ("49755003", "SCT", "Morphologically Abnormal Structure")
BREAST_CODE = ("76752008", "SCT", "Breast")
SIDE_CODES = {"R": ("24028007", "SCT", "Right"), "L": ("7771000", "SCT", "Left")}


def class_slug(name: str) -> str:
    """'Suspicious Calcification' -> 'suspicious_calcification': a class's part of its output
    file names (``heatmap_<slug>.nrrd``); model files are checked for classes sharing one."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def heatmap_stem(name: str) -> str:
    """The file name, without its extension, of class ``name``'s heatmap."""
    return f"heatmap_{class_slug(name)}"


def class_index(name: str, classes: Sequence[str] = FINDING_CLASSES) -> int:
    """Index of ``name`` in ``classes`` (case-insensitive); ValueError names the choices."""
    lowered = [c.lower() for c in classes]
    try:
        return lowered.index(name.strip().lower())
    except ValueError:
        raise ValueError(f"unknown finding class {name!r}; expected one of {list(classes)}") from None


class InferenceMode(StrEnum):
    """How the window grid is evaluated: "fast" (one dense pass over the image; the default,
    tied to exact mode by the consistency term) or "exact" (window by window on MONAI's
    SlidingWindowInferer, the poster's inference)."""

    FAST = "fast"
    EXACT = "exact"


MODES: Tuple[str, ...] = tuple(InferenceMode.values())
DEFAULT_MODE = InferenceMode.FAST.value


class BlendMode(StrEnum):
    """How overlapping windows are averaged into a heatmap (MONAI's importance maps)."""

    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


BLEND_MODES: Tuple[str, ...] = tuple(BlendMode.values())


class HeatmapChoice(StrEnum):
    """Which per-class heatmap files a prediction writes: none, the reported classes
    ("selected", sized for batch runs) or every class."""

    NONE = "none"
    SELECTED = "selected"
    ALL = "all"


HEATMAP_CHOICES: Tuple[str, ...] = tuple(HeatmapChoice.values())


class HeatmapDtype(StrEnum):
    """How heatmap values are stored: float32 probabilities, or uint8 (probability x 255,
    a quarter of the size; NRRD / NIfTI writers have no float16)."""

    FLOAT32 = "float32"
    UINT8 = "uint8"


HEATMAP_DTYPES: Tuple[str, ...] = tuple(HeatmapDtype.values())

#: Volume formats of heatmaps and label maps, and the file extension each is written with.
VOLUME_FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}


class Status(StrEnum):
    """What became of one input of a batch (the ``status`` column of ``summary.csv``)."""

    OK = "ok"
    FAILED = "failed"
    DONE_EARLIER = "done earlier"  # skipped by --resume: its outputs exist from an earlier run


class Box(NamedTuple):
    """An axis-aligned box in pixels: (xmin, ymin, xmax, ymax), x = column, pixel edges.

    A tuple, so it indexes and serialises like one; the geometry every module needs is here.
    """

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def width(self) -> float:
        return max(0.0, self.xmax - self.xmin)

    @property
    def height(self) -> float:
        return max(0.0, self.ymax - self.ymin)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def centre(self) -> Tuple[float, float]:
        """(x, y) centre."""
        return (0.5 * (self.xmin + self.xmax), 0.5 * (self.ymin + self.ymax))

    def intersection(self, other: Sequence[float]) -> float:
        """Area of the overlap with another (xmin, ymin, xmax, ymax) box."""
        return max(0.0, min(self.xmax, other[2]) - max(self.xmin, other[0])) * \
            max(0.0, min(self.ymax, other[3]) - max(self.ymin, other[1]))

    def iou(self, other: Sequence[float]) -> float:
        """Intersection over union (0 for empty boxes)."""
        inter = self.intersection(other)
        union = self.area + Box(*other).area - inter
        return inter / union if union > 0 else 0.0

    def contains(self, x: float, y: float) -> bool:
        return self.xmin <= x <= self.xmax and self.ymin <= y <= self.ymax


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    return Box(*a).iou(b)


class VinDrSchema:
    """The VinDr-Mammo v1.0.0 layout: ``images/<study_id>/<image_id>.dicom`` and two tables."""

    FINDING_TABLE = "finding_annotations.csv"
    BREAST_TABLE = "breast-level_annotations.csv"
    FINDING_COLUMNS: Tuple[str, ...] = (
        "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
        "breast_birads", "breast_density", "finding_categories", "finding_birads",
        "xmin", "ymin", "xmax", "ymax", "split")
    BREAST_COLUMNS: Tuple[str, ...] = (
        "study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
        "breast_birads", "breast_density", "split")
    #: The breast table columns the reader needs (the rest are carried along when present).
    BREAST_COLUMNS_READ: Tuple[str, ...] = ("study_id", "image_id", "laterality", "view_position", "height",
                                            "width", "split")

    @staticmethod
    def image_path(root: PathLike, study_id: str, image_id: str) -> str:
        return os.path.join(os.fspath(root), "images", study_id, f"{image_id}.dicom")
