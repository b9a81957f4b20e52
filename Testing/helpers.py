"""Small models for tests: a tiny real model file, and a probe network whose output the
tests control (it reports bright blobs in the centre of a window as 'Mass')."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from MammoPatchLib.model_file import LoadedModel, ModelInfo, build_network, save_model


def tiny_model_file(path: Path, backbone: str = "efficientnet-lite0", spacing_mm=None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    info = ModelInfo(backbone=backbone, spacing_mm=spacing_mm, trained=False, description="test model")
    save_model(build_network(info), info, path)
    return path


class BrightCentreProbe(nn.Module):
    """Logit of class 0 ('Mass') rises with the mean of channel 0 in the window's central
    64 x 64 px; other classes are strongly negative. ``dense_forward`` is the same rule
    evaluated at every 32 px window position."""

    window = 256

    def __init__(self, level: float = 0.62, gain: float = 40.0, num_classes: int = 10):
        super().__init__()
        self.level, self.gain, self.n = level, gain, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def _logits(self, centre_mean: torch.Tensor) -> torch.Tensor:
        shape = (centre_mean.shape[0], self.n, *centre_mean.shape[1:])
        logits = torch.full(shape, -20.0, dtype=centre_mean.dtype)
        logits[:, 0] = self.gain * (centre_mean - self.level)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x[:, 0, 96:160, 96:160].mean(dim=(1, 2)))

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = F.avg_pool2d(x[:, :1, 96:, 96:], kernel_size=64, stride=32)[:, 0]
        gh, gw = (x.shape[-2] - 256) // 32 + 1, (x.shape[-1] - 256) // 32 + 1
        return self._logits(centre[:, :gh, :gw])


def probe_model(thresholds=None, spacing_mm=None) -> LoadedModel:
    info = ModelInfo(spacing_mm=spacing_mm, thresholds=thresholds or [0.3] + [0.5] * 9, trained=False)
    return LoadedModel(network=BrightCentreProbe().eval(), info=info, path="<probe>", sha256="")
