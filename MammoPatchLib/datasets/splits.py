"""Splits by patient: two images of one woman never fall on two sides.

Women are stratified by their first finding class (or "normal"), so every class present in
the data set reaches the validation and test women where the counts allow.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .records import ImageRecord


def _stratum(records: Sequence[ImageRecord]) -> str:
    classes = sorted({c for r in records for c in r.categories})
    return classes[0] if classes else "normal"


def _allocate(sizes: Sequence[int], fraction: float, rng: np.random.Generator,
              already: Sequence[int] = ()) -> List[int]:
    """Women per stratum for a split: ``fraction`` of each stratum, rounded so that the total is
    ``round(fraction x all women)`` (largest remainders first, ties at random), never taking a
    stratum's last woman from training."""
    already = list(already) or [0] * len(sizes)
    exact = [n * fraction for n in sizes]
    counts = [int(np.floor(e)) for e in exact]
    target = int(round(sum(sizes) * fraction))
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), rng.uniform()))
    for i in order:
        if sum(counts) >= target:
            break
        if counts[i] + already[i] < sizes[i] - (1 if sizes[i] > 1 else 0):
            counts[i] += 1
    return counts


def split_by_patient(records: Sequence[ImageRecord], validation_fraction: float = 0.2, seed: int = 0,
                     overwrite: bool = False, test_fraction: float = 0.0) -> List[ImageRecord]:
    """Assign "training" / "validation" / "test" by patient, stratified by finding class.

    Records that already carry a split (VinDr's own) keep it unless ``overwrite``; the
    patients of VinDr's "training" split are divided by the fractions.
    """
    if not (0.0 <= validation_fraction < 1.0 and 0.0 <= test_fraction < 1.0
            and validation_fraction + test_fraction < 1.0):
        raise ValueError(f"need fractions in [0, 1) summing below 1, got validation {validation_fraction}, "
                         f"test {test_fraction}")
    rng = np.random.default_rng(seed)
    patients: Dict[str, List[ImageRecord]] = {}
    for record in records:
        if overwrite or record.split in ("", "training", "train"):
            patients.setdefault(record.patient_id, []).append(record)
    strata: Dict[str, List[str]] = {}
    for patient in sorted(patients):
        strata.setdefault(_stratum(patients[patient]), []).append(patient)
    names = sorted(strata)
    sizes = [len(strata[n]) for n in names]
    n_test = _allocate(sizes, test_fraction, rng)
    n_val = _allocate(sizes, validation_fraction, rng, already=n_test)
    for name, t, v in zip(names, n_test, n_val):
        group = strata[name]
        for rank, idx in enumerate(rng.permutation(len(group))):
            split = "test" if rank < t else "validation" if rank < t + v else "training"
            for record in patients[group[idx]]:
                record.split = split
    return list(records)


def group_by_split(records: Sequence[ImageRecord]) -> Dict[str, List[ImageRecord]]:
    """{"training": [...], "validation": [...], "test": [...]} (other split names count as test)."""
    groups: Dict[str, List[ImageRecord]] = {"training": [], "validation": [], "test": []}
    for record in records:
        groups[record.split if record.split in ("training", "validation") else "test"].append(record)
    return groups


def read_split_file(path) -> Dict[str, str]:
    """{image_id: split} from a CSV with columns image_id and split (what training writes as
    ``split.csv``)."""
    from pathlib import Path

    from .records import read_csv_rows

    rows = read_csv_rows(Path(path), ["image_id", "split"])
    return {row["image_id"]: row["split"] for row in rows}


def apply_split_file(records: Sequence[ImageRecord], path) -> List[ImageRecord]:
    """Give records the split a file assigns; records the file does not list are dropped."""
    splits = read_split_file(path)
    kept = []
    for record in records:
        if record.image_id in splits:
            record.split = splits[record.image_id]
            kept.append(record)
    return kept


def folds_by_patient(records: Sequence[ImageRecord], folds: int = 5, seed: int = 0) -> Dict[str, int]:
    """{patient_id: fold} for ``folds``-fold cross-validation: women, never images, are
    assigned; within each stratum (first finding class, or "normal") they are dealt round the
    folds in a random order from a rotating start, so every class reaches every fold where the
    counts allow and the folds differ in size by at most about one woman per stratum."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    patients: Dict[str, List[ImageRecord]] = {}
    for record in records:
        patients.setdefault(record.patient_id, []).append(record)
    if len(patients) < folds:
        raise ValueError(f"{len(patients)} {'woman' if len(patients) == 1 else 'women'} cannot fill {folds} folds; "
                         "folds must be 2 to the number of women")
    strata: Dict[str, List[str]] = {}
    for patient in sorted(patients):
        strata.setdefault(_stratum(patients[patient]), []).append(patient)
    rng = np.random.default_rng(seed)
    assignment: Dict[str, int] = {}
    offset = 0
    sizes = [0] * folds
    for name in sorted(strata, key=lambda n: (len(strata[n]), n)):
        group = [strata[name][i] for i in rng.permutation(len(strata[name]))]
        order = sorted(range(folds), key=lambda f: (sizes[f], (f - offset) % folds))
        for rank, patient in enumerate(group):
            fold = order[rank % folds]
            assignment[patient] = fold
            sizes[fold] += 1
        offset += len(group)
    return assignment


FOLD_COLUMNS = ["image_id", "patient_id", "fold"]


def write_fold_file(records: Sequence[ImageRecord], assignment: Dict[str, int], path) -> None:
    """The fold of every image, as a CSV that later runs reuse (``read_fold_file``)."""
    import csv
    from pathlib import Path

    from ..io.atomic import atomic_path

    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(FOLD_COLUMNS)
        for record in sorted(records, key=lambda r: r.image_id):
            writer.writerow([record.image_id, record.patient_id, assignment[record.patient_id]])


def read_fold_file(path) -> Dict[str, int]:
    """{image_id: fold} from a fold file; refuses a file that splits a woman across folds."""
    from pathlib import Path

    from ..errors import AnnotationError
    from .records import read_csv_rows

    rows = read_csv_rows(Path(path), FOLD_COLUMNS)
    by_patient: Dict[str, int] = {}
    out: Dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        try:
            fold = int(row["fold"])
        except ValueError:
            raise AnnotationError(f"line {line}: fold {row['fold']!r} is not a whole number", path) from None
        if by_patient.setdefault(row["patient_id"], fold) != fold:
            raise AnnotationError(f"line {line}: woman {row['patient_id']} is in two folds", path)
        out[row["image_id"]] = fold
    return out
