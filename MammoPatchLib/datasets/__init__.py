"""Data set readers: each yields ImageRecords with boxes in pixel coordinates."""

from .folder import collect_images, read_folder
from .mias import MIAS_TO_VINDR, read_mias, mias_patient_id
from .records import Finding, ImageRecord
from .splits import split_by_patient
from .vindr import read_vindr

__all__ = ["Finding", "ImageRecord", "read_vindr", "read_mias", "read_folder", "collect_images",
           "split_by_patient", "MIAS_TO_VINDR", "mias_patient_id"]
