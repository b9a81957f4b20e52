"""Fine-tune the backbone's last stage with a cell head, on cached trunk features.

EfficientNet-Lite's last stage (a 1 x 1 convolution from the trunk's 320 channels to 1280,
batch norm, activation) is cheap enough to train on two CPU cores when the trunk's features
are cached once per image (``feature_cache.build_cache(cut=1)``):

1. the head is first trained exactly as with a frozen backbone (:func:`fit_cell_head`), on the
   pretrained last stage's output;
2. then, for ``tail_epochs``, a copy of the last stage, the bottleneck and the MLP train
   together: each sampled cell's ``neighbourhood x neighbourhood`` block of trunk features goes
   through the last stage and the bottleneck, the block positions outside the image are zeroed
   (the zero padding of the network's convolution), and the MLP scores it. The last stage
   learns at ``tail_learning_rate``, the head at a twentieth of its own rate.

The result is a :class:`FittedCellHead` with ``tail`` set: it scores cached trunk features,
and becomes the network's :class:`~MammoPatchLib.networks.TunedTailHead`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..networks import TunedStages
from .cell_head_fit import (FittedCellHead, Projection, fit_cell_head, split_rows, target_rows, train_epochs,
                            training_views)
from .recipe import Recipe
from .feature_cache import CachedImage
from .other_breast_features import PairedImage, combine

#: The head's learning rate while the last stage trains, as a share of the recipe's.
HEAD_RATE_WHILE_TUNING = 0.05


def trunk_blocks(images: Sequence[CachedImage], recipe: Recipe, classes: Sequence[str]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blocks (N, C * n * n) fp16, inside (N, n * n) bool, targets (N, K), masks (N, K)) of
    every cell of the images (and of their mirrors when ``recipe.flip_augment``)."""
    n = recipe.neighbourhood
    views = training_views(recipe)
    xs, inside, ts, ms = [], [], [], []
    for image in images:
        trunk = image.features[:views].float()
        blocks = F.unfold(trunk, n, padding=n // 2)  # (views, C * n * n, cells), channel-major
        xs.append(blocks.permute(0, 2, 1).reshape(-1, blocks.shape[1]).half())
        ones = F.unfold(torch.ones(1, 1, *trunk.shape[-2:]), n, padding=n // 2)[0]  # (n * n, cells)
        inside.append(ones.T.bool().repeat(views, 1))
        targets, masks = target_rows(image, recipe, classes)
        ts.append(targets)
        ms.append(masks)
    return torch.cat(xs), torch.cat(inside), torch.cat(ts), torch.cat(ms)


def other_trunk_blocks(images: Sequence[PairedImage], recipe: Recipe) -> torch.Tensor:
    """(N, C * n * n) fp16 blocks of the aligned other breast's trunk features, row for row
    with :func:`trunk_blocks` (``recipe.other_breast_input``)."""
    n = recipe.neighbourhood
    views = training_views(recipe)
    blocks = [F.unfold(image.other[:views].float(), n, padding=n // 2) for image in images]
    return torch.cat([b.permute(0, 2, 1).reshape(-1, b.shape[1]).half() for b in blocks])


class _TunedCells(nn.Module):
    """Last stage, bottleneck and MLP over gathered blocks of trunk features."""

    def __init__(self, tail: TunedStages, projection: Projection, mlp: nn.Module, neighbourhood: int,
                 other_breast_input: str = "none") -> None:
        super().__init__()
        self.other_breast_input = other_breast_input
        self.tail = tail
        self.weight = nn.Parameter(projection.weight.clone())
        self.bias = nn.Parameter(projection.bias.clone())
        self.mlp = mlp
        self.positions = neighbourhood * neighbourhood

    def forward(self, blocks: torch.Tensor, inside: torch.Tensor, other: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        b = blocks.shape[0]
        features = self._last_stage(blocks)  # (b, channels, n * n)
        if other is not None:  # the aligned other breast, through the same last stage
            features = combine(features, self._last_stage(other), self.other_breast_input)
        reduced = torch.einsum("kc,bcp->bkp", self.weight, features) + self.bias[None, :, None]
        reduced = reduced * inside[:, None, :].float()  # zero padding of the reduced map
        return self.mlp(reduced.reshape(b, -1))

    def _last_stage(self, blocks: torch.Tensor) -> torch.Tensor:
        trunk = blocks.float().reshape(blocks.shape[0], -1, self.positions)
        return self.tail(trunk[..., None])[..., 0]


def fit_tuned_tail_head(images: Sequence[CachedImage], recipe: Recipe, classes: Sequence[str],
                        pretrained_tail: TunedStages, seed: int) -> FittedCellHead:
    """A head and its own last stage, trained on ``images`` (cached trunk features)."""
    with torch.no_grad():
        pretrained_tail.eval()
        frozen = [replace(im, features=pretrained_tail(im.features.float()).half(),
                          **({"other": pretrained_tail(im.other.float()).half()}
                             if isinstance(im, PairedImage) else {}))
                  for im in images]
    head = fit_cell_head(frozen, recipe, classes, seed=seed)
    del frozen
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    x, inside, t, m = trunk_blocks(images, recipe, classes)
    x_other = other_trunk_blocks(images, recipe) if recipe.other_breast_input != "none" else None
    positive_rows, negative_rows = split_rows(t, m)
    model = _TunedCells(copy.deepcopy(pretrained_tail), head.projection, head.mlp, recipe.neighbourhood,
                        recipe.other_breast_input)
    optimiser = torch.optim.Adam([
        {"params": model.tail.parameters(), "lr": recipe.tail_learning_rate},
        {"params": [model.weight, model.bias, *model.mlp.parameters()],
         "lr": recipe.learning_rate * HEAD_RATE_WHILE_TUNING}], weight_decay=recipe.weight_decay)
    train_epochs(model, lambda batch: model(x[batch], inside[batch], None if x_other is None else x_other[batch]),
                 t, m, positive_rows, negative_rows, recipe,
                 recipe.tail_epochs, optimiser, rng)
    model.eval()
    projection = Projection(model.weight.detach().clone(), model.bias.detach().clone())
    return FittedCellHead(projection, model.mlp.eval(), recipe.neighbourhood, list(classes), "cell",
                          tail=model.tail.eval(), other_breast_input=recipe.other_breast_input)
