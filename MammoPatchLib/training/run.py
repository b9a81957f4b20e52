"""``mammopatch train``: data set -> split by patient -> prepared images -> Trainer."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..datasets import ImageRecord, apply_split_file, group_by_split, load_records, split_by_patient
from ..model_file import Provenance, identity_sha256
from ..io import read_mammogram
from ..patches import prepare_images
from .config import TrainConfig
from .trainer import Trainer

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.csv"


def train_provenance(config: TrainConfig, data: str, image_ids: Sequence[str], records: Sequence[ImageRecord],
                     val_records: Sequence[ImageRecord], split_file: Path) -> Provenance:
    """How a ``mammopatch train`` model is made: its config, the images it trained on (their
    women train its one member), the split file, and the validation women that chose its
    epoch and thresholds."""
    ids = set(image_ids)
    images = sorted(ids)
    return Provenance(recipe=config.to_dict(), recipe_name="train-config", data=data, images=images,
                      images_sha256=identity_sha256(images), fold_file=split_file.name,
                      fold_file_sha256=hashlib.sha256(split_file.read_bytes()).hexdigest(),
                      members=[sorted({r.patient_id for r in records if r.image_id in ids})],
                      selected_on=sorted({r.patient_id for r in val_records}))


def assign_splits(records, config: TrainConfig):
    """training / validation / test women: from the config's split file, else its fractions
    and seed (stratified, by woman)."""
    if config.split_file:
        records[:] = apply_split_file(records, config.split_file)
    else:
        split_by_patient(records, config.validation_fraction, seed=config.seed, test_fraction=config.test_fraction)
    return group_by_split(records)


def train(config: TrainConfig, data: str, out_dir, resume: bool = False, progress: bool = True,
          cache_dir: Optional[Path] = None, workers: int = 0) -> Dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, description = load_records(data, out, config.seed)
    groups = assign_splits(records, config)
    (out / SPLIT_FILE).write_text("image_id,patient_id,split\n" + "".join(
        f"{r.image_id},{r.patient_id},{r.split}\n" for r in records))
    logger.info("images: %d training, %d validation, %d test (split by woman)", len(groups["training"]),
                len(groups["validation"]), len(groups["test"]))
    preprocess = config.preprocess_config()
    train_images, errors = prepare_images(groups["training"], preprocess, config.classes, cache_dir, progress, workers)
    val_images, val_errors = prepare_images(groups["validation"], preprocess, config.classes, cache_dir, progress,
                                            workers)
    good_ids = {img.image_id for img in val_images}
    val_records = [r for r in groups["validation"] if r.image_id in good_ids]
    val_mammograms = [read_mammogram(r.path, spacing_mm=r.spacing_mm) for r in val_records] \
        if config.selection == "froc" else None
    provenance = train_provenance(config, description, [img.image_id for img in train_images], records,
                                  val_records, Path(config.split_file) if config.split_file else out / SPLIT_FILE)
    description = (f"{config.backbone} patch classifier trained on {description}: {len(train_images)} training / "
                   f"{len(val_images)} validation images, split by woman")
    state = Trainer(config, out, progress).fit(train_images, val_images, resume=resume, data_description=description,
                                               val_records=val_records, val_mammograms=val_mammograms,
                                               provenance=provenance)
    return {"state": state, "skipped": errors + val_errors, "out": str(out)}
