"""The ten VinDr-Mammo finding classes, in the order of the poster (method.md).

The order is the order of the network's outputs and of the label map's values
(label k = FINDING_CLASSES[k - 1]); 'No Finding' is the absence of every class.
"""

from __future__ import annotations

from typing import List, Sequence

FINDING_CLASSES: List[str] = [
    "Mass",
    "Suspicious Calcification",
    "Focal Asymmetry",
    "Architectural Distortion",
    "Asymmetry",
    "Suspicious Lymph Node",
    "Skin Thickening",
    "Nipple Retraction",
    "Global Asymmetry",
    "Skin Retraction",
]

NO_FINDING = "No Finding"


def class_index(name: str, classes: Sequence[str] = FINDING_CLASSES) -> int:
    """Index of ``name`` in ``classes`` (case-insensitive); ValueError names the choices."""
    lowered = [c.lower() for c in classes]
    try:
        return lowered.index(name.strip().lower())
    except ValueError:
        raise ValueError(f"unknown finding class {name!r}; expected one of {list(classes)}") from None
