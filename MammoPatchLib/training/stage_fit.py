"""Fine-tune the backbone's last stages with a cell head, streamed from cached features.

A recipe with ``trains: "stages"`` tunes EfficientNet-Lite's last ``tune_stages`` stages (1: the
1 x 1 head convolution; 2: also the last block group; 3: also the block group before it, which
steps from stride 16 to 32) from features cached once per image before the first tuned stage
(``feature_cache.build_cache(cut=recipe.feature_cut)``, one fp16 file per image and mirror):

1. the head is first trained exactly as with a frozen backbone, on the pretrained stages'
   output: streamed (:func:`fit_streamed_head`, the stages run without gradients on each
   crop), or for a head reading the other breast held in memory (:func:`frozen_outputs`,
   :func:`fit_cell_head`);
2. then, for ``tail_epochs``, a copy of the tuned stages, the bottleneck and the MLP train
   together (the stages at ``tail_learning_rate``, the head at a twentieth of its rate). A
   torch DataLoader's workers read the cached features of each batch's images from their
   files (:class:`StageCrops`; the cached features are never all in memory) and cut crops: a box of
   cells grown by the stages' and the head's reach
   (:meth:`~MammoPatchLib.networks.TunedStages.reach`: 1 cell for the head convolution with
   a 3 x 3 head, 2 with the last block group, 9 with the stride-16 group too), clipped to the
   feature map. The stages run on the crops (stacked where they share a shape), the head on
   their output, and only the batch's cells are scored.

Margins and padding: every scored cell lies at least the reach inside each crop edge that is
not an edge of the image, so nothing outside the crop can change it; where the box was
clipped, the crop edge is the image edge, and the stages' own padding (the package's static
"same" padding, the head's zero padding) is the whole-image network's. Crops start on whole
cells, so a stride-2 block sees the pixel phase it sees in the whole image, and every batch
norm keeps its running statistics. A scored cell's logit is therefore the one the model
file's network computes on the whole image (the tests check it to float tolerance).

What a batch holds (:func:`plan_epochs`) depends on how wide the crops are. With the last
stage alone a cell's crop is 3 x 3 cells: each epoch draws every positive cell and
``negatives_per_epoch`` negatives, shuffled, ``batch_cells`` to a batch, one crop per cell:
the draw of :func:`~.cell_head_fit.train_epochs`. With deeper stages a crop is most of a
view, so a view's cells share one crop and every counting cell of it is scored, views in a
random order, a batch closing at ``batch_cells`` cells (about one view), negatives weighted by
the chance the draw would take them; one epoch then takes about as many optimiser steps as
ten of the narrow draw.

The result is a :class:`FittedCellHead` with ``tail`` set: it scores cached features, and
becomes the network's :class:`~MammoPatchLib.networks.TunedTailHead`.
"""

from __future__ import annotations

import copy
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..networks import TunedStages
from .cell_head_fit import (CellMLP, FittedCellHead, Projection, _draw_negatives, fit_cell_head, fit_projection,
                            focal_loss, neighbourhood_vectors, split_rows, target_rows, train_epochs,
                            training_views)
from .feature_cache import CachedImage
from .other_breast_features import PairedImage, combine
from .recipe import Recipe

#: The head's learning rate while the stages train, as a share of the recipe's.
HEAD_RATE_WHILE_TUNING = 0.05

#: Bytes of cached features each DataLoader worker keeps of the images it read last (a
#: least-recently-used store; 0: read every crop's file again).
WORKER_CACHE_BYTES = 256 * 2 ** 20


@dataclass(frozen=True)
class Group:
    """One image view's share of a batch: its sampled cells (rows of the fit's targets, and
    their (row, col) cells) and the crop of cells that holds them with their reach."""

    image: int
    view: int
    rows: np.ndarray  # (k,) rows of the targets
    cells: np.ndarray  # (k, 2) cell row, col in the whole grid
    box: Tuple[int, int, int, int]  # top, bottom, left, right cells (bottom, right exclusive)


def crop_box(cells: np.ndarray, reach: int, grid: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """The cells' bounding box grown by ``reach`` cells and clipped to the grid."""
    return (max(int(cells[:, 0].min()) - reach, 0), min(int(cells[:, 0].max()) + reach + 1, grid[0]),
            max(int(cells[:, 1].min()) - reach, 0), min(int(cells[:, 1].max()) + reach + 1, grid[1]))


class RowIndex:
    """Where each target row lies: (image, view, cell row, cell col), for the images' rows in
    the order :func:`~.cell_head_fit.target_rows` gives them."""

    def __init__(self, grids: Sequence[Tuple[int, int]], views: int) -> None:
        self.grids = list(grids)
        sizes = [views * h * w for h, w in self.grids]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.views = views

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """(N, 4) image, view, row, col of each row."""
        image = np.searchsorted(self.starts, rows, side="right") - 1
        local = rows - self.starts[image]
        w = np.array([g[1] for g in self.grids])[image]
        h = np.array([g[0] for g in self.grids])[image]
        view, rest = np.divmod(local, h * w)
        r, c = np.divmod(rest, w)
        return np.stack([image, view, r, c], axis=1)


def groups_of(rows: np.ndarray, index: RowIndex, reach: int, by_view: bool) -> List[Group]:
    """The rows of one batch as :class:`Group` s: one per image view (``by_view``, in order of
    first row), or one per row (each cell its own crop)."""
    where = index.locate(rows)
    if not by_view:
        return [Group(int(w[0]), int(w[1]), rows[i:i + 1], w[None, 2:], crop_box(w[None, 2:], reach, index.grids[w[0]]))
                for i, w in enumerate(where)]
    keys = where[:, 0] * index.views + where[:, 1]
    _, first = np.unique(keys, return_index=True)
    groups = []
    for key in keys[np.sort(first)]:
        pick = keys == key
        image, view = int(key // index.views), int(key % index.views)
        cells = where[pick][:, 2:]
        groups.append(Group(image, view, rows[pick], cells, crop_box(cells, reach, index.grids[image])))
    return groups


def group_by_view(index: RowIndex, cells_per_epoch: int, reach: int) -> bool:
    """True when batches should gather whole views: when the views' feature maps hold fewer
    positions than ``cells_per_epoch`` separate crops of side ``2 reach + 1`` would."""
    whole = sum(h * w for h, w in index.grids) * index.views
    return whole < cells_per_epoch * (2 * reach + 1) ** 2


def epoch_batches(rows: np.ndarray, index: RowIndex, batch_cells: int, by_view: bool,
                  rng: np.random.Generator) -> List[np.ndarray]:
    """One epoch's drawn rows cut into batches: in their (shuffled) order, ``batch_cells`` at a
    time; or, ``by_view``, whole views' rows in a random order of views, a batch closing once
    it holds ``batch_cells``."""
    if not by_view:
        return [rows[i:i + batch_cells] for i in range(0, len(rows), batch_cells)]
    where = index.locate(rows)
    keys = where[:, 0] * index.views + where[:, 1]
    order = np.argsort(keys, kind="stable")
    keys, rows = keys[order], rows[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    views = np.split(rows, bounds)
    batches: List[np.ndarray] = []
    current: List[np.ndarray] = []
    for v in rng.permutation(len(views)):
        current.append(views[v])
        if sum(len(c) for c in current) >= batch_cells:
            batches.append(np.concatenate(current))
            current = []
    if current:
        batches.append(np.concatenate(current))
    return batches


@dataclass
class Bucket:
    """Crops of one shape from one batch, stacked: what one forward pass of the stages takes."""

    crops: torch.Tensor  # (B, C, h, w) fp16
    others: Optional[torch.Tensor]  # the aligned other breast's, or None
    rows: np.ndarray  # (k,) target rows of the scored cells
    columns: np.ndarray  # (k,) each scored cell's index in the B x cells of the stages' output

    @property
    def size(self) -> int:
        return len(self.rows)


class StageCrops(Dataset):
    """A DataLoader's view of a stage fit's batches: item ``i`` is batch ``i`` as a list of
    :class:`Bucket` s, its groups' crops of cached features (fp16, the cell box times the
    features' positions per cell) stacked by shape. A worker reads each image's cache entry
    (:meth:`CachedImage.load`) and keeps the last ones read, up to ``cache_bytes``."""

    def __init__(self, images: Sequence[CachedImage], batches: Sequence[List[Group]], scale: int,
                 other: bool = False, cache_bytes: int = WORKER_CACHE_BYTES) -> None:
        self.images, self.batches, self.scale, self.other = list(images), list(batches), scale, other
        self.cache_bytes = cache_bytes
        self._store: "OrderedDict[int, torch.Tensor]" = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def _features(self, image: int) -> torch.Tensor:
        if image in self._store:
            self._store.move_to_end(image)
            return self._store[image]
        features = self.images[image].load()
        if self.cache_bytes > 0:
            self._store[image] = features
            self._bytes += features.numel() * features.element_size()
            while self._bytes > self.cache_bytes and len(self._store) > 1:
                _, dropped = self._store.popitem(last=False)
                self._bytes -= dropped.numel() * dropped.element_size()
        return features

    def _cut(self, features: torch.Tensor, group: Group) -> torch.Tensor:
        top, bottom, left, right = (v * self.scale for v in group.box)
        return features[group.view, :, top:bottom, left:right]

    def __getitem__(self, i: int) -> List[Bucket]:
        shapes: "OrderedDict[Tuple[int, int], List[Group]]" = OrderedDict()
        for group in self.batches[i]:
            shapes.setdefault((group.box[1] - group.box[0], group.box[3] - group.box[2]), []).append(group)
        buckets = []
        for (h, w), groups in shapes.items():
            crops = torch.stack([self._cut(self._features(g.image), g) for g in groups])
            others = None
            if self.other:
                others = torch.stack([self._cut(self.images[g.image].other, g)
                                      if isinstance(self.images[g.image], PairedImage)
                                      else self._cut(self._features(g.image), g) for g in groups])
            rows = np.concatenate([g.rows for g in groups])
            columns = np.concatenate([b * h * w + (g.cells[:, 0] - g.box[0]) * w + (g.cells[:, 1] - g.box[2])
                                      for b, g in enumerate(groups)])
            buckets.append(Bucket(crops, others, rows, columns))
        return buckets


class TunedCells(nn.Module):
    """Tuned stages, bottleneck and MLP over stacked crops of cached features: (B, C, h', w')
    crops -> the logits of the requested cells (the head's zero padding at the crops' edges)."""

    def __init__(self, tail: TunedStages, projection: Projection, mlp: CellMLP, neighbourhood: int,
                 other_breast_input: str = "none") -> None:
        super().__init__()
        self.other_breast_input = other_breast_input
        self.tail = tail
        self.weight = nn.Parameter(projection.weight.clone())
        self.bias = nn.Parameter(projection.bias.clone())
        self.mlp = mlp
        self.neighbourhood = neighbourhood

    def forward(self, crops: torch.Tensor, columns: torch.Tensor, others: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """``crops`` (B, C, h', w'); ``columns`` (k,) cells as indices into the B x h x w cells
        of the stages' output -> (k, classes)."""
        features = self.tail(crops.float())
        if others is not None:  # the aligned other breast, through the same stages
            features = combine(features, self.tail(others.float()), self.other_breast_input)
        reduced = F.conv2d(features, self.weight[:, :, None, None], self.bias)
        n = self.neighbourhood
        blocks = F.unfold(reduced, n, padding=n // 2)  # (B, b * n * n, h * w), the conv's order
        vectors = blocks.permute(0, 2, 1).reshape(-1, blocks.shape[1])
        return self.mlp(vectors[columns])


def run_batch(model: TunedCells, batch: Sequence[Bucket], targets: torch.Tensor, weights: torch.Tensor) -> float:
    """Forward and backward of one batch, a bucket at a time (gradients accumulate, so memory
    holds one bucket's activations): the focal loss over the batch's cells, weighted by
    ``weights`` (N, K) (:func:`plan_epochs`), as one loss."""
    shares = [float(weights[torch.as_tensor(b.rows)].sum()) for b in batch]
    total = max(sum(shares), 1e-12)
    value = 0.0
    for bucket, share in zip(batch, shares):
        if share == 0:
            continue
        rows = torch.as_tensor(bucket.rows)
        logits = model(bucket.crops, torch.as_tensor(bucket.columns), bucket.others)
        loss = focal_loss(logits, targets[rows].float(), weights[rows]) * (share / total)
        loss.backward()
        value += float(loss.detach())
    return value


def _collate(batch):
    return batch


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def train_streamed(model: TunedCells, loader: Iterable, targets: torch.Tensor, weights: torch.Tensor,
                   optimiser: torch.optim.Optimizer) -> List[float]:
    """One optimiser step per batch the loader gives; returns each step's seconds (waiting for
    the batch included), for the benchmark."""
    model.train()
    seconds = []
    start = time.perf_counter()
    for batch in loader:
        optimiser.zero_grad(set_to_none=True)
        run_batch(model, batch, targets, weights)
        optimiser.step()
        now = time.perf_counter()
        seconds.append(now - start)
        start = now
    model.eval()
    return seconds


def plan_epochs(targets: torch.Tensor, masks: torch.Tensor, index: RowIndex, recipe: Recipe, epochs: int,
                reach: int, rng: np.random.Generator) -> Tuple[List[List[Group]], torch.Tensor]:
    """Every batch of every epoch, drawn up front (nothing in the draw depends on the model),
    and each row's loss weight per class ((N, K) float; 0 where the class does not count).

    Narrow crops (:func:`group_by_view` False): each epoch every positive row and
    ``negatives_per_epoch`` negative ones, shuffled, ``batch_cells`` to a batch, weight 1: the
    draw :func:`~.cell_head_fit.train_epochs` makes. Wide crops: a view's crop holds nearly all
    its cells whatever is drawn, so every counting cell of every view is scored, each epoch's
    views in random order, a batch closing once it holds ``batch_cells`` cells; a negative
    cell weighs ``negatives_per_epoch`` / (negative cells), the chance the draw would take it,
    so the loss is the draw's expectation (positives against negatives as the recipe sets them)
    without its noise, and an epoch's steps are as many as the cells allow."""
    positive_rows, negative_rows = split_rows(targets, masks)
    n_neg = min(recipe.negatives_per_epoch, len(negative_rows))
    by_view = group_by_view(index, len(positive_rows) + n_neg, reach)
    weights = masks.float()
    batches = []
    if by_view:
        weights[torch.as_tensor(negative_rows)] *= n_neg / max(len(negative_rows), 1)
        counting = np.sort(np.concatenate([positive_rows, negative_rows]))
    for _ in range(epochs):
        if by_view:
            rows = counting
        else:
            negatives = _draw_negatives(negative_rows, n_neg, rng, None, 0.0)
            rows = rng.permutation(np.concatenate([positive_rows, negatives]))
        batches.extend(groups_of(b, index, reach, by_view)
                       for b in epoch_batches(rows, index, recipe.batch_cells, by_view, rng))
    return batches, weights


def stage_loader(dataset: Dataset, workers: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> DataLoader:
    """The DataLoader that reads the batches' crops (``workers``: processes; default up to 2).
    ``generator``: its own, so that starting it leaves torch's global random state (a fit's
    dropout) as it was (None: the global one, as the stage tuning's figures were made with)."""
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_collate,
                      worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
                      generator=generator)


class HeadVectors(Dataset):
    """A DataLoader's view of a frozen-backbone head fit's batches: item ``i`` is batch ``i``'s
    block vectors (k, bottleneck * n * n) fp16, in the batch's row order, cut from crops of
    the images' cached features (:class:`StageCrops`) through the frozen ``stages`` (when the
    head's input is a tuned-stages recipe's pretrained stages' output), the bottleneck and the
    head's zero-padded unfold: the vectors :func:`~.cell_head_fit.training_cells` computes on
    whole images."""

    def __init__(self, crops: StageCrops, projection: Projection, neighbourhood: int,
                 stages: Optional[TunedStages] = None) -> None:
        self.crops, self.projection, self.neighbourhood, self.stages = crops, projection, neighbourhood, stages

    def __len__(self) -> int:
        return len(self.crops)

    @torch.no_grad()
    def __getitem__(self, i: int) -> torch.Tensor:
        rows = np.concatenate([g.rows for g in self.crops.batches[i]])
        parts, got = [], []
        for bucket in self.crops[i]:
            features = bucket.crops if self.stages is None else self.stages.eval()(bucket.crops.float()).half()
            vectors = neighbourhood_vectors(features, self.projection, self.neighbourhood)
            parts.append(vectors.reshape(-1, vectors.shape[-1])[torch.as_tensor(bucket.columns)])
            got.append(bucket.rows)
        found = np.concatenate(got)
        sorter = np.argsort(found)
        return torch.cat(parts)[torch.as_tensor(sorter[np.searchsorted(found, rows, sorter=sorter)])]


def streams_head(images: Sequence[CachedImage], recipe: Recipe) -> bool:
    """True where :func:`fit_streamed_head` can train the recipe's head: a cell head on plain
    cached images. The window head (whose vectors are one per window, a bottleneck's width) and
    a head that reads the other breast (aligned pairs built in memory) train in memory."""
    return recipe.head == "cell" and recipe.other_breast_input == "none" and not any(
        isinstance(image, PairedImage) for image in images)


def fit_streamed_head(images: Sequence[CachedImage], recipe: Recipe, classes: Sequence[str],
                      seed: Optional[int] = None, stages: Optional[TunedStages] = None,
                      workers: Optional[int] = None, cache_bytes: int = WORKER_CACHE_BYTES) -> FittedCellHead:
    """:func:`~.cell_head_fit.fit_cell_head` without holding the images' features or block
    vectors: the projection from a sample of each image's cells read one image at a time, each
    epoch's rows drawn as there (same random calls), their vectors cut from crops of the
    features read by DataLoader workers (:class:`HeadVectors`), hard negatives scored image by
    image. Memory holds per row only its targets, masks and place. ``stages``: the pretrained
    stages of a tuned-stages recipe, run (without gradients) on each crop, so the head trains
    on their output as :func:`frozen_outputs` would give it. ``cache_bytes``: the features each
    worker keeps of the images it read last (:class:`StageCrops`)."""
    if not streams_head(images, recipe):
        raise ConfigError(f"recipe {recipe.name}: the {recipe.head} head with other_breast_input "
                          f"{recipe.other_breast_input} trains in memory (fit_cell_head)")
    seed = recipe.seed if seed is None else seed
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    @torch.no_grad()
    def read(image: CachedImage) -> torch.Tensor:
        features = image.load()
        return features if stages is None else stages.eval()(features.float()).half()

    projection = fit_projection(images, recipe.bottleneck, seed=seed, read=read)
    views = training_views(recipe)
    rows = [target_rows(image, recipe, classes) for image in images]
    t, m = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    index = RowIndex([image.grid_shape for image in images], views)
    positive_rows, negative_rows = split_rows(t, m)
    n = recipe.neighbourhood
    mlp = CellMLP(projection.weight.shape[0] * n * n, recipe.hidden, len(classes), recipe.dropout)
    optimiser = torch.optim.Adam(mlp.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=recipe.epochs)
    reach = n // 2 if stages is None else stages.reach(n // 2)
    scale = 1 if stages is None else stages.scale

    def forward(batches: List[np.ndarray]) -> Iterable[torch.Tensor]:
        plan = [groups_of(b, index, reach, by_view=False) for b in batches]
        dataset = HeadVectors(StageCrops(images, plan, scale, cache_bytes=cache_bytes), projection, n, stages)
        loader = stage_loader(dataset, workers, generator=torch.Generator().manual_seed(seed))
        return (mlp(vectors.float()) for vectors in loader)

    @torch.no_grad()
    def hard_scores() -> np.ndarray:  # each negative row's highest probability over its counting classes
        mlp.eval()
        scores = np.empty(int(index.starts[-1]), dtype=np.float32)
        for i, image in enumerate(images):
            vectors = neighbourhood_vectors(read(image)[:views], projection, n)
            span = slice(int(index.starts[i]), int(index.starts[i + 1]))
            probs = torch.sigmoid(mlp(vectors.reshape(-1, vectors.shape[-1]).float())) * m[span]
            scores[span] = probs.max(1).values.numpy()
        return scores[negative_rows]

    train_epochs(mlp, forward, t, m, positive_rows, negative_rows, recipe, recipe.epochs, optimiser, rng,
                 schedule=schedule, hard_scores=hard_scores if recipe.hard_negative_share > 0 else None)
    return FittedCellHead(projection, mlp.eval(), n, list(classes), recipe.head)


def frozen_outputs(images: Sequence[CachedImage], stages: TunedStages) -> List[CachedImage]:
    """The images with the pretrained stages' output (fp16, the backbone's own features) in
    memory, for the head's first, frozen-backbone training; read one image at a time."""
    out = []
    with torch.no_grad():
        stages.eval()
        for im in images:
            features = stages(im.load().float()).half()
            extra = {"other": stages(im.other.float()).half()} if isinstance(im, PairedImage) else {}
            # stride-32 features now: a stored image's stride no longer applies
            out.append(replace(im, features=features, **extra) if extra
                       else CachedImage(im.record, features, im.geometry))
    return out


def fit_tuned_tail_head(images: Sequence[CachedImage], recipe: Recipe, classes: Sequence[str],
                        pretrained_tail: TunedStages, seed: int, workers: Optional[int] = None) -> FittedCellHead:
    """A head and its own copy of the last ``recipe.feature_cut`` stages, trained on ``images``
    (their cached features before those stages, streamed by a DataLoader)."""
    if recipe.other_breast_input != "none" and pretrained_tail.stages > 1:
        raise ConfigError("recipe: other_breast_input is aligned on the stride-32 cell grid: it needs tune_stages 1")
    head = (fit_streamed_head(images, recipe, classes, seed=seed, stages=pretrained_tail, workers=workers)
            if streams_head(images, recipe) else
            fit_cell_head(frozen_outputs(images, pretrained_tail), recipe, classes, seed=seed))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    views = training_views(recipe)
    grids, ts, ms = [], [], []
    for image in images:
        grids.append(image.grid_shape)
        targets, masks = target_rows(image, recipe, classes)
        ts.append(targets)
        ms.append(masks)
    t, m = torch.cat(ts), torch.cat(ms)
    index = RowIndex(grids, views)
    model = TunedCells(copy.deepcopy(pretrained_tail), head.projection, head.mlp, recipe.neighbourhood,
                       recipe.other_breast_input)
    reach = model.tail.reach(recipe.neighbourhood // 2)
    plan, weights = plan_epochs(t, m, index, recipe, recipe.tail_epochs, reach, rng)
    optimiser = torch.optim.Adam([
        {"params": model.tail.parameters(), "lr": recipe.tail_learning_rate},
        {"params": [model.weight, model.bias, *model.mlp.parameters()],
         "lr": recipe.learning_rate * HEAD_RATE_WHILE_TUNING}], weight_decay=recipe.weight_decay)
    dataset = StageCrops(images, plan, model.tail.scale, other=recipe.other_breast_input != "none")
    train_streamed(model, stage_loader(dataset, workers), t, weights, optimiser)
    projection = Projection(model.weight.detach().clone(), model.bias.detach().clone())
    return FittedCellHead(projection, model.mlp.eval(), recipe.neighbourhood, list(classes), "cell",
                          tail=model.tail.eval(), other_breast_input=recipe.other_breast_input)
