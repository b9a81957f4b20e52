"""Train a cell head on cached frozen-backbone features, and turn it into a model.

The head (:class:`~MammoPatchLib.networks.CellHead`) is a 1 x 1 bottleneck, a
``neighbourhood``-wide convolution and a 1 x 1 output. With the backbone frozen:

1. the bottleneck is fitted once, without labels, as the whitened principal components of the
   training images' features (so 1280 channels become ``bottleneck`` well-conditioned ones);
2. every cell's ``neighbourhood x neighbourhood`` block of bottleneck features is gathered
   (``F.unfold``, with the same zero padding as the convolution), so the convolution
   becomes a plain MLP over those vectors: once for every image here, or batch by batch
   from crops read off disk (:func:`~.stage_fit.fit_streamed_head`, the cell head's way);
3. each epoch draws every positive cell and a sample of negative cells (uniform, or partly
   among the highest-scoring negatives: hard-negative rounds), with the poster's focal loss;
4. the MLP's weights are reshaped back into the head's convolutions, so the model file's
   network gives, on a whole image, exactly the cells trained and evaluated here.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..networks import CellHead
from .recipe import Recipe
from .cell_targets import cell_targets
from .feature_cache import CachedImage
from .other_breast_features import combine, combined_images

logger = logging.getLogger(__name__)


@dataclass
class Projection:
    """The fitted bottleneck: ``(x - mean) @ components.T / scale`` per cell."""

    weight: torch.Tensor  # (bottleneck, C): components / scale
    bias: torch.Tensor  # (bottleneck,)


def fit_projection(images: Sequence[CachedImage], bottleneck: int, max_cells: int = 12000,
                   seed: int = 0, read: Optional[Callable[[CachedImage], torch.Tensor]] = None) -> Projection:
    """Whitened principal components of a sample of the images' feature cells, read one image
    at a time (``read``: an image's features, default :meth:`CachedImage.load`)."""
    read = read or (lambda image: image.load())
    rng = np.random.default_rng(seed)
    per_image = max(1, max_cells // max(len(images), 1))
    picked = []
    for im in images:  # an even sample of every image's cells (both views)
        features = read(im)
        flat = features.flatten(2).permute(0, 2, 1).reshape(-1, features.shape[1])
        picked.append(flat[torch.as_tensor(rng.choice(len(flat), min(per_image, len(flat)), replace=False))])
    cells = torch.cat(picked).float()
    mean = cells.mean(0)
    centred = cells - mean
    covariance = (centred.T @ centred).double() / max(len(cells) - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    keep = min(bottleneck, len(cells))
    order = torch.argsort(eigenvalues, descending=True)[:keep]
    floor = float(eigenvalues.max().clamp(min=1e-12)) * 1e-6  # rank-deficient samples: no blow-up
    scale = eigenvalues[order].clamp(min=floor).sqrt().float()
    weight = eigenvectors[:, order].T.float() / scale[:, None]
    if keep < bottleneck:  # fewer cells than components: pad with zero components
        weight = torch.cat([weight, torch.zeros(bottleneck - keep, weight.shape[1])])
    return Projection(weight=weight, bias=-(weight @ mean))


#: Cells per side of a window (256 px / 32 px): what the poster's window head averages.
WINDOW_CELLS = 8


def neighbourhood_vectors(features: torch.Tensor, projection: Projection, neighbourhood: int) -> torch.Tensor:
    """(V, C, gh, gw) features -> (V, gh * gw, bottleneck * n * n) float16 block vectors, in
    the order ``nn.Conv2d`` flattens its kernel (channel, row, column)."""
    reduced = F.conv2d(features.float(), projection.weight[:, :, None, None], projection.bias)
    blocks = F.unfold(reduced, neighbourhood, padding=neighbourhood // 2)
    return blocks.permute(0, 2, 1).contiguous().half()


def window_vectors(features: torch.Tensor, projection: Projection) -> torch.Tensor:
    """(V, C, gh, gw) features -> (V, windows, bottleneck) float16: the mean of each window's
    8 x 8 cells (every window position at a 32 px stride), as the poster's window head sees it."""
    reduced = F.conv2d(features.float(), projection.weight[:, :, None, None], projection.bias)
    pooled = F.avg_pool2d(reduced, WINDOW_CELLS, stride=1)
    return pooled.flatten(2).permute(0, 2, 1).contiguous().half()


def head_grid(grid_shape: Tuple[int, int], head: str) -> Tuple[int, int]:
    """The grid the head scores: every cell, or every window position."""
    if head == "window":
        return grid_shape[0] - WINDOW_CELLS + 1, grid_shape[1] - WINDOW_CELLS + 1
    return grid_shape


def head_vectors(features: torch.Tensor, projection: Projection, head: str, neighbourhood: int) -> torch.Tensor:
    if head == "window":
        return window_vectors(features, projection)
    return neighbourhood_vectors(features, projection, neighbourhood)


class CellMLP(nn.Module):
    """The head after the bottleneck, as an MLP over gathered block vectors."""

    def __init__(self, inputs: int, hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.linear = hidden == 0
        self.hidden = nn.Linear(inputs, hidden or classes)
        self.dropout = nn.Dropout(dropout)
        self.out: nn.Module = nn.Identity() if self.linear else nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            return self.hidden(self.dropout(x))
        return self.out(self.dropout(torch.relu(self.hidden(x))))


@dataclass
class FittedCellHead:
    """A trained head: its bottleneck and MLP, and how to score cached images with it."""

    projection: Projection
    mlp: CellMLP
    neighbourhood: int
    classes: List[str]
    head: str = "cell"
    tail: Optional[nn.Module] = None  # tuned last stages: the cached features are then those before them
    other_breast_input: str = "none"  # the recipe's: images are then PairedImage

    @torch.no_grad()
    def cell_logits(self, image: CachedImage, views: int = 2) -> torch.Tensor:
        """(views, classes, gh, gw) logits of the image (and of its mirror, in mirrored
        coordinates) from its cached features: per cell, or per window position for the
        window head."""
        self.mlp.eval()
        features = image.load()[:views]
        if self.tail is not None:
            features = self.tail.eval()(features.float())
        if self.other_breast_input != "none":
            other = image.other[:views]
            if self.tail is not None:
                other = self.tail(other.float())
            features = combine(features, other, self.other_breast_input)
        vectors = head_vectors(features, self.projection, self.head, self.neighbourhood)
        logits = self.mlp(vectors.float())
        gh, gw = head_grid(image.grid_shape, self.head)
        return logits.permute(0, 2, 1).reshape(views, -1, gh, gw)

    def cell_probabilities(self, image: CachedImage, flip_tta: bool) -> torch.Tensor:
        """(classes, gh, gw) cell probabilities, averaged with the mirror image's when
        ``flip_tta``; the window head's are stitched as the dense pass stitches them."""
        logits = self.cell_logits(image, views=2 if flip_tta else 1)
        probs = torch.sigmoid(logits)
        if flip_tta:
            probs = 0.5 * (probs[0] + torch.flip(probs[1], dims=(-1,)))
        else:
            probs = probs[0]
        if self.head == "window":
            from ..inference.windows import blend_kernel, stitch_window_grid

            probs = stitch_window_grid(probs[None], blend_kernel())[0]
        return probs

    def state(self) -> Dict[str, Any]:
        """The head as tensors and plain values, no pickled module: what ``torch.save`` writes
        and a ``weights_only`` load reads back (:meth:`from_state`)."""
        return {"projection_weight": self.projection.weight, "projection_bias": self.projection.bias,
                "mlp": self.mlp.state_dict(), "inputs": self.mlp.hidden.in_features,
                "hidden": 0 if self.mlp.linear else self.mlp.hidden.out_features, "dropout": self.mlp.dropout.p,
                "neighbourhood": self.neighbourhood, "classes": list(self.classes), "head": self.head,
                "tail": None if self.tail is None else self.tail.state_dict(),
                "other_breast_input": self.other_breast_input}

    @classmethod
    def from_state(cls, state: Dict[str, Any], tail: Optional[nn.Module] = None) -> "FittedCellHead":
        """The head :meth:`state` describes. ``tail``: a module shaped like its tuned stages (the
        pretrained ones), copied and given the saved weights; needed only when it has some."""
        mlp = CellMLP(state["inputs"], state["hidden"], len(state["classes"]), state["dropout"])
        mlp.load_state_dict(state["mlp"])
        tuned = None
        if state["tail"] is not None:
            if tail is None:
                raise ValueError("this head tunes backbone stages: give a module of their shape to load them into")
            tuned = copy.deepcopy(tail)
            tuned.load_state_dict(state["tail"])
            tuned.eval()
        return cls(Projection(state["projection_weight"], state["projection_bias"]), mlp.eval(),
                   state["neighbourhood"], list(state["classes"]), state["head"], tail=tuned,
                   other_breast_input=state["other_breast_input"])

    def to_head(self, in_channels: int) -> nn.Module:
        """The same head as the network's (eval mode): a :class:`CellHead`, or for the window
        head a mean-pooling :class:`WindowHead` with the bottleneck folded into its hidden layer."""
        if self.other_breast_input != "none":
            from ..errors import MammoPatchError

            raise MammoPatchError("a head that reads the other breast (other_breast_input) cannot be written into a "
                                  "model file: it is for cross-validation only")
        if self.head == "window":
            return self._to_window_head(in_channels)
        if self.tail is not None:
            return self._to_tuned_tail_head(in_channels)
        bottleneck = self.projection.weight.shape[0]
        hidden = 0 if self.mlp.linear else self.mlp.hidden.out_features
        head = CellHead(in_channels, len(self.classes), hidden, self.neighbourhood, bottleneck)
        n = self.neighbourhood
        with torch.no_grad():
            head.reduce.weight.copy_(self.projection.weight[:, :, None, None])
            head.reduce.bias.copy_(self.projection.bias)
            rows = self.mlp.hidden.out_features
            head.hidden.weight.copy_(self.mlp.hidden.weight.reshape(rows, bottleneck, n, n))
            head.hidden.bias.copy_(self.mlp.hidden.bias)
            if not self.mlp.linear:
                head.out.weight.copy_(self.mlp.out.weight[:, :, None, None])
                head.out.bias.copy_(self.mlp.out.bias)
        return head.eval()

    def _to_tuned_tail_head(self, in_channels: int) -> nn.Module:
        """A :class:`TunedTailHead`: this head's own tuned last stages, then its cell head."""
        import copy
        from dataclasses import replace

        from ..networks import TunedTailHead

        return TunedTailHead(copy.deepcopy(self.tail), replace(self, tail=None).to_head(in_channels)).eval()

    def _to_window_head(self, in_channels: int) -> nn.Module:
        from ..networks import WindowHead

        hidden = self.mlp.hidden.out_features
        head = WindowHead(in_channels, len(self.classes), hidden, WINDOW_CELLS, pooling="mean")
        with torch.no_grad():
            head.hidden.weight.copy_((self.mlp.hidden.weight @ self.projection.weight)[:, :, None, None])
            head.hidden.bias.copy_(self.mlp.hidden.weight @ self.projection.bias + self.mlp.hidden.bias)
            head.out.weight.copy_(self.mlp.out.weight[:, :, None, None])
            head.out.bias.copy_(self.mlp.out.bias)
        return head.eval()


def training_views(recipe: Recipe) -> int:
    """Views of each image trained on: the image, and its mirror when ``recipe.flip_augment``."""
    return 2 if recipe.flip_augment else 1


def target_rows(image: CachedImage, recipe: Recipe, classes: Sequence[str]
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(targets (N, K) fp16, masks (N, K) bool) of the image's cells (or window positions), one
    row per cell of each trained view in the order the head's vectors take them (view, row,
    column); the mirror's targets are mirrored."""
    views = training_views(recipe)
    size = WINDOW_CELLS * 32 if recipe.head == "window" else 0
    grid = head_grid(image.grid_shape, recipe.head)
    targets, mask = cell_targets(image.record, image.geometry, grid, classes, recipe.classes,
                                 radius_px=recipe.radius_px, extent=recipe.extent, ignore_px=recipe.ignore_px,
                                 size=size)
    t = torch.from_numpy(targets)
    m = torch.from_numpy(mask)
    t_views = torch.stack([t, torch.flip(t, dims=(-1,))][:views])
    m_views = torch.stack([m, torch.flip(m, dims=(-1,))][:views])
    return (t_views.flatten(2).permute(0, 2, 1).reshape(-1, len(classes)).half(),
            m_views.flatten(2).permute(0, 2, 1).reshape(-1, len(classes)))


def training_cells(images: Sequence[CachedImage], projection: Projection, recipe: Recipe,
                   classes: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vectors (N, D) fp16, targets (N, K) fp16, masks (N, K) bool) of every cell of the
    images (and of their mirrors when ``recipe.flip_augment``)."""
    views = training_views(recipe)
    xs, ts, ms = [], [], []
    for image in images:
        vectors = head_vectors(image.load()[:views], projection, recipe.head, recipe.neighbourhood)
        xs.append(vectors.reshape(-1, vectors.shape[-1]))
        targets, masks = target_rows(image, recipe, classes)
        ts.append(targets)
        ms.append(masks)
    return torch.cat(xs), torch.cat(ts), torch.cat(ms)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The poster's focal loss, averaged over the cells and classes that count."""
    from monai.losses import FocalLoss

    per_cell = FocalLoss(gamma=gamma, use_softmax=False, reduction="none")(logits, targets)
    weight = mask.float()
    return (per_cell * weight).sum() / weight.sum().clamp(min=1.0)


def split_rows(targets: torch.Tensor, masks: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
    """(positive rows, negative rows): cells positive for a class that counts there, and cells
    where some class counts and none is positive."""
    positive = ((targets > 0.5) & masks).any(1)
    return (torch.nonzero(positive).flatten().numpy(),
            torch.nonzero(~positive & masks.any(1)).flatten().numpy())


def train_epochs(model: nn.Module, forward: Callable[[List[np.ndarray]], Iterable[torch.Tensor]],
                 targets: torch.Tensor,
                 masks: torch.Tensor, positive_rows: np.ndarray, negative_rows: np.ndarray, recipe: Recipe,
                 epochs: int, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
                 schedule: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
                 hard_scores: Optional[Callable[[], np.ndarray]] = None) -> None:
    """The epoch loop every cell head trains with: each epoch takes every positive row and
    ``negatives_per_epoch`` negative ones (partly the highest-scoring, re-scored every five
    epochs, from ``hard_negative_after`` on, when ``hard_scores`` is given), shuffled, in
    batches of ``batch_cells``, with the focal loss; ``forward(batches)`` gives each batch's
    logits in turn (computed as they are asked for, so a streamed fit reads them meanwhile)."""
    n_neg = min(recipe.negatives_per_epoch, len(negative_rows))
    scores: Optional[np.ndarray] = None
    for epoch in range(epochs):
        if hard_scores is not None and epoch >= recipe.hard_negative_after and (scores is None or epoch % 5 == 0):
            scores = hard_scores()
        negatives = _draw_negatives(negative_rows, n_neg, rng, scores, recipe.hard_negative_share)
        rows = rng.permutation(np.concatenate([positive_rows, negatives]))
        batches = [rows[start:start + recipe.batch_cells] for start in range(0, len(rows), recipe.batch_cells)]
        model.train()
        for rows_of_batch, logits in zip(batches, forward(batches)):
            batch = torch.as_tensor(rows_of_batch)
            loss = focal_loss(logits, targets[batch].float(), masks[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        if schedule is not None:
            schedule.step()


def fit_cell_head(images: Sequence[CachedImage], recipe: Recipe, classes: Sequence[str],
                  seed: Optional[int] = None) -> FittedCellHead:
    """Train a head on ``images`` (their cached features) with ``recipe``; ``classes`` are the
    model's outputs (the recipe's classes are trained, the others ignored).

    Every training cell's block vector is held in memory: what the window head (one vector of
    a bottleneck's width per window) and a head reading the other breast (pairs aligned in
    memory) train with; a cell head streams them instead
    (:func:`~.stage_fit.fit_streamed_head`, which gives the same head)."""
    seed = recipe.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = combined_images(images, recipe.other_breast_input)
    projection = fit_projection(images, recipe.bottleneck, seed=seed)
    x, t, m = training_cells(images, projection, recipe, classes)
    positive_rows, negative_rows = split_rows(t, m)
    mlp = CellMLP(x.shape[1], recipe.hidden, len(classes), recipe.dropout)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=recipe.epochs)
    hard_scores = (lambda: _negative_scores(mlp, x, m, negative_rows)) if recipe.hard_negative_share > 0 else None
    train_epochs(mlp, lambda batches: (mlp(x[torch.as_tensor(b)].float()) for b in batches), t, m, positive_rows, negative_rows, recipe,
                 recipe.epochs, optimiser, rng, schedule=schedule, hard_scores=hard_scores)
    return FittedCellHead(projection, mlp.eval(), recipe.neighbourhood, list(classes), recipe.head,
                          other_breast_input=recipe.other_breast_input)


@torch.no_grad()
def _negative_scores(mlp: CellMLP, x, m, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Each negative cell's highest probability over the classes that count there."""
    mlp.eval()
    scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        index = torch.as_tensor(rows[start:start + chunk])
        probs = torch.sigmoid(mlp(x[index].float())) * m[index]
        scores[start:start + len(index)] = probs.max(1).values.numpy()
    return scores


def _draw_negatives(rows: np.ndarray, n: int, rng: np.random.Generator, scores: Optional[np.ndarray],
                    hard_share: float) -> np.ndarray:
    if scores is None or hard_share <= 0:
        return rng.choice(rows, n, replace=False)
    n_hard = int(round(n * hard_share))
    hardest = rows[np.argsort(-scores)[:4 * n_hard]]  # the hardest quarter-pool, drawn from at random
    hard = rng.choice(hardest, min(n_hard, len(hardest)), replace=False)
    rest = rng.choice(np.setdiff1d(rows, hard, assume_unique=False), n - len(hard), replace=False)
    return np.concatenate([hard, rest])
