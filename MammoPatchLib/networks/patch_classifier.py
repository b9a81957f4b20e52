"""The poster's classifier as one fully-convolutional network.

Poster: backbone features -> flattened -> 512 -> ReLU -> 10 logits (sigmoid, multi-label).
Here the head pools the window's ``cells x cells`` feature cells (8 x 8 for a 256 px window
at stride 32) and applies the MLP as 1 x 1 convolutions, as MONAI's
``NetAdapter(use_conv=True)`` does for its classifier. Pooling before the MLP is our reading
of "flattened": it keeps the head at C x 512 weights instead of 64 C x 512 and makes it valid
at every window position of a feature map.

So one forward serves both inference modes:

- a (B, 3, 256, 256) batch of windows gives (B, classes, 1, 1) logits (exact mode);
- a (B, 3, 256 + 32 i, 256 + 32 j) image gives (B, classes, i + 1, j + 1): the logits of every
  256 px window at a 32 px stride, in one pass (the dense pass, fast mode).

A window's single label cannot say where in its 51 mm the finding lies, so its heatmap peak
rarely sits on the lesion. The cell head (``head="cell"``) scores every 32 px feature cell from
a small ``neighbourhood x neighbourhood`` block of cells around it (3 x 3: 96 px of context):
a window then returns its own 8 x 8 block of cell outputs, which MONAI's SlidingWindowInferer
stitches, and the whole image gives every cell at once (one value per cell, no stitching).
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import PathLike
from .backbones import DEFAULT_BACKBONE, FEATURE_STRIDE, FINE_CUT, build_backbone

HEAD_POOLINGS = ("mean", "learned")
#: "window": the poster's one output per 256 px window; "cell": one output per 32 px cell.
HEAD_TYPES = ("window", "cell")


class WindowHead(nn.Module):
    """Pool over a window's cells, then the poster's MLP as 1 x 1 convolutions.

    Pooling: "mean" averages the ``cells x cells`` feature cells alike, so the output cannot
    tell where in the window a finding lies; "learned" is a depthwise ``cells x cells``
    convolution (one spatial weight map per channel, initialised to the mean): closer to the
    poster's flattening, which keeps position, with C x cells^2 weights instead of
    C x cells^2 x 512. Both run at every window position of a feature map.

    Shapes: (B, C, h, w) features -> (B, classes, h - cells + 1, w - cells + 1) logits.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 512, cells: int = 8,
                 dropout: float = 0.2, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in HEAD_POOLINGS:
            raise ValueError(f"head pooling must be one of {HEAD_POOLINGS}, got {pooling!r}")
        self.cells = cells
        if pooling == "mean":
            self.pool: nn.Module = nn.AvgPool2d(kernel_size=cells, stride=1)
        else:
            self.pool = nn.Conv2d(in_channels, in_channels, kernel_size=cells, groups=in_channels, bias=False)
            nn.init.constant_(self.pool.weight, 1.0 / (cells * cells))
        self.dropout = nn.Dropout(dropout)
        self.hidden = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(hidden, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(self.dropout(self.pool(features)))))


class CellHead(nn.Module):
    """Score every feature cell from its ``neighbourhood x neighbourhood`` block of cells.

    A 1 x 1 bottleneck first maps the backbone's channels to ``bottleneck`` (a linear map: with
    a frozen backbone it is fitted once, as the principal components of the features, which
    keeps the head small enough to train on 45 lesions), then the poster's MLP (``hidden``
    units, ReLU, one logit per class) with its first layer a ``neighbourhood``-wide
    convolution, i.e. the MLP applied to the flattened block of bottleneck features
    (``hidden=0``: no hidden layer, a linear map of the block to the logits).

    Shapes: (B, C, h, w) features -> (B, classes, h, w) logits (zero padding at the border).
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256, neighbourhood: int = 3,
                 bottleneck: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"cell head neighbourhood must be an odd number >= 1, got {neighbourhood}")
        self.neighbourhood = neighbourhood
        self.reduce = nn.Conv2d(in_channels, bottleneck, kernel_size=1)
        if hidden > 0:
            self.hidden: nn.Module = nn.Conv2d(bottleneck, hidden, kernel_size=neighbourhood, padding=neighbourhood // 2)
            self.act: nn.Module = nn.ReLU(inplace=True)
            self.out: nn.Module = nn.Conv2d(hidden, num_classes, kernel_size=1)
        else:  # a linear head: the block's features straight to the logits
            self.hidden = nn.Conv2d(bottleneck, num_classes, kernel_size=neighbourhood, padding=neighbourhood // 2)
            self.act = nn.Identity()
            self.out = nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.act(self.hidden(self.reduce(features)))))


class TunedStages(nn.Module):
    """Trainable copies of EfficientNet-Lite's last ``stages`` stages: the last ``stages - 1``
    block groups (inverted-residual blocks), then the head convolution, batch norm and
    activation: the features before them (``backbone.features_before(x, stages)``) -> the
    backbone's output channels. Every batch norm keeps its pretrained running statistics
    (eval mode even while training: a few images per step would only make them noisier, and
    the whole-image network then computes exactly what was trained); the convolutions and
    the batch norms' affine weights train. Blocks run without drop connect.

    State dict names: ``conv``, ``bn`` (the head convolution, as in model files with one tuned
    stage) and ``blocks.<i>`` (the tuned blocks, in order)."""

    def __init__(self, backbone: nn.Module, stages: int = 1) -> None:
        super().__init__()
        if not hasattr(backbone, "features_before"):
            raise ValueError("tuning the last stages needs an EfficientNet-Lite backbone (features_before)")
        self.stages = stages
        self.blocks = nn.ModuleList(copy.deepcopy(backbone._blocks[i]) for i in backbone.tuned_blocks(stages))
        self.conv = copy.deepcopy(backbone._conv_head)
        self.bn = copy.deepcopy(backbone._bn1)
        self.act = copy.deepcopy(backbone._swish)

    def train(self, mode: bool = True) -> "TunedStages":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            features = block(features, drop_connect_rate=0.0)
        return self.act(self.bn(self.conv(features)))

    @property
    def scale(self) -> int:
        """Input positions per output cell along an axis (the tuned blocks' strides: 2 when
        they start at stride 16)."""
        return math.prod(block._depthwise_conv.stride[0] for block in self.blocks)

    def reach(self, head_reach: int) -> int:
        """Output cells on each side of a cell that a head reading ``head_reach`` cells on each
        side reads through these stages: each tuned block's depthwise convolution (kernel,
        stride, the static padding it was built with) widens it; the 1 x 1 convolutions and
        batch norms do not."""
        reach = head_reach  # in the current layer's output positions
        for block in reversed(list(self.blocks)):
            conv = block._depthwise_conv
            k, s = conv.kernel_size[0], conv.stride[0]
            pad = getattr(conv, "static_padding", None)
            left = pad.padding[0] if isinstance(pad, nn.ZeroPad2d) else conv.padding[0]
            reach = s * reach + max(left, k - 1 - left - (s - 1))
        return math.ceil(reach / self.scale)


class TunedTailHead(nn.Module):
    """A head with its own tuned copy of the backbone's last stages (:class:`TunedStages`):
    (B, C, h', w') features before those stages -> (B, classes, h, w). With a fold ensemble each
    member keeps its own, so the one frozen part of the backbone is still computed once."""

    def __init__(self, tail: TunedStages, head: nn.Module) -> None:
        super().__init__()
        self.tail = tail
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(features))


def logit_of_probability(probability: torch.Tensor) -> torch.Tensor:
    """The logit of averaged probabilities, clamped to [1e-6, 1 - 1e-6] so a probability of
    exactly 0 or 1 stays finite: the inferers' sigmoid (and calibration temperatures) then see
    one model wherever heads are averaged (:class:`EnsembleHead`, :func:`with_finer_classes`)."""
    return torch.logit(probability.clamp(1e-6, 1 - 1e-6))


class EnsembleHead(nn.Module):
    """Several heads over one (frozen) backbone's features, e.g. the five fold models of a
    cross-validation: the output is the logit of their mean probability, so the inferers'
    sigmoid (and calibration temperatures) see one averaged model."""

    def __init__(self, heads) -> None:
        super().__init__()
        self.members = nn.ModuleList(heads)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.sigmoid(head(features)) for head in self.members]).mean(0)
        return logit_of_probability(probs)


def level_scaled(features: torch.Tensor) -> torch.Tensor:
    """(V, C, h, w) features divided by the root mean squared norm of their cells over all
    views (one scalar per image and level): the two levels a finer head reads differ in
    magnitude several-fold (Lite0 on mini-MIAS: per-channel variance ~16 at stride 16, ~0.3 at
    the output), and its bottleneck keeps the components of largest variance, so unscaled the
    larger would drown the other; the scale depends on nothing but the image's own features."""
    values = features.float()
    norm = values.pow(2).sum(1).mean().sqrt().clamp(min=1e-6)
    return values / norm


def doubled(cells: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> (..., 2h, 2w): each 32 px cell's value on its four 16 px cells."""
    return cells.repeat_interleave(2, -2).repeat_interleave(2, -1)


def fine_pyramid(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """What a 16 px cell's head reads: the stride-16 features and, beside them, the stride-32
    output of the 32 px cell it lies in, each level scaled by :func:`level_scaled`."""
    return torch.cat([level_scaled(fine), level_scaled(doubled(coarse))], 1)


def with_finer_classes(coarse: torch.Tensor, fine: torch.Tensor, channels: Sequence[int],
                       weight: float = 1.0) -> torch.Tensor:
    """(B, K, h, w) logits on 32 px cells and (B, K, 2h, 2w) on 16 px cells -> (B, K, 2h, 2w)
    logits: the other classes each 32 px cell's value on its four 16 px cells; the classes at
    ``channels`` from the finer cells (``weight`` 1) or the logit of ``weight`` x the finer
    cell's probability plus ``1 - weight`` x the 32 px cell's (the two heads averaged where
    they agree on the scale, as :class:`EnsembleHead` averages its members)."""
    out = doubled(coarse)
    index = torch.as_tensor(list(channels), dtype=torch.long, device=out.device)
    chosen = fine.index_select(1, index).to(out.dtype)
    if weight != 1.0:
        probability = weight * torch.sigmoid(chosen) + (1.0 - weight) * torch.sigmoid(out.index_select(1, index))
        chosen = logit_of_probability(probability)
    return out.index_copy(1, index, chosen)


class FineCellHead(nn.Module):
    """A second cell head on 16 px cells for the classes whose lesions are smaller than a
    32 px cell (a calcification cluster: 5-50 px on 200 um film, a 32 px cell is 6.4 mm at
    0.2 mm). It reads :func:`fine_pyramid` of the backbone's stride-16 features (before its last
    :data:`FINE_CUT` stages) and its frozen stride-32 output (``frozen_stages``: the pretrained
    copy of the last stages that the coarse heads tune, so it reads the output its training
    cached; None when nothing is tuned and the backbone's own output is that), and gives logits
    for every class, of which the model keeps ``channels``, blended with the 32 px head's at
    ``weight`` (:func:`with_finer_classes`).

    Shapes: (B, C16, 2h, 2w) and (B, C, h, w) -> (B, classes, 2h, 2w) logits."""

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int], hidden: int = 256,
                 neighbourhood: int = 3, bottleneck: int = 128, ensemble: int = 1,
                 frozen_stages: Optional["TunedStages"] = None, weight: float = 1.0) -> None:
        super().__init__()
        if not channels or min(channels) < 0 or max(channels) >= num_classes:
            raise ValueError(f"the finer head's classes must be some of the {num_classes} outputs, got {channels}")
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"the finer head's weight must be in (0, 1], got {weight}")
        self.channels = [int(c) for c in channels]
        self.weight = float(weight)
        self.frozen_stages = frozen_stages
        make = lambda: CellHead(in_channels, num_classes, hidden, neighbourhood, bottleneck, 0.0)  # noqa: E731
        self.head: nn.Module = make() if ensemble == 1 else EnsembleHead([make() for _ in range(ensemble)])

    def forward(self, fine: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        coarse = trunk if self.frozen_stages is None else self.frozen_stages(trunk)
        return self.head(fine_pyramid(fine, coarse))


class PatchClassifier(nn.Module):
    """Multi-label sliding-patch classifier (backbone + window head).

    Args:
        backbone: registered backbone name.
        num_classes: outputs (10 VinDr classes).
        hidden: units of the head's hidden layer (512 in the poster).
        dropout: dropout before the hidden layer while training.
        pretrained: load offline ImageNet weights into the backbone (EfficientNet-Lite).
        backbone_weights: local state dict file for the backbone.
        window: patch side in pixels (256 in the poster); a multiple of 32.
        head_pooling: "mean" or "learned" (:class:`WindowHead`).
        head: "window" (:class:`WindowHead`, the poster) or "cell" (:class:`CellHead`).
        neighbourhood: cells of context per side of the cell head's block (odd).
        bottleneck: the cell head's 1 x 1 bottleneck channels.
        ensemble: heads averaged over the one backbone (:class:`EnsembleHead`; 1: a plain head).
        tuned_stages: each cell head holds its own tuned copy of the backbone's last
            ``tuned_stages`` stages (:class:`TunedTailHead`; EfficientNet-Lite only), and the
            backbone stops before them (0: none).
        fine_head: a second head on 16 px cells (:class:`FineCellHead`) for some classes:
            ``{"channels": [class indices], "hidden", "neighbourhood", "bottleneck",
            "ensemble"}``; None: none. The output is then on 16 px cells, every other class's
            value repeated over the four 16 px cells of its 32 px cell.

    Shapes, window head: ``forward`` (B, 3, window + 32 i, window + 32 j) -> (B, classes,
    i + 1, j + 1) logits; ``classify`` (B, 3, window, window) -> (B, classes).
    Cell head: ``forward`` (B, 3, 32 h, 32 w) -> (B, classes, h, w) logits ((B, classes, 2h, 2w)
    with a ``fine_head``).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, num_classes: int = 10, hidden: int = 512,
                 dropout: float = 0.2, pretrained: bool = False, backbone_weights: Optional[PathLike] = None,
                 window: int = 256, head_pooling: str = "mean", head: str = "window",
                 neighbourhood: int = 3, bottleneck: int = 128, ensemble: int = 1, tuned_stages: int = 0,
                 fine_head: Optional[dict] = None) -> None:
        super().__init__()
        if window <= 0 or window % FEATURE_STRIDE:
            raise ValueError(f"window must be a positive multiple of {FEATURE_STRIDE}, got {window}")
        self.backbone_name = backbone
        self.window = window
        self.cells = window // FEATURE_STRIDE
        if head not in HEAD_TYPES:
            raise ValueError(f"head must be one of {HEAD_TYPES}, got {head!r}")
        self.head_type = head
        self.features = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
        channels = self.features.out_channels
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1 heads, got {ensemble}")

        if tuned_stages and head != "cell":
            raise ValueError("tuned last stages go with the cell head")

        def make_head() -> nn.Module:
            if head == "cell":
                cell = CellHead(channels, num_classes, hidden, neighbourhood, bottleneck, dropout)
                return TunedTailHead(TunedStages(self.features, tuned_stages), cell) if tuned_stages else cell
            return WindowHead(channels, num_classes, hidden, self.cells, dropout, head_pooling)

        self.head: nn.Module = make_head() if ensemble == 1 else EnsembleHead([make_head() for _ in range(ensemble)])
        self.tuned_stages = tuned_stages
        self.fine: Optional[FineCellHead] = None
        if fine_head:
            if head != "cell" or not hasattr(self.features, "features_from"):
                raise ValueError("a finer head goes with the cell head on an EfficientNet-Lite backbone")
            frozen = TunedStages(self.features, tuned_stages) if tuned_stages else None
            self.fine = FineCellHead(self.features.channels_before(FINE_CUT) + channels, num_classes,
                                     fine_head["channels"], fine_head.get("hidden", hidden),
                                     fine_head.get("neighbourhood", neighbourhood),
                                     fine_head.get("bottleneck", bottleneck), fine_head.get("ensemble", 1), frozen,
                                     fine_head.get("weight", 1.0))
        if tuned_stages:
            self.features.cut = tuned_stages  # the heads apply their own last stages
        self._num_classes = num_classes

    @property
    def per_cell(self) -> bool:
        """True when the output has one value per 32 px cell (the cell head), False when it has
        one per window position (the window head)."""
        return self.head_type == "cell"

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def cell_px(self) -> int:
        """Input pixels per output cell of the cell head: 16 with a finer head, else 32."""
        return FEATURE_STRIDE // 2 if self.fine is not None else FEATURE_STRIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fine is None:
            return self.head(self.features(x))
        fine = self.features.features_before(x, FINE_CUT)  # one pass: the stride-16 features kept
        trunk = self.features.features_from(fine, FINE_CUT, self.tuned_stages)
        return with_finer_classes(self.head(trunk), self.fine(fine, trunk), self.fine.channels, self.fine.weight)

    @property
    def head_reach(self) -> int:
        """Cells on each side of a cell that the cell head's output reads (its neighbourhood's
        half width, widened by the tuned stages the heads hold, if any)."""
        if not self.per_cell:
            raise ValueError("head_reach is defined for the cell head only")
        reach = next(m for m in self.head.modules() if isinstance(m, CellHead)).neighbourhood // 2
        stages = next((m for m in self.head.modules() if isinstance(m, TunedStages)), None)
        return reach if stages is None else stages.reach(reach)

    @property
    def feature_scale(self) -> int:
        """Positions of ``self.features``'s output per cell along an axis (2 when the heads'
        tuned stages start at stride 16)."""
        stages = next((m for m in self.head.modules() if isinstance(m, TunedStages)), None)
        return 1 if stages is None else stages.scale

    def cell_logits(self, features: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """(B, classes, rows, cols) cell-head logits of one block of cells of a feature map: the
        head (every ensemble member with its own tuned stages, over the one shared frozen part)
        runs only on the block and the cells it reads (:attr:`head_reach`), not on the whole
        map. Equals ``self.head(features)[..., rows, cols]``: where the block touches the map's
        edge the head sees the same padding, and elsewhere nothing beyond its reach matters."""
        reach, scale = self.head_reach, self.feature_scale
        h, w = features.shape[-2] // scale, features.shape[-1] // scale
        r0, r1, _ = rows.indices(h)
        c0, c1, _ = cols.indices(w)
        top, left = max(r0 - reach, 0), max(c0 - reach, 0)
        bottom, right = min(r1 + reach, h), min(c1 + reach, w)
        logits = self.head(features[..., top * scale:bottom * scale, left * scale:right * scale])
        return logits[..., r0 - top:r1 - top, c0 - left:c1 - left]

    def classify(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, classes) logits of a batch of window-sized patches (for the cell head: its most
        confident cell, the window-level reading of a cell map)."""
        logits = self.forward(windows)
        return logits.amax(dim=(-2, -1)) if self.per_cell else logits.flatten(1)
