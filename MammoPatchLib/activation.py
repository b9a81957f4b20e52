"""Activation maps like the poster's figure: Grad-CAM (MONAI's ``monai.visualize.GradCAM``) of a
finding's class over the 256 px window centred on the finding, on the backbone's stride-32
feature map, mapped back onto the source image.

``activation_maps`` returns, per finding, the map at every source pixel (zero outside the
window) and an RGB picture of the window with the map over it; ``write_activation_maps``
writes them beside the heatmaps as ``activation_<n>_<class>.nrrd`` / ``.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

from .vocabulary import PathLike


class _WindowClassifier(nn.Module):
    """(B, 3, 256, 256) -> (B, classes) logits, with the backbone reachable as ``features``
    (the layer Grad-CAM hooks)."""

    def __init__(self, network) -> None:
        super().__init__()
        self.features = network.features
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.classify(x)  # one logit per class (the cell head: its strongest cell)


@dataclass
class ActivationMap:
    finding_index: int
    category: str
    source_map: np.ndarray  # (H, W) in [0, 1], zero outside the window
    window_box_px: Tuple[int, int, int, int]  # the window in source pixels (xmin, ymin, xmax, ymax)
    picture: np.ndarray  # (256, 256, 3) uint8: the window with the map over it


def activation_maps(predictor, image, result, count: int = 3) -> List[ActivationMap]:
    """Grad-CAM maps for the ``count`` highest-scoring findings of ``result``."""
    from monai.visualize import GradCAM
    from scipy.ndimage import map_coordinates

    from .patches.sampling import crop_and_resize
    from .visualize import inferno

    info = predictor.model.info
    prepared = predictor.preprocess(image)
    tensor = prepared.tensor.as_tensor().float()
    window = info.window
    network = _WindowClassifier(predictor.model.network).to("cpu").float().eval()
    cam = GradCAM(nn_module=network, target_layers="features")
    out: List[ActivationMap] = []
    height, width = image.shape
    for index, finding in enumerate(result.findings[:count]):
        (row, col), = prepared.to_processed(np.array([[finding.peak_px[1], finding.peak_px[0]]]))
        region = (col - window / 2, row - window / 2, col + window / 2, row + window / 2)
        crop = crop_and_resize(tensor, region, window)
        with torch.enable_grad():
            activation = cam(crop[None].requires_grad_(True), class_idx=info.classes.index(finding.category))
        activation = np.asarray(activation.detach()[0, 0], dtype=np.float32)
        # source pixels -> window pixels through the chain's index matrix
        rows, cols = np.mgrid[0:height, 0:width]
        processed = prepared.to_processed(np.stack([rows.ravel(), cols.ravel()], axis=1))
        wr = processed[:, 0] - (row - window / 2) - 0.5
        wc = processed[:, 1] - (col - window / 2) - 0.5
        inside = (wr >= -0.5) & (wr <= window - 0.5) & (wc >= -0.5) & (wc <= window - 0.5)
        values = np.zeros(rows.size, dtype=np.float32)
        values[inside] = map_coordinates(activation, [wr[inside], wc[inside]], order=1, mode="nearest")
        source_map = values.reshape(height, width)
        ys, xs = np.nonzero(inside.reshape(height, width))
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if len(xs) else (0, 0, 0, 0)
        grey = crop[0].numpy()
        grey = (255 * (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-6)).astype(np.float32)
        colour = inferno(activation).astype(np.float32)
        picture = (0.55 * grey[..., None] + 0.45 * colour).clip(0, 255).astype(np.uint8)
        out.append(ActivationMap(index, finding.category, source_map, box, picture))
    return out


def write_activation_maps(maps: List[ActivationMap], geometry, out_dir: PathLike) -> List[str]:
    """``activation_<n>_<class>.nrrd`` (source geometry) and ``.png`` (the window) per map."""
    from .io import write_png, write_volume
    from .results.files import class_slug

    written = []
    for item in maps:
        stem = Path(out_dir) / f"activation_{item.finding_index + 1}_{class_slug(item.category)}"
        written.append(write_volume(item.source_map, geometry, f"{stem}.nrrd"))
        written.append(write_png(item.picture, f"{stem}.png"))
    return written
