"""The poster's classifier: backbone features -> flattened -> 512 -> ReLU -> 10 logits.

The backbone's (C, 8, 8) map of a 256 px window is average-pooled to C values and flattened
(the poster flattens the backbone output; pooling first keeps the head at C x 512 weights
instead of 64 C x 512, and makes it valid at every window of a dense feature map). Sigmoid
is applied at inference: the task is multi-label.

``dense_forward`` turns the head into convolutions: an 8 x 8 stride-1 average pool over the
whole image's feature map and two 1 x 1 convolutions give, in one pass, the logits of every
256 px window at a 32 px stride.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import DEFAULT_BACKBONE, FEATURE_STRIDE, build_backbone


class PatchClassifier(nn.Module):
    """Multi-label patch classifier.

    Args:
        backbone: registered backbone name.
        num_classes: outputs (10 VinDr classes).
        hidden: units of the head's hidden layer (512 in the poster).
        dropout: dropout before the hidden layer while training.
        pretrained: load offline ImageNet weights into the backbone (EfficientNet-Lite).
        backbone_weights: local state dict file for the backbone.
        window: patch side in pixels (256 in the poster).

    Shapes: ``forward`` (B, 3, window, window) -> (B, num_classes) logits;
    ``dense_forward`` (B, 3, H, W) with H, W = window + k * 32 -> (B, num_classes, gh, gw).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, num_classes: int = 10, hidden: int = 512,
                 dropout: float = 0.2, pretrained: bool = False, backbone_weights: Optional[str] = None,
                 window: int = 256) -> None:
        super().__init__()
        if window % FEATURE_STRIDE:
            raise ValueError(f"window must be a multiple of {FEATURE_STRIDE}, got {window}")
        self.backbone_name = backbone
        self.window = window
        self.features = build_backbone(backbone, pretrained=pretrained, weights=backbone_weights)
        channels = self.features.out_channels
        self.head = nn.Sequential(
            nn.Flatten(1), nn.Dropout(dropout), nn.Linear(channels, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    @property
    def num_classes(self) -> int:
        return self.head[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.head(pooled)

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        cells = self.window // FEATURE_STRIDE
        pooled = F.avg_pool2d(features, kernel_size=cells, stride=1)
        hidden, out = self.head[2], self.head[4]
        h = F.conv2d(pooled, hidden.weight[:, :, None, None], hidden.bias)
        return F.conv2d(torch.relu(h), out.weight[:, :, None, None], out.bias)
