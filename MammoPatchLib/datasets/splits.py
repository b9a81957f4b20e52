"""Splits by patient: two images of one woman never fall on both sides."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .records import ImageRecord


def split_by_patient(records: Sequence[ImageRecord], validation_fraction: float = 0.2, seed: int = 0,
                     overwrite: bool = False) -> List[ImageRecord]:
    """Assign "training" / "validation" by patient, stratified by normal vs abnormal patients.

    Records that already carry a split (VinDr's own) keep it unless ``overwrite``; VinDr's
    "training" patients are then divided into training and validation.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    patients: Dict[str, List[ImageRecord]] = {}
    for record in records:
        if overwrite or record.split in ("", "training", "train"):
            patients.setdefault(record.patient_id, []).append(record)
    abnormal = sorted(p for p, rs in patients.items() if any(not r.is_normal for r in rs))
    normal = sorted(p for p in patients if p not in set(abnormal))
    for group in (abnormal, normal):
        order = list(rng.permutation(len(group)))
        n_val = int(round(len(group) * validation_fraction))
        for rank, idx in enumerate(order):
            for record in patients[group[idx]]:
                record.split = "validation" if rank < n_val else "training"
    return list(records)
