"""The one recipe type: how a model is trained, in one JSON file validated on load with
messages that name the bad field (``config_from_dict``).

A recipe states the head (the cell head, or the poster's window head), what trains
(:data:`TRAINS`: the head on cached frozen features; the head and the backbone's last
``tune_stages`` stages on cached features of the stage before them; the whole network), how
samples are drawn, the loss, optimiser, schedule, augmentation, seeds, ensemble and pixel
spacing. ``mammopatch train`` builds one model from a recipe and ``mammopatch crossval``
cross-validates recipes, both through the same trainer."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import config_from_dict, config_to_dict, read_config_file
from ..errors import ConfigError
from ..model_file import InferenceDefaults, ModelInfo
from ..networks import BACKBONES, DEFAULT_BACKBONE, FEATURE_STRIDE, HEAD_TYPES, has_tunable_last_stage
from ..patches import SAMPLING_MODES, SamplingConfig
from ..transforms import PreprocessConfig
from ..vocabulary import FINDING_CLASSES
from .augment import AugmentConfig
from .other_breast_features import OTHER_BREAST_INPUTS

#: How an image's abnormality score is read from its cell heatmaps (image-level AUC, and the
#: image-level view of a finding): the highest cell, or the mean of the ``image_top_k``
#: highest cells of the best class (less at the mercy of one noisy cell).
IMAGE_SCORES = ("max", "top-k")

#: Cell sides a cell head can score, in preprocessed pixels: the backbone's output stride, or
#: half of it (the stride-16 pyramid of :mod:`.fine_cells`).
CELL_SIZES = (FEATURE_STRIDE, FEATURE_STRIDE // 2)

#: What a recipe trains: "head" (the head on the frozen backbone's cached features),
#: "stages" (the head and the backbone's last ``tune_stages`` stages, on cached features of the
#: stage before them), "network" (the whole network end to end, from images).
TRAINS = ("head", "stages", "network")

#: Where the network path trains ("auto": CUDA, else Apple's MPS, else the CPU).
DEVICES = ("auto", "cpu", "cuda", "mps")

#: How training samples are drawn: "cells" (every cell of every image as the dense pass sees
#: it, from cached features: trains "head" and "stages"), or patches cut from the images
#: (trains "network"): "poster" (the poster's sampler, :mod:`MammoPatchLib.patches.sampling`)
#: or "window" (windows at the inference scale).
SAMPLERS = ("cells",) + SAMPLING_MODES

#: Fields only the network path reads (patches cut from streamed images), and fields only the
#: cached-feature paths read: a recipe that sets one for the other path is refused by name.
NETWORK_FIELDS = ("sampling", "augmentation", "batch_size", "patches_per_epoch", "no_finding_share",
                  "plateau_patience", "plateau_factor", "num_workers", "amp", "device")
CELL_FIELDS = ("tune_stages", "neighbourhood", "bottleneck", "radius_px", "extent", "ignore_px", "batch_cells",
               "negatives_per_epoch", "hard_negative_share", "hard_negative_after", "flip_augment", "tail_epochs",
               "tail_learning_rate", "seeds", "train_scales", "synthetic_per_lesion", "other_breast_input", "fine",
               "fine_weight")

#: Fields added after recipes were first cross-validated: left out of :meth:`Recipe.to_dict` at
#: their default, so a recipe that does not use one keeps its identity (and with it its finished
#: cross-validation units, :mod:`.work_units`) and reads back the same.
LATER_FIELDS = ("fine_weight",)


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
        cell_px: the side of the cells the head scores, in preprocessed pixels
            (:data:`CELL_SIZES`): 32, the backbone's output stride, or 16 for
            lesions smaller than a 32 px cell (calcification clusters), from the backbone's
            stride-16 features with its output beside them (:mod:`.fine_cells`; a frozen
            backbone, trains "head"). Such a head alone is for cross-validation; a model file
            holds it as the ``fine`` head of a 32 px recipe.
        fine: a second head on 16 px cells for some classes, as a recipe of its own (its
            fields; ``cell_px`` 16, trains "head", the same backbone, spacing, preprocessing and
            flip_tta; named ``<name>-fine`` unless it states a name): its ``classes`` are read
            from it, every other class from this recipe's 32 px head, each 32 px cell's value
            on its four 16 px cells (:func:`~MammoPatchLib.networks.patch_classifier.with_finer_classes`).
            Cross-validation trains it fold by fold beside this recipe's heads and reads the
            held-out women through both; the model file holds both heads (empty: none).
        fine_weight: the finer head's share of its classes' probability (in (0, 1]): 1 takes
            them from the 16 px cells alone; below 1 the two heads are averaged, each 32 px cell's
            probability on its four 16 px cells weighted ``1 - fine_weight``, since two heads
            that see a lesion at different scales err differently.
        sampler: how samples are drawn (:data:`SAMPLERS`): "cells" for trains "head" and
            "stages", "poster" or "window" patches for trains "network".

    The network path (trains "network": the whole network end to end, from images streamed
    from a disk cache of preprocessed images, :mod:`.network_fit`) also reads:

        sampling: the patch sampler's ranges (:class:`~MammoPatchLib.patches.SamplingConfig`;
            its ``mode`` is ``sampler``).
        augmentation: patch augmentation (:class:`~.augment.AugmentConfig`).
        batch_size: patches per optimiser step over all ranks (each of N torchrun ranks takes
            batch_size / N, so N ranks train the model one rank does).
        patches_per_epoch: patches drawn per epoch (weighted sampling, with replacement).
        no_finding_share: share of the patches drawn from normal breasts; the rest is shared
            equally by the finding classes present (the poster's weighted sampling).
        plateau_patience, plateau_factor: ReduceLROnPlateau on the epoch's training loss
            (the poster's 5 and 0.1; no validation split: the schedule is fixed, and choosing
            between recipes is cross-validation's work).
        num_workers: DataLoader worker processes reading and cutting the patches.
        amp: mixed precision (bf16, fp16 where unsupported) and channels-last on CUDA.
        device: "auto", "cpu", "cuda" or "mps".
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
    cell_px: int = FEATURE_STRIDE
    fine: Dict[str, Any] = field(default_factory=dict)
    fine_weight: float = 1.0
    sampler: str = "cells"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 16
    patches_per_epoch: int = 1024
    no_finding_share: float = 0.5
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    num_workers: int = 0
    amp: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.sampler in SAMPLING_MODES:  # the patch sampler's mode is the recipe's sampler: one fact
            self.sampling = replace(self.sampling, mode=self.sampler)
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
            (self.cell_px in CELL_SIZES, f"cell_px must be one of {CELL_SIZES}"),
            (self.cell_px == FEATURE_STRIDE or (self.head == "cell" and self.trains == "head"
                                                and has_tunable_last_stage(self.backbone)
                                                and self.other_breast_input == "none" and not self.train_scales
                                                and not self.synthetic_per_lesion),
             f"cell_px {self.cell_px} needs the cell head on a frozen EfficientNet-Lite backbone (trains 'head'), "
             "without other_breast_input, train_scales or synthetic_per_lesion"),
        ]
        for ok, message in checks + self._path_checks():
            if not ok:
                raise ConfigError(f"recipe: {message}")
        self._check_fine()

    @property
    def fine_recipe(self) -> Optional["Recipe"]:
        """The finer head's recipe (:attr:`fine`), or None."""
        if not self.fine:
            return None
        if not isinstance(self.fine, dict):
            raise ConfigError(f"recipe: fine must be a mapping of a recipe's fields, got {self.fine!r}")
        return Recipe.from_dict({"name": f"{self.name}-fine", **self.fine}, "recipe.fine")

    def _check_fine(self) -> None:
        fine = self.fine_recipe
        if fine is None:
            if self.fine_weight != 1.0:
                raise ConfigError("recipe: fine_weight goes with a fine head")
            return
        shared = ("backbone", "spacing_mm", "preprocessing", "flip_tta")
        checks = [
            (fine.cell_px == FEATURE_STRIDE // 2 and fine.trains == "head" and not fine.fine,
             f"fine: the finer head's recipe needs cell_px {FEATURE_STRIDE // 2} and trains 'head' (and no fine)"),
            (self.head == "cell" and self.cell_px == FEATURE_STRIDE and self.other_breast_input == "none"
             and self.trains != "network",
             f"fine: a finer head goes beside a {FEATURE_STRIDE} px cell head that does not read the other breast"),
            (all(getattr(fine, name) == getattr(self, name) for name in shared),
             f"fine: the finer head's recipe must keep this recipe's {', '.join(shared)}"),
            (fine.name != self.name, "fine: the finer head's recipe needs a name of its own"),
            (0.0 < self.fine_weight <= 1.0, "fine_weight must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe: {message}")

    def _path_checks(self) -> List[tuple]:
        """The sampler, and each field only the other path reads, against what trains."""
        network = self.trains == "network"
        foreign = CELL_FIELDS if network else NETWORK_FIELDS
        checks = [(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}"),
                  ((self.sampler == "cells") != network,
                   "sampler 'cells' goes with trains 'head' or 'stages'; trains 'network' draws patches "
                   f"(sampler one of {SAMPLING_MODES})")]
        checks += [(_unchanged(self, name),
                    f"{name} is read only by {'trains head/stages' if network else 'trains network'}; "
                    f"leave it out of a trains '{self.trains}' recipe") for name in foreign]
        if network:
            checks += [
                (self.head == "window", "trains 'network' trains the poster's window head: head 'window'"),
                (self.batch_size >= 1 and self.patches_per_epoch >= self.batch_size
                 and self.patches_per_epoch % self.batch_size == 0,
                 "batch_size must be >= 1 and patches_per_epoch a multiple of it (whole batches)"),
                (0.0 < self.no_finding_share < 1.0, "no_finding_share must be in (0, 1)"),
                (self.plateau_patience >= 0 and 0.0 < self.plateau_factor < 1.0,
                 "plateau_patience must be >= 0 and plateau_factor in (0, 1)"),
                (self.num_workers >= 0, "num_workers must be >= 0"),
                (self.device in DEVICES, f"device must be one of {DEVICES}"),
                (self.image_score == "max", "a trains 'network' recipe's image score is the Predictor's highest "
                 "heatmap value: image_score 'max' (image_top_k reads cached cells)"),
            ]
        return checks

    @property
    def model_file_refusal(self) -> Optional[str]:
        """Why a model file cannot hold this recipe's heads (None: it can), for ``train`` and
        ``crossval --model-out`` to refuse the recipe before any feature is computed."""
        if self.other_breast_input != "none":
            return ("other_breast_input: a head that reads the other breast is for cross-validation only and "
                    "cannot be written into a model file")
        if self.cell_px != FEATURE_STRIDE:
            return (f"cell_px: a head on {self.cell_px} px cells alone is for cross-validation only; a model file "
                    "holds it as the fine head of a 32 px recipe (the recipe's 'fine' field)")
        return None

    @property
    def feature_cut(self) -> int:
        """How many of the backbone's last stages the cached features stop short of: 0 (the
        backbone's output) unless stages tune, then ``tune_stages`` (the features before the
        first tuned stage). Recipes that agree on it (and on backbone, spacing and
        preprocessing) share one feature cache."""
        return self.tune_stages if self.trains == "stages" else 0

    def to_dict(self) -> Dict[str, Any]:
        values = config_to_dict(self)
        values["sampling"].pop("mode")  # the sampler's (read back by from_dict)
        for name in LATER_FIELDS:
            if _unchanged(self, name):
                values.pop(name)
        return values

    @classmethod
    def from_dict(cls, values: Dict[str, Any], where: str = "recipe") -> "Recipe":
        if isinstance(values, dict) and "mode" in (values.get("sampling") or {}):
            raise ConfigError(f"{where}.sampling.mode: the recipe's sampler sets it; leave it out")
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


def _unchanged(recipe: Recipe, name: str) -> bool:
    """``recipe.name`` holds the field's default (the patch sampler's mode aside: the sampler sets it)."""
    spec = next(f for f in fields(Recipe) if f.name == name)
    default = spec.default_factory() if spec.default is MISSING else spec.default
    value = getattr(recipe, name)
    if isinstance(value, SamplingConfig):
        default = replace(default, mode=value.mode)
    return value == default


def cell_model_info(recipe: Recipe, ensemble: int = 1, fine_ensemble: int = 0) -> ModelInfo:
    """The model information of a cell-head model made with ``recipe`` (``ensemble`` heads, and
    ``fine_ensemble`` heads of its finer recipe where it has one and they are given)."""
    fine = recipe.fine_recipe if fine_ensemble else None
    fine_head = {"classes": list(fine.classes), "hidden": fine.hidden, "neighbourhood": fine.neighbourhood,
                 "bottleneck": fine.bottleneck, "ensemble": fine_ensemble} if fine else {}
    if fine and recipe.fine_weight != 1.0:  # written only where it blends: a file older readers still load
        fine_head["weight"] = recipe.fine_weight
    return ModelInfo(fine_head=fine_head, backbone=recipe.backbone, classes=list(FINDING_CLASSES), hidden=recipe.hidden, head=recipe.head,
                     neighbourhood=recipe.neighbourhood, bottleneck=recipe.bottleneck, ensemble=ensemble,
                     spacing_mm=recipe.spacing_mm, preprocessing=recipe.preprocessing,
                     inference=InferenceDefaults(report_classes=list(recipe.classes), flip_tta=recipe.flip_tta),
                     tuned_stages=recipe.feature_cut)
