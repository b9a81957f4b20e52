"""Test helpers: a tiny real model file, a probe network whose output the
tests control (it reports bright blobs in the centre of a window as 'Mass'), and child processes."""

from __future__ import annotations

from pathlib import Path
from typing import List

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
    """A fully-convolutional test network with a known answer: the logit of class 0 ('Mass')
    rises with the mean of channel 0 in each window's central 64 x 64 px; other classes are
    strongly negative. Like the real network, a (B, 3, 256 + 32 i, 256 + 32 j) input gives
    (B, classes, i + 1, j + 1): one value per 256 px window at a 32 px stride. It sees no
    zero padding, so exact and fast modes must agree exactly."""

    window = 256

    def __init__(self, level: float = 0.62, gain: float = 40.0, num_classes: int = 10):
        super().__init__()
        self.level, self.gain, self.n = level, gain, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = F.avg_pool2d(x[:, :1, 96:, 96:].float(), kernel_size=64, stride=32)[:, 0]
        gh, gw = (x.shape[-2] - 256) // 32 + 1, (x.shape[-1] - 256) // 32 + 1
        centre = centre[:, :gh, :gw]
        logits = torch.full((centre.shape[0], self.n, gh, gw), -20.0, dtype=centre.dtype, device=x.device)
        logits[:, 0] = self.gain * (centre - self.level)
        return logits


def probe_model(thresholds=None, spacing_mm=None, level: float = 0.62) -> LoadedModel:
    """The probe as a loaded model; a ``level`` above 1 reports nothing on any image."""
    info = ModelInfo(spacing_mm=spacing_mm, thresholds=thresholds or [0.3] + [0.5] * 9, trained=False)
    return LoadedModel(network=BrightCentreProbe(level=level).eval(), info=info, path="<probe>", sha256="")


def child_pids(pid: int) -> List[int]:
    """The processes whose parent is ``pid``, read from Linux's /proc (the tests that signal a
    worker started in a session of its own find it here)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
