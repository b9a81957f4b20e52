"""Which images ``evaluate`` and ``calibrate`` may use: never those of a woman who trained the model.

A model file's :class:`~MammoPatchLib.model_file.Provenance` names the women each ensemble
member trained on and the ids of its training images. Figures on those women would measure
memory, not detection, so they are refused with one line that points at the figures that do
hold for them: the pooled out-of-fold figures of the cross-validation that made the model. A
model without provenance is evaluated on what it is given, and every report says so first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence, Tuple

from ..datasets import ImageRecord, apply_split_file, group_by_split, load_records
from ..errors import MammoPatchError
from ..model_file import ModelInfo
from .crossval_figures import REPORT_MD
from .model_card import BUNDLED_REPORT

#: The first line of every report on a model whose training women are not recorded.
UNKNOWN_PROVENANCE = ("provenance unknown: the model file does not record which women trained it, so these figures "
                      "may include its own training women")


def select_evaluation_records(data: str, split: str = "validation", split_file=None) -> Tuple[List[ImageRecord], str]:
    """The records to evaluate and the split they are: every record of ``data`` (split ""),
    or with ``split_file`` (CSV: image_id, split) those it puts in ``split``. Which of them
    trained the model is :func:`refuse_training_women`'s question, not a split's.

    Raises:
        MammoPatchError: the split file is missing or puts no image in ``split``."""
    records, _ = load_records(data, Path("."), 0)
    if not split_file:
        return records, ""
    if not Path(split_file).is_file():
        raise MammoPatchError("no such split file", split_file)
    chosen = group_by_split(apply_split_file(records, split_file)).get(split, [])
    if not chosen:
        counts = {k: len(v) for k, v in group_by_split(records).items()}
        raise MammoPatchError(f"no images in the {split!r} split (have: {counts})", split_file)
    return chosen, split


def recipe_field(info: ModelInfo, name: str, default: Any) -> Any:
    """A field of the recipe that made the model (its provenance), else ``default``: e.g. the
    patch sampling the poster's table draws with, or the operating point's false-positive rate."""
    recipe = info.provenance.recipe if info.provenance is not None else {}
    return recipe.get(name, default)


def refuse_training_women(records: Sequence[ImageRecord], info: ModelInfo, model_path, what: str) -> None:
    """Raise when any record is of a woman who trained the model (any ensemble member), or is
    one of its training images.

    Raises:
        MammoPatchError: one line: how many images and women, and where their honest
            (out-of-fold) figures are."""
    made = info.provenance
    if made is None:
        return
    women, images = made.women, set(made.images)
    trained = [r for r in records if r.patient_id in women or r.image_id in images]
    if not trained:
        return
    raise MammoPatchError(
        f"refused to {what}: {len(trained)} of the {len(records)} images ({len({r.patient_id for r in trained})} "
        f"women) are of women who trained this model (any of its {len(made.members)} member(s)); their honest "
        f"figures are the out-of-fold ones of `mammopatch crossval` of its recipe ({REPORT_MD} of that run's --out "
        f"folder; for the bundled model {BUNDLED_REPORT})", model_path)
