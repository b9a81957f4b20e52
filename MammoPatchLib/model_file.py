"""Model files: weights plus everything needed to use them, in one checksummed file.

A model file is a ``torch.save`` of plain types and tensors (loaded back with
``weights_only=True``, so opening a file cannot execute code):

- ``format``: "mammopatch-model", ``format_version``: 3 (version 1 files, written before the
  head became convolutional, are converted on load; version 2 files carry no
  :class:`Provenance` and load as of unknown provenance)
- ``info``: :class:`ModelInfo` as a dict (backbone, classes, window, stride, pixel spacing
  it was trained at, preprocessing parameters, thresholds, library version, provenance)
- ``state_dict``: the weights (fp32 or fp16)
- ``sha256``: of the weights, checked on load
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set

import torch

from . import __version__
from .config import config_from_dict, config_to_dict
from .errors import ConfigError, ModelFileError
from .io.atomic import atomic_path
from .io.paths import file_problem
from .networks import BACKBONES, DEFAULT_BACKBONE, HEAD_POOLINGS, HEAD_TYPES, PatchClassifier, has_tunable_last_stage
from .other_breast import OtherBreastPoint
from .postprocess import DetectionConfig
from .transforms import PreprocessConfig
from .vocabulary import FINDING_CLASSES, PathLike, class_slug, heatmap_stem

FORMAT = "mammopatch-model"
#: What a model's ``fine_head`` states (:class:`ModelInfo`).
FINE_HEAD_COUNTS = ("hidden", "neighbourhood", "bottleneck", "ensemble")  # whole numbers
FINE_HEAD_KEYS = ("classes", *FINE_HEAD_COUNTS, "weight")
FORMAT_VERSION = 3


@dataclass
class InferenceDefaults:
    """How a model is run unless the caller says otherwise, chosen on validation data.

    Attributes:
        report_classes: classes reported as findings (those the model was trained on; empty:
            all). Heatmaps are produced for every output.
        flip_tta: average with the mirrored image (test-time augmentation).
        detection: how findings are picked from the heatmaps.
        temperatures: per-class calibration temperatures (empty: none; probability =
            sigmoid(logit / T); see evaluation.calibration).
        other_breast: the operating point for an image read against the woman's other breast
            (:class:`~MammoPatchLib.other_breast.OtherBreastPoint`; weight 0: none), used when
            both breasts of a view are predicted together.
    """

    report_classes: List[str] = field(default_factory=list)
    flip_tta: bool = False
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    temperatures: List[float] = field(default_factory=list)
    other_breast: OtherBreastPoint = field(default_factory=OtherBreastPoint)


def identity_sha256(names: Sequence[str]) -> str:
    """SHA-256 of a set of identifiers (sorted, one per line): the same images give the same
    hash whatever order a data set lists them in."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


@dataclass
class Provenance:
    """How a model was made, so that evaluation can tell its training women from new ones.

    Attributes:
        recipe: the recipe (or training configuration) as it was read: its full content.
        recipe_name: its name (the recipe file's stem).
        data: what the training data was (a description, not a path to trust).
        images: every image id any ensemble member trained on, sorted.
        images_sha256: :func:`identity_sha256` of ``images`` (checked on load).
        fold_file: which fold (or split) file divided the women, in words: "folds.csv of the
            crossval output" for a cross-validated bundle (whichever file was copied there), the
            split file of ``mammopatch train``, or the committed file where it is known ("" if none).
        fold_file_sha256: SHA-256 of that file's bytes ("" if none).
        members: for each ensemble member (in the file's order), the women it trained on.
        selected_on: women whose predictions chose the operating thresholds, epoch or gate
            (all women for a cross-validated bundle: out of fold; the validation women for
            ``mammopatch train``).
    """

    recipe: Dict[str, Any] = field(default_factory=dict)
    recipe_name: str = ""
    data: str = ""
    images: List[str] = field(default_factory=list)
    images_sha256: str = ""
    fold_file: str = ""
    fold_file_sha256: str = ""
    members: List[List[str]] = field(default_factory=list)
    selected_on: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("recipe_name", "data", "images_sha256", "fold_file", "fold_file_sha256"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"model provenance.{name} must be text, got {getattr(self, name)!r}")
        if not isinstance(self.recipe, dict):
            raise ConfigError(f"model provenance.recipe must be a mapping, got {type(self.recipe).__name__}")
        for name in ("images", "selected_on"):
            if not _texts(getattr(self, name)):
                raise ConfigError(f"model provenance.{name} must be a list of identifiers (text)")
        if not isinstance(self.members, list) or not self.members or not all(_texts(m) and m for m in self.members):
            raise ConfigError("model provenance.members must list, for each ensemble member, the women (text) "
                              "it trained on")
        if identity_sha256(self.images) != self.images_sha256:
            raise ConfigError("model provenance.images do not match their images_sha256")

    @property
    def women(self) -> Set[str]:
        """Every woman who trained any member."""
        return {woman for member in self.members for woman in member}


def _texts(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


@dataclass
class ModelInfo:
    """What a model file says about its network and how to run it.

    Attributes:
        backbone: registered backbone name.
        classes: output classes, in output order.
        window, stride: sliding-window patch side and step in pixels (at ``spacing_mm``).
        hidden: head hidden units.
        head_pooling: how the window head pools a window's feature cells ("mean" or "learned").
        head: "window" (the poster: one output per window) or "cell" (one per 32 px cell,
            from a ``neighbourhood x neighbourhood`` block of cells).
        neighbourhood: the cell head's block side in cells.
        bottleneck: the cell head's 1 x 1 bottleneck channels.
        ensemble: heads over the one backbone whose probabilities are averaged (e.g. the
            fold models of a cross-validation); 1: a single head.
        tuned_stages: each cell head holds its own tuned copy of the backbone's last
            ``tuned_stages`` stages (EfficientNet-Lite), and the backbone stops before them
            (0: none). Files that say ``tuned_tail: true`` (written before deeper stages could
            tune) read as 1.
        fine_head: a second cell head on 16 px cells for some classes (the network's output is
            then on 16 px cells; fast mode only): ``{"classes": [names], "hidden",
            "neighbourhood", "bottleneck", "ensemble", "weight"}`` (weight: its share of its
            classes' probability beside the 32 px head's, 1 when absent); empty: none.
        spacing_mm: pixel spacing the model was trained at; images are resampled to it
            (None: used at their own spacing).
        preprocessing: preprocessing parameters (:class:`PreprocessConfig`).
        thresholds: per-class probability thresholds for the label map and findings.
        library_version: MammoPatch version that wrote the file.
        trained: False for an untrained (randomly initialised) demonstration model.
        inference: :class:`InferenceDefaults`.
        description, training: free text and the figures of its making (config, metrics).
        provenance: :class:`Provenance` (None: unknown, e.g. a file written before it existed).
    """

    backbone: str = DEFAULT_BACKBONE
    classes: List[str] = field(default_factory=lambda: list(FINDING_CLASSES))
    window: int = 256
    stride: int = 32
    hidden: int = 512
    head_pooling: str = "mean"
    head: str = "window"
    neighbourhood: int = 3
    bottleneck: int = 128
    ensemble: int = 1
    tuned_stages: int = 0
    fine_head: Dict[str, Any] = field(default_factory=dict)
    spacing_mm: Optional[float] = None
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    thresholds: List[float] = field(default_factory=list)
    library_version: str = __version__
    trained: bool = True
    inference: InferenceDefaults = field(default_factory=InferenceDefaults)
    description: str = ""
    training: Dict[str, Any] = field(default_factory=dict)
    provenance: Optional[Provenance] = None

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"model backbone {self.backbone!r} is not registered; known: {sorted(BACKBONES)}")
        if not self.thresholds:
            self.thresholds = [0.5] * len(self.classes)
        if len(self.thresholds) != len(self.classes):
            raise ConfigError(f"model has {len(self.classes)} classes but {len(self.thresholds)} thresholds")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"model classes must be unique and non-empty, got {self.classes}")
        _check_file_names(self.classes)
        if any(not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise ConfigError(f"model thresholds must be probabilities in [0, 1], got {self.thresholds}")
        if self.window <= 0 or self.window % 32 or self.stride <= 0 or self.window % self.stride:
            raise ConfigError(f"window ({self.window}) must be a positive multiple of 32 and of stride ({self.stride})")
        if self.spacing_mm is not None and not (math.isfinite(self.spacing_mm) and self.spacing_mm > 0):
            raise ConfigError(f"model spacing_mm must be a positive number or null, got {self.spacing_mm}")
        if self.head_pooling not in HEAD_POOLINGS:
            raise ConfigError(f"model head_pooling must be one of {HEAD_POOLINGS}, got {self.head_pooling!r}")
        if self.head not in HEAD_TYPES:
            raise ConfigError(f"model head must be one of {HEAD_TYPES}, got {self.head!r}")
        if not isinstance(self.neighbourhood, int) or self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ConfigError(f"model neighbourhood must be an odd number >= 1, got {self.neighbourhood!r}")
        if (isinstance(self.tuned_stages, bool) or not isinstance(self.tuned_stages, int) or self.tuned_stages < 0
                or (self.tuned_stages and (self.head != "cell" or not has_tunable_last_stage(self.backbone)))):
            raise ConfigError(f"model tuned_stages must be a whole number >= 0, and above 0 only for a cell head on "
                              f"an EfficientNet-Lite backbone, got {self.tuned_stages!r} ({self.head}, {self.backbone})")
        for name in ("bottleneck", "ensemble"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {name} must be a positive integer, got {value!r}")
        self._check_fine_head()

        temperatures = self.inference.temperatures
        if temperatures and (len(temperatures) != len(self.classes) or not all(
                isinstance(t, (int, float)) and math.isfinite(t) and t > 0 for t in temperatures)):
            raise ConfigError(f"model inference.temperatures must be {len(self.classes)} positive numbers")
        unknown = [c for c in self.inference.report_classes if c not in self.classes]
        if unknown:
            raise ConfigError(f"model inference.report_classes {unknown} are not among its classes")
        paired = self.inference.other_breast
        if paired.active and len(paired.thresholds) != len(self.classes):
            raise ConfigError(f"model inference.other_breast.thresholds must be {len(self.classes)} numbers "
                              f"(one per class), got {len(paired.thresholds)}")
        if self.provenance is not None and not isinstance(self.provenance, Provenance):
            raise ConfigError(f"model provenance must be a mapping of its fields, got {self.provenance!r}")
        if self.provenance is not None and len(self.provenance.members) != self.ensemble:
            raise ConfigError(f"model provenance names the women of {len(self.provenance.members)} member(s), "
                              f"the model has {self.ensemble}")

    def _check_fine_head(self) -> None:
        fine = self.fine_head
        if not fine:
            return
        if not isinstance(fine, dict) or set(fine) - set(FINE_HEAD_KEYS) or "classes" not in fine:
            raise ConfigError(f"model fine_head must be a mapping with classes and any of {FINE_HEAD_KEYS[1:]}, "
                              f"got {fine!r}")
        classes = fine["classes"]
        if not _texts(classes) or not classes or len(set(classes)) != len(classes) \
                or any(c not in self.classes for c in classes):
            raise ConfigError(f"model fine_head.classes must be some of the model's classes, got {classes!r}")
        weight = fine.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < weight <= 1.0:
            raise ConfigError(f"model fine_head.weight must be a number in (0, 1], got {weight!r}")
        for name in FINE_HEAD_COUNTS:
            value = fine.get(name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "hidden" else 1):
                raise ConfigError(f"model fine_head.{name} must be a whole number, got {value!r}")
        if self.head != "cell" or not has_tunable_last_stage(self.backbone):
            raise ConfigError("model fine_head goes with a cell head on an EfficientNet-Lite backbone")

    @property
    def cell_px(self) -> int:
        """Pixels (at ``spacing_mm``) of one cell of the network's output: 16 with a
        ``fine_head``, else the window stride."""
        return self.stride // 2 if self.fine_head else self.stride

    def preprocess_config(self, scale: float = 1.0) -> PreprocessConfig:
        """The preprocessing this model needs; ``scale`` multiplies its pixel spacing (a
        window then covers ``scale`` x the tissue it was trained on: multi-scale inference)."""
        return self.preprocessing.at_spacing(None if self.spacing_mm is None else self.spacing_mm * scale)

    @property
    def reported_classes(self) -> List[str]:
        return list(self.inference.report_classes or self.classes)

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ModelInfo":
        values = dict(values)
        if "tuned_tail" in values:  # files written when only the last stage could tune
            old = values.pop("tuned_tail")
            if not isinstance(old, bool) or "tuned_stages" in values:
                raise ConfigError(f"model information: tuned_tail must be true or false and not beside tuned_stages, "
                                  f"got {old!r}")
            values["tuned_stages"] = int(old)
        return config_from_dict(cls, values, "model information")


def _check_file_names(classes: Sequence[str]) -> None:
    """Every class needs its own output file name (``heatmap_<slug>.nrrd``): classes that differ
    only in case or punctuation ("Mass", "mass") would overwrite each other's heatmap."""
    owner: Dict[str, str] = {}
    for name in classes:
        if not isinstance(name, str):
            raise ConfigError(f"model class names must be text, got {name!r}")
        slug = class_slug(name)
        if not slug:
            raise ConfigError(f"model class {name!r} has no letters or digits to name its output files with")
        if slug in owner:
            raise ConfigError(f"model classes {owner[slug]!r} and {name!r} both get the file name {heatmap_stem(name)}: "
                              "class names must differ in more than case and punctuation")
        owner[slug] = name


def build_network(info: ModelInfo, pretrained: bool = False) -> PatchClassifier:
    """The PatchClassifier a :class:`ModelInfo` describes."""
    return PatchClassifier(info.backbone, num_classes=len(info.classes), hidden=info.hidden,
                           pretrained=pretrained, window=info.window, head_pooling=info.head_pooling,
                           head=info.head, neighbourhood=info.neighbourhood, bottleneck=info.bottleneck,
                           ensemble=info.ensemble, tuned_stages=info.tuned_stages,
                           fine_head=fine_head_arguments(info))


def fine_head_arguments(info: ModelInfo) -> Optional[Dict[str, Any]]:
    """The network's ``fine_head`` argument (:class:`PatchClassifier`): the model's, with its
    classes as output channels (None: no finer head)."""
    if not info.fine_head:
        return None
    values = {k: v for k, v in info.fine_head.items() if k != "classes"}
    return {**values, "channels": [info.classes.index(c) for c in info.fine_head["classes"]]}


def _upgrade_v1_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Format 1 -> 2: the head's Linear layers become 1 x 1 convolutions, and EfficientNet-Lite
    weights lose the wrapper prefix ``features.model.`` (the backbone is now a subclass)."""
    renamed = {"head.2.weight": "head.hidden.weight", "head.2.bias": "head.hidden.bias",
               "head.4.weight": "head.out.weight", "head.4.bias": "head.out.bias"}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in renamed:
            key = renamed[key]
            if key.endswith("weight"):
                value = value[:, :, None, None]
        elif key.startswith("features.model._"):  # EfficientNet-Lite's own (underscore) names
            key = "features." + key[len("features.model."):]
        out[key] = value
    return out


def weights_sha256(state_dict: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in key order (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_model(network: PatchClassifier, info: ModelInfo, path: PathLike, half: bool = False,
               overwrite: bool = True) -> str:
    """Write a model file atomically; ``half`` stores fp16 weights (half the size)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in network.state_dict().items()}
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": info.to_dict(), "state_dict": state,
               "sha256": weights_sha256(state)}
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return os.fspath(path)


@dataclass
class LoadedModel:
    """A network ready for inference (eval mode, fp32) with its :class:`ModelInfo`."""

    network: PatchClassifier
    info: ModelInfo
    path: str
    sha256: str


def _load_error(exc: BaseException, path: str) -> str:
    """What a failed ``torch.load(weights_only=True)`` means, in one line. PyTorch's own text
    begins with advice to re-run without ``weights_only``: the opposite of what a user of an
    untrusted file should do, so it is never shown."""
    text = str(exc)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError:
        magic = b""
    found = re.search(r"unsupported GLOBAL ([\w.]+)", text, flags=re.IGNORECASE)
    if found or "Unsupported global" in text:
        what = f" ({found.group(1)})" if found else ""
        return (f"the file holds code or Python objects{what} that a model file must not contain; it was refused "
                "without running them: this is not a MammoPatch model file, do not load it another way")
    if isinstance(exc, pickle.UnpicklingError) or magic[:1] == b"\x80":
        return ("not a MammoPatch model file: a pickle that cannot be read without running code (a plain Python "
                "pickle, or a file of another tool); it was refused without running it")
    if magic == b"PK\x03\x04":
        if "central directory" in text or "failed reading" in text:
            return "the file is truncated or damaged (its zip archive is incomplete); copy the model file again"
        return "not a MammoPatch model file (a zip archive that torch.save did not write)"
    return "not a MammoPatch model file (not a torch.save file: it starts with neither its archive nor a pickle)"


def _mismatch(network: PatchClassifier, state: Dict[str, torch.Tensor]) -> str:
    """How stored weights differ from the network the file's information describes: missing,
    unexpected and reshaped tensors, counted, with one example each (never a truncated dump)."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        shape = "x".join(map(str, state[key].shape)) or "scalar"
        needed = "x".join(map(str, expected[key].shape)) or "scalar"
        parts.append(f"{len(reshaped)} of another shape (e.g. {key}: {shape} in the file, {needed} needed)")
    return ", ".join(parts) or "the tensors do not load"


def read_model_payload(path: PathLike) -> Dict[str, Any]:
    """The checked contents of a model file (format, checksum), without building the network."""
    path = os.fspath(path)
    problem = file_problem(path, "model file")
    if problem == "file not found":
        problem = "model file not found"
    if problem is not None:
        raise ModelFileError(problem, path)
    try:
        with warnings.catch_warnings():  # PyTorch's remarks on a foreign pickle's protocol: refused anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip/torch errors all mean "not a model file"
        raise ModelFileError(_load_error(exc, path), path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError("not a MammoPatch model file (a bare state dict or another tool's checkpoint?); "
                             "make one with mammopatch train or MammoPatchLib.model_file.save_model", path)
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"model file format {payload['format_version']} is newer than this MammoPatch "
                             f"({FORMAT_VERSION}); upgrade MammoPatch", path)
    state = payload.get("state_dict")
    if not isinstance(state, dict) or weights_sha256(state) != payload.get("sha256"):
        raise ModelFileError("weights do not match their SHA-256: the file is corrupted", path)
    return payload


def load_model(path: PathLike, expected_classes: Optional[Sequence[str]] = None,
               expected_backbone: Optional[str] = None, device: str = "cpu") -> LoadedModel:
    """Load a model file and rebuild its network.

    Raises:
        ModelFileError: unreadable or corrupted file, or a file for another architecture or
            class list than expected (or than its own info says).
    """
    path = os.fspath(path)
    payload = read_model_payload(path)
    try:
        info = ModelInfo.from_dict(payload["info"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model information is invalid ({exc})", path) from None
    if expected_classes is not None and list(expected_classes) != list(info.classes):
        raise ModelFileError(f"model is for classes {info.classes}, not {list(expected_classes)}", path)
    if expected_backbone is not None and expected_backbone != info.backbone:
        raise ModelFileError(f"model is a {info.backbone} network, not {expected_backbone}", path)
    network = build_network(info)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    if payload.get("format_version", 1) < 2:
        state = _upgrade_v1_state(state)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError:
        raise ModelFileError(f"weights do not fit a {info.backbone} network with {len(info.classes)} classes "
                             f"(made for another model?): {_mismatch(network, state)}", path) from None
    network.eval().to(device)
    return LoadedModel(network=network, info=info, path=path, sha256=payload["sha256"])


def make_untrained_model(path: PathLike, backbone: str = DEFAULT_BACKBONE, seed: int = 0,
                         spacing_mm: Optional[float] = 0.2) -> str:
    """Write a clearly labelled untrained model (ImageNet backbone where offline, random head).

    For demonstrations and tests before a trained model exists: its heatmaps mean nothing.
    """
    torch.manual_seed(seed)
    info = ModelInfo(backbone=backbone, spacing_mm=spacing_mm, trained=False,
                     description="UNTRAINED demonstration model: random classifier head, outputs are meaningless")
    network = build_network(info, pretrained=BACKBONES[backbone].pretrained_offline)
    return save_model(network, info, path, half=True)
