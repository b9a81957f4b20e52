"""An unlabelled folder (or list of files and globs) of mammograms, for prediction."""

from __future__ import annotations

from typing import List

from ..io.discovery import collect_images
from .records import ImageRecord


def read_folder(inputs, recursive: bool = True) -> List[ImageRecord]:
    """One unlabelled record per image; the file stem stands for the patient."""
    return [ImageRecord(path=p, image_id=p.stem, patient_id=p.stem) for p in collect_images(inputs, recursive)]
