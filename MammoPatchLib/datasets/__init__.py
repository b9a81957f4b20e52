"""Data set readers: each yields ImageRecords with boxes in pixel coordinates."""

from ..io.discovery import collect_images
from .folder import read_folder
from .mias import MIAS_TO_VINDR, mias_patient_id, read_mias
from .records import Finding, ImageRecord
from .sources import load_records
from .splits import apply_split_file, group_by_split, read_split_file, split_by_patient
from .vindr import read_vindr

__all__ = ["Finding", "ImageRecord", "read_vindr", "read_mias", "read_folder", "collect_images",
           "split_by_patient", "group_by_split", "apply_split_file", "read_split_file", "load_records", "MIAS_TO_VINDR", "mias_patient_id"]
