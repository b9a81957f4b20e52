"""``mammopatch train``: data set -> split by patient -> prepared images -> Trainer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..datasets import ImageRecord, read_mias, read_vindr, split_by_patient
from ..errors import MammoPatchError
from .config import TrainConfig
from .data import prepare_images
from .trainer import Trainer

logger = logging.getLogger(__name__)


def load_records(data: str, work_dir: Optional[Path] = None, seed: int = 0) -> Tuple[List[ImageRecord], str]:
    """Records of a VinDr-layout folder, a mini-MIAS folder, or ``synthetic:N`` (a generated
    VinDr-layout set of N women written under ``work_dir``). Returns (records, description)."""
    if data.startswith("synthetic:"):
        from ..synthetic import make_vindr_dataset

        n = int(data.split(":", 1)[1])
        root = make_vindr_dataset((work_dir or Path(".")) / "synthetic-data", n_studies=n, seed=seed)
        return read_vindr(root), f"synthetic VinDr-layout set of {n} women"
    root = Path(data)
    if (root / "finding_annotations.csv").exists():
        return read_vindr(root), f"VinDr-Mammo layout at {root.name}"
    if (root / "annotations.csv").exists():
        return read_mias(root), "mini-MIAS (MIAS MiniMammographic Database; research use only)"
    raise MammoPatchError("not a data set: expected finding_annotations.csv (VinDr-Mammo), annotations.csv "
                          "(mini-MIAS) or synthetic:N", root)


def split_records(records: List[ImageRecord], config: TrainConfig) -> Dict[str, List[ImageRecord]]:
    """training / validation by patient (VinDr's own test split is kept out of both)."""
    split_by_patient(records, config.validation_fraction, seed=config.seed)
    groups: Dict[str, List[ImageRecord]] = {"training": [], "validation": [], "test": []}
    for record in records:
        groups.setdefault(record.split if record.split in groups else "test", []).append(record)
    return groups


def train(config: TrainConfig, data: str, out_dir, resume: bool = False, progress: bool = True,
          cache_dir: Optional[Path] = None) -> Dict[str, object]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, description = load_records(data, out, config.seed)
    groups = split_records(records, config)
    (out / "split.csv").write_text("image_id,patient_id,split\n" + "".join(
        f"{r.image_id},{r.patient_id},{r.split}\n" for r in records))
    logger.info("images: %d training, %d validation, %d test (split by patient)", len(groups["training"]),
                len(groups["validation"]), len(groups["test"]))
    preprocess = config.preprocess_config()
    train_images, errors = prepare_images(groups["training"], preprocess, config.classes, cache_dir, progress)
    val_images, val_errors = prepare_images(groups["validation"], preprocess, config.classes, cache_dir, progress)
    for error in errors + val_errors:
        logger.warning("skipped: %s", error)
    description = (f"{config.backbone} patch classifier trained on {description}: {len(train_images)} training / "
                   f"{len(val_images)} validation images, split by woman")
    state = Trainer(config, out, progress).fit(train_images, val_images, resume=resume, data_description=description)
    return {"state": state, "skipped": errors + val_errors, "out": str(out)}
