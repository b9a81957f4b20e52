"""Reading mammograms into arrays with their geometry, and writing results back atomically."""

from .atomic import atomic_path
from .image import ImageGeometry, MammogramImage
from .readers import SUPPORTED_EXTENSIONS, is_dicom_file, read_mammogram
from .writers import write_png, write_volume

__all__ = [
    "atomic_path",
    "MammogramImage",
    "ImageGeometry",
    "read_mammogram",
    "is_dicom_file",
    "SUPPORTED_EXTENSIONS",
    "write_volume",
    "write_png",
]
