"""Reading mammograms into arrays with their geometry, and writing results back atomically."""

from .atomic import atomic_path
from .image import MammogramImage, ImageGeometry
from .readers import read_mammogram, is_dicom_file, SUPPORTED_EXTENSIONS
from .writers import write_volume, write_png

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
