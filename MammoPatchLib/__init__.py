"""MammoPatchLib: sliding-patch detection of mammographic findings.

A pure-Python library (no Slicer, Qt or VTK imports) that reproduces the method of
Mellado et al. (2023), "A Deep Learning Classifier Using Sliding Patches for Detection of
Mammographical Findings": mammogram I/O, the poster's preprocessing as MONAI transforms,
data set readers, a synthetic mammogram generator, and (in later modules) the patch
classifier and its sliding-window heatmaps.
"""

__version__ = "0.2.0"

from .errors import (
    AnnotationError,
    ImageReadError,
    InvalidImageError,
    MammoPatchError,
    UnsupportedImageError,
)
from .vocabulary import FINDING_CLASSES, NO_FINDING


def predict(*args, **kwargs):
    """See :func:`MammoPatchLib.api.predict` (imported lazily: torch loads on first use)."""
    from .api import predict as _predict

    return _predict(*args, **kwargs)


__all__ = [
    "__version__",
    "predict",
    "FINDING_CLASSES",
    "NO_FINDING",
    "MammoPatchError",
    "ImageReadError",
    "UnsupportedImageError",
    "InvalidImageError",
    "AnnotationError",
]
