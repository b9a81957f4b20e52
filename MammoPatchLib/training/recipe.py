"""The one recipe type: how a model is trained, in one JSON file validated on load with
messages that name the bad field (``config_from_dict``).

A recipe states the head (the cell head, or the poster's window head), what trains
(:data:`TRAINS`: the head on cached frozen features; the head and the backbone's last
``tune_stages`` stages on cached features of the stage before them; the whole network), how
samples are drawn, the loss, optimiser, schedule, augmentation, seeds, ensemble and pixel
spacing. ``mammopatch train`` builds one model from a recipe and ``mammopatch crossval``
cross-validates recipes, both through the same trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import config_from_dict, config_to_dict, read_config_file
from ..errors import ConfigError
from ..networks import BACKBONES, DEFAULT_BACKBONE, HEAD_TYPES, has_tunable_last_stage
from ..transforms import PreprocessConfig
from .other_breast_features import OTHER_BREAST_INPUTS

#: How an image's abnormality score is read from its cell heatmaps (image-level AUC, and the
#: image-level view of a finding): the highest cell, or the mean of the ``image_top_k``
#: highest cells of the best class (less at the mercy of one noisy cell).
IMAGE_SCORES = ("max", "top-k")

#: What a recipe trains: "head" (the head on the frozen backbone's cached features),
#: "stages" (the head and the backbone's last ``tune_stages`` stages, on cached features of the
#: stage before them), "network" (the whole network end to end, from images).
TRAINS = ("head", "stages", "network")


@dataclass
class Recipe:
    """Parameters of a training run (and of its cross-validation).

    Attributes:
        name: the recipe's name in reports.
        trains: what trains (:data:`TRAINS`).
        tune_stages: with ``trains`` "stages", how many of the backbone's last stages tune
            (1: EfficientNet-Lite's head convolution; each more reaches one block group deeper,
            and the cached features are those before the first tuned stage).
        backbone, spacing_mm, preprocessing: the frozen backbone and the images it sees.
        classes: classes the head is trained on and reports (others are ignored in the loss).
        head: "cell" (a value per 32 px cell) or "window" (the poster's head: the mean of a
            window's 8 x 8 cells, one value per window, stitched; its targets are windows whose
            centre lies within ``radius_px`` of a lesion centre, 48 px in the poster's reading).
        neighbourhood: cells per side of the block a cell is scored from (odd).
        bottleneck: principal components of the features kept (the head's 1 x 1 bottleneck).
        hidden, dropout: the MLP's hidden units (0: a linear head) and dropout.
        radius_px, extent, ignore_px: cell targets (:mod:`.cell_targets`).
        epochs, learning_rate, weight_decay, batch_cells: optimisation (Adam).
        negatives_per_epoch: negative cells drawn per epoch (all positive cells are used).
        hard_negative_share: share of those drawn among the highest-scoring negatives, from
            ``hard_negative_after`` epochs on (0: uniform sampling only).
        flip_augment: train on the mirrored images too.
        flip_tta: average the image and its mirror at inference.
        image_score, image_top_k: how the image-level score is read (:data:`IMAGE_SCORES`).
        fp_per_image: false positives per image the operating thresholds allow per class.
        normal_with_finding: the largest share of normal images that may get a finding at the
            operating point: an image gate (the model's ``image_threshold``) is fitted on top of
            the class thresholds to keep to it (1.0: no gate). Needs ``image_score`` "max", the
            score the Predictor gates on.
        tail_epochs: with ``trains`` "stages", epochs that then fine-tune the tuned stages (a
            copy per head) with the head, from the cached features before them; 0 otherwise.
        tail_learning_rate: the tuned stages' learning rate in those epochs (the head's is
            ``learning_rate`` / 20 there).
        seeds: heads trained per fold from different seeds, their
            probabilities averaged: one head's figures move with its seed by about as much as
            most recipe changes do, and the average of a few is both a steadier measurement
            and a better model.
        seed: random seed (initialisation, sampling; the folds have their own).
        train_scales: scale augmentation: each training image is also learnt from at these
            multiples of ``spacing_mm`` (e.g. [0.8, 1.25]: features cached at 0.16 and 0.25 mm
            beside 0.2 mm), so the head sees each lesion at more than one size; held-out
            images and the model's own inference stay at ``spacing_mm`` (empty: none).
        synthetic_per_lesion: synthetic training images made per annotated lesion, each the
            lesion blended into a normal breast of another woman of its fold
            (:mod:`.lesion_synthesis`); they train only the other folds' heads (0: none).
        other_breast_input: how the head takes the woman's other breast of the same view,
            mirrored and aligned cell by cell (:mod:`.other_breast_features`): "none",
            "concat" (extra channels) or "difference" (own minus other). Training and
            cross-validation only: a model file cannot hold such a head yet.
    """

    name: str = "cell-head"
    trains: str = "head"
    tune_stages: int = 1
    backbone: str = DEFAULT_BACKBONE
    spacing_mm: float = 0.2
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    classes: List[str] = field(default_factory=lambda: ["Mass", "Suspicious Calcification",
                                                        "Architectural Distortion", "Asymmetry"])
    head: str = "cell"
    neighbourhood: int = 3
    bottleneck: int = 64
    hidden: int = 128
    dropout: float = 0.2
    radius_px: float = 32.0
    extent: float = 0.0
    ignore_px: float = 32.0
    epochs: int = 20
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    batch_cells: int = 256
    negatives_per_epoch: int = 8192
    hard_negative_share: float = 0.0
    hard_negative_after: int = 10
    flip_augment: bool = True
    flip_tta: bool = False
    image_score: str = "max"
    image_top_k: int = 4
    fp_per_image: float = 0.25
    normal_with_finding: float = 1.0
    tail_epochs: int = 0
    tail_learning_rate: float = 1e-4
    seeds: int = 1
    seed: int = 0
    train_scales: List[float] = field(default_factory=list)
    synthetic_per_lesion: int = 0
    other_breast_input: str = "none"

    def __post_init__(self) -> None:
        checks = [
            (self.backbone in BACKBONES, f"backbone must be one of {sorted(BACKBONES)}"),
            (self.spacing_mm > 0, "spacing_mm must be positive"),
            (bool(self.classes) and len(set(self.classes)) == len(self.classes), "classes must be unique, non-empty"),
            (self.head in HEAD_TYPES, f"head must be one of {HEAD_TYPES}"),
            (self.neighbourhood >= 1 and self.neighbourhood % 2 == 1, "neighbourhood must be an odd number >= 1"),
            (self.bottleneck >= 1 and self.hidden >= 0, "bottleneck must be >= 1, hidden >= 0 (0: a linear head)"),
            (self.hidden > 0 or self.head == "cell", "the window head needs hidden units"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.radius_px > 0 and self.extent >= 0 and self.ignore_px >= 0, "radius_px > 0, extent and ignore_px >= 0"),
            (self.epochs >= 1 and self.batch_cells >= 1 and self.negatives_per_epoch >= 1, "epochs, batch_cells, "
             "negatives_per_epoch must be >= 1"),
            (self.learning_rate > 0 and self.weight_decay >= 0, "learning_rate > 0, weight_decay >= 0"),
            (0.0 <= self.hard_negative_share <= 1.0, "hard_negative_share must be in [0, 1]"),
            (self.image_score in IMAGE_SCORES, f"image_score must be one of {IMAGE_SCORES}"),
            (self.image_top_k >= 1, "image_top_k must be >= 1"),
            (self.fp_per_image > 0, "fp_per_image must be positive"),
            (0.0 < self.normal_with_finding <= 1.0, "normal_with_finding must be in (0, 1]"),
            (self.normal_with_finding == 1.0 or self.image_score == "max",
             "normal_with_finding below 1 gates on the highest heatmap value: it needs image_score 'max'"),
            (self.seeds >= 1, "seeds must be a whole number >= 1"),
            (self.trains in TRAINS, f"trains must be one of {TRAINS}"),
            (self.tune_stages >= 1, "tune_stages must be a whole number >= 1"),
            ((self.trains == "stages") == (self.tail_epochs > 0),
             "tail_epochs > 0 goes with trains 'stages' (and trains 'stages' needs tail_epochs > 0)"),
            (self.tail_epochs >= 0 and self.tail_learning_rate > 0,
             "tail_epochs must be a whole number >= 0, tail_learning_rate > 0"),
            (not self.tail_epochs or (self.head == "cell" and has_tunable_last_stage(self.backbone)),
             "tail_epochs needs the cell head on an EfficientNet-Lite backbone (one with a trunk and a tail)"),
            (all(0.25 <= v <= 4.0 and v != 1.0 for v in self.train_scales)
             and len(set(self.train_scales)) == len(self.train_scales),
             "train_scales must be distinct multiples of spacing_mm between 0.25 and 4, none of them 1"),
            (self.synthetic_per_lesion >= 0, "synthetic_per_lesion must be a whole number >= 0"),
            (self.other_breast_input in OTHER_BREAST_INPUTS,
             f"other_breast_input must be one of {OTHER_BREAST_INPUTS}"),
            (self.other_breast_input == "none" or (self.head == "cell" and not self.train_scales
                                                   and not self.synthetic_per_lesion),
             "other_breast_input needs the cell head, no train_scales and no synthetic_per_lesion"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe: {message}")

    @property
    def feature_cut(self) -> int:
        """How many of the backbone's last stages the cached features stop short of: 0 (the
        backbone's output) unless stages tune, then ``tune_stages`` (the features before the
        first tuned stage). Recipes that agree on it (and on backbone, spacing and
        preprocessing) share one feature cache."""
        return self.tune_stages if self.trains == "stages" else 0

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any], where: str = "recipe") -> "Recipe":
        return config_from_dict(cls, values, where)

    @classmethod
    def load(cls, path, overrides: Optional[Dict[str, Any]] = None) -> "Recipe":
        """A recipe from a JSON file (``overrides`` replace its fields); its name is the
        file's stem unless it states one."""
        path = Path(path)
        values = read_config_file(path)
        values.setdefault("name", path.stem)
        values.update(overrides or {})
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(exc.reason, path) from None
