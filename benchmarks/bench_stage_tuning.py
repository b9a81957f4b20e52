"""Stage tuning throughput: the project's streamed trainer against a bare PyTorch loop, in one run.

    python -m benchmarks.bench_stage_tuning [--depths 1,2,3] [--images 24] [--grid 30x17] [--steps 6]
                                            [--repeats 3] [--workers 2] [--threads 1] [--out results.json]

For each depth (``tune_stages``: 1 the head convolution, 2 also the last block group, 3 also the
stride-32 group before it, EfficientNet-Lite0 with its ImageNet weights), cached features of
``--images`` synthetic images (``--grid`` cells, and their mirrors; fp16 files of the shape
``build_cache(cut=depth)`` writes) are put on disk, and the batches a fit draws
(:func:`~MammoPatchLib.training.stage_fit.plan_epochs`, ``negatives_per_epoch`` set to the
bundled recipe's 8192 per 360 views) are measured two ways, repetitions interleaved so that load from other jobs hits
both alike, medians reported:

- **bare loop**: the same layers (a copy of the tuned stages, bottleneck and MLP), the same
  batches with their crops already in memory; forward, focal loss, backward, Adam step. The
  compute the recipe asks for, without data loading.
- **project**: :func:`~MammoPatchLib.training.stage_fit.train_streamed` over
  :func:`~MammoPatchLib.training.stage_fit.stage_loader` (DataLoader workers reading each
  batch's crops from the cache files), what a cross-validation fold runs.

Printed: cells and crops per second, the median step, the project against the bare loop, and
the tuning phase's cost of one fold (steps per epoch x the depth's recipe's ``tail_epochs`` x
median step) for a training set of 180 images, with which a cross-validation's cost is
estimated before it runs. Depth 1 runs the bundled recipe, 2 and 3 its copies
``cell-3x3-tta-stages2`` / ``-stages3``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from MammoPatchLib.networks import PatchClassifier, TunedStages
from MammoPatchLib.training.cell_head_fit import CellMLP, Projection, focal_loss
from MammoPatchLib.training.feature_cache import CellGeometry, StoredImage
from MammoPatchLib.training.recipe import Recipe
from MammoPatchLib.training.stage_fit import (RowIndex, StageCrops, TunedCells, plan_epochs, stage_loader,
                                              train_streamed)

#: Views (images and mirrors) of a fold's training set on mini-MIAS (4 of 5 folds of 226 images).
FOLD_VIEWS = 360
RECIPES = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "training"
#: The recipe of each depth: the bundled one (one stage), and its copies that tune 2 and 3.
RECIPE_OF_DEPTH = {1: "cell-3x3-tta-tail10-gate35.json", 2: "cell-3x3-tta-stages2.json", 3: "cell-3x3-tta-stages3.json"}


def synthetic_cache(folder: Path, backbone, depth: int, images: int, grid, seed: int) -> List[StoredImage]:
    """Cache entries of the shape the real cache holds at this cut (channels, stride), from the
    backbone's own features of random images so their scale is realistic."""
    torch.manual_seed(seed)
    stride = 16 if depth >= 3 else 32
    out = []
    with torch.no_grad():
        for i in range(images):
            x = torch.rand(2, 3, grid[0] * 32, grid[1] * 32)
            features = backbone.features_before(x, depth).half()
            path = folder / f"d{depth}-{i}.pt"
            torch.save({"features": features}, path)
            geometry = CellGeometry(((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)), (grid[0] * 32, grid[1] * 32),
                                    (grid[0] * 32, grid[1] * 32))
            out.append(StoredImage(None, None, geometry, stride=stride, path=path))
    return out


def targets(images: int, grid, classes: int, rng: np.random.Generator):
    """(targets, masks) rows of every cell of both views: ~1 % positive cells, every class counts."""
    rows = images * 2 * grid[0] * grid[1]
    t = torch.from_numpy((rng.random((rows, classes)) < 0.01 / classes).astype(np.float16))
    return t, torch.ones(rows, classes, dtype=torch.bool)


def bare_steps(model: TunedCells, batches, t, m, optimiser) -> List[float]:
    """The loop a PyTorch user writes over in-memory crops: forward, loss, backward, step."""
    model.train()
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        logits, rows = [], []
        for bucket in batch:
            logits.append(model(bucket.crops, torch.as_tensor(bucket.columns)))
            rows.append(torch.as_tensor(bucket.rows))
        index = torch.cat(rows)
        loss = focal_loss(torch.cat(logits), t[index].float(), m[index])
        loss.backward()
        optimiser.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(depth: int, args, backbone, folder: Path) -> Dict[str, Any]:
    grid = tuple(int(v) for v in args.grid.split("x"))
    images = synthetic_cache(folder, backbone, depth, args.images, grid, seed=depth)
    rng = np.random.default_rng(0)
    t, m = targets(args.images, grid, 10, rng)
    index = RowIndex([grid] * args.images, 2)
    views = 2 * args.images
    recipe = Recipe.load(RECIPES / RECIPE_OF_DEPTH[depth], {"negatives_per_epoch": round(8192 * views / FOLD_VIEWS)})
    stages = TunedStages(backbone, depth)
    reach = stages.reach(recipe.neighbourhood // 2)
    plan, weights = plan_epochs(t, m, index, recipe, 1, reach, rng)
    steps_per_epoch = len(plan)
    plan = plan[:args.steps]
    projection = Projection(torch.randn(recipe.bottleneck, 1280) * 0.03, torch.zeros(recipe.bottleneck))
    mlp = CellMLP(recipe.bottleneck * recipe.neighbourhood ** 2, recipe.hidden, 10, recipe.dropout)

    def fresh():
        model = TunedCells(copy.deepcopy(stages), projection, copy.deepcopy(mlp), recipe.neighbourhood)
        optimiser = torch.optim.Adam([{"params": model.tail.parameters(), "lr": recipe.tail_learning_rate},
                                      {"params": [model.weight, model.bias, *model.mlp.parameters()], "lr": 5e-5}])
        return model, optimiser

    memory = StageCrops(images, plan, stages.scale, cache_bytes=0)
    in_memory = [memory[i] for i in range(len(plan))]
    cells = sum(len(g.rows) for batch in plan for g in batch)
    crops = sum(len(batch) for batch in plan)
    rows: Dict[str, List[float]] = {"bare loop": [], "project": []}
    for _ in range(args.repeats):
        model, optimiser = fresh()
        rows["bare loop"].append(sum(bare_steps(model, in_memory, t, weights, optimiser)))
        model, optimiser = fresh()
        loader = stage_loader(StageCrops(images, plan, stages.scale), args.workers)
        start = time.perf_counter()
        train_streamed(model, loader, t, weights, optimiser)
        rows["project"].append(time.perf_counter() - start)
    result = {"depth": depth, "reach_cells": reach, "steps": len(plan), "cells": cells, "crops": crops,
              "steps_per_epoch": steps_per_epoch, "scaled_steps_per_epoch": steps_per_epoch * FOLD_VIEWS / views}
    for name, values in rows.items():
        seconds = statistics.median(values)
        result[name] = {"seconds": seconds, "step_s": seconds / len(plan), "cells_per_s": cells / seconds,
                        "crops_per_s": crops / seconds}
    result["project_vs_bare"] = result["bare loop"]["seconds"] / result["project"]["seconds"]
    result["fold_tuning_s"] = result["scaled_steps_per_epoch"] * recipe.tail_epochs * result["project"]["step_s"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="1,2,3")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--grid", default="30x17", help="cells per image, rows x columns (mini-MIAS: about 30 x 17)")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps measured per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (crossval's default: 1)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = PatchClassifier(pretrained=True).features.eval()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in (int(d) for d in args.depths.split(",")):
            results.append(measure(depth, args, backbone, Path(tmp)))
    print(f"Stage tuning, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {args.workers} workers, {args.images} images of "
          f"{args.grid} cells, {args.steps} steps x {args.repeats} repeats\n")
    print("| depth | reach (cells) | method | step s | cells/s | crops/s | project vs bare | steps/epoch (fold) "
          "| tuning s per fold |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for name in ("bare loop", "project"):
            row = r[name]
            extra = (f"{r['project_vs_bare']:.2f}x | {r['scaled_steps_per_epoch']:.0f} | {r['fold_tuning_s']:.0f}"
                     if name == "project" else "1.00x | |")
            print(f"| {r['depth']} | {r['reach_cells']} | {name} | {row['step_s']:.3f} | {row['cells_per_s']:,.0f} | "
                  f"{row['crops_per_s']:,.1f} | {extra} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
