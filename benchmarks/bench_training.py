"""Training throughput: MammoPatch's training step against a bare PyTorch loop, in one run.

    python -m benchmarks.bench_training [--quick] [--device cpu|cuda] [--config RECIPE]
                                        [--threads 1,2] [--out results.json]

Measured in the same process, repetitions interleaved (bare loop, then the project's step,
then the next repetition) so that load from other jobs hits every row alike; medians reported:

- **bare loop**: the recipe's PatchClassifier (``model_file.build_network``, channels-last as
  the trainer runs it), random (B, 3, 256, 256) tensors already in memory, Adam, BCE with
  logits; forward, backward, step. What the issue asks the project to reach 0.8x of.
- **bare loop, same work**: random (B, 3, 256 + 2 context) tensors, the window forward and the
  in-context forward of the recipe's consistency term, the project's ``PatchLoss``; the compute
  the recipe asks for, without data loading. The stage timings (forward, forward in context,
  backward, step) come from this row.
- **project step**: ``Trainer._train_epoch`` of the recipe (``Resources/Models/training/cpu.json``
  by default) on synthetic prepared images: the weighted slot sampler, window sampling from the
  prepared images, MONAI augmentation, the consistency term, PatchLoss, Adam.
- **project step, no context**: the same recipe with ``context_px`` 0 (no consistency term):
  the project's data path against the bare loop's compute.
- **data only**: the project's samples (sampling; sampling + augmentation) drawn for the same
  (slot, seed) pairs without any network, at the row's thread count and at one thread (what
  the trainer uses for them on its main thread).
- with ``--workers N``, the no-context step with N DataLoader worker processes.

``--threads 1,2`` repeats every row at each torch thread count (interleaved too); ``--quick``
(batch 4, one batch per repetition, one image set of 4 views) runs at one thread unless told.
Everything printed is also written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from MammoPatchLib.datasets import load_records
from MammoPatchLib.inference.predictor import resolve_device
from MammoPatchLib.model_file import build_network
from MammoPatchLib.patches import prepare_images
from MammoPatchLib.synthetic import make_vindr_dataset
from MammoPatchLib.training.config import TrainConfig
from MammoPatchLib.training.trainer import Trainer

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "training" / "cpu.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """The loop a PyTorch user writes: tensors in memory, forward, loss, backward, step."""

    def __init__(self, config: TrainConfig, info, device: torch.device, context_px: int, steps: int) -> None:
        self.network = build_network(info).to(device).to(memory_format=torch.channels_last).train()
        self.network.head.dropout.p = config.dropout
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate)
        self.device, self.context, self.steps = device, context_px, steps
        size = config.sampling.patch_size + 2 * context_px
        b, k = config.batch_size, len(config.classes)
        self.x = torch.rand(b, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
        self.y = (torch.rand(b, k, device=device) > 0.8).float()
        self.mask = torch.ones(b, k, device=device)
        from MammoPatchLib.training.losses import PatchLoss

        self.loss = PatchLoss(config.focal_gamma, config.consistency_weight)
        self.stages: Dict[str, float] = {}

    def _tick(self, name: str, start: float) -> float:
        _sync(self.device)
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - start
        return now

    def __call__(self) -> int:
        self.stages = {}
        net, c = self.network, self.context
        for _ in range(self.steps):
            t = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            if c:
                size = self.x.shape[-1] - 2 * c
                logits = net(self.x[:, :, c:c + size, c:c + size]).flatten(1)
                t = self._tick("forward", t)
                m, cells = c // 32, net.cells
                context = net.head(net.features(self.x)[:, :, m:m + cells, m:m + cells]).flatten(1)
                t = self._tick("forward in context", t)
                loss, _ = self.loss(logits, self.y, self.mask, context)
            else:
                loss = F.binary_cross_entropy_with_logits(net(self.x).flatten(1), self.y)
                t = self._tick("forward", t)
            loss.backward()
            t = self._tick("backward", t)
            self.optimizer.step()
            self._tick("optimizer step", t)
        return self.steps * len(self.x)


class ProjectStep:
    """``Trainer._train_epoch`` over ``steps`` batches of the recipe (one call = one 'epoch')."""

    def __init__(self, config: TrainConfig, images, out: Path) -> None:
        self.trainer = Trainer(config, out, progress=False)
        self.run = self.trainer._build(images, "benchmark")
        self.epoch, self.patches = 0, config.patches_per_epoch
        self.stages: Dict[str, float] = {}

    def __call__(self) -> int:
        self.epoch += 1
        row = self.trainer._train_epoch(self.run, self.epoch)
        _sync(self.trainer.device)
        self.stages = {k: row[k] for k in ("data_seconds",) if k in row}
        return self.patches


class DataOnly:
    """The project's samples for the same (slot, seed) pairs, without a network."""

    def __init__(self, step: ProjectStep, augment: bool, threads: Optional[int] = None) -> None:
        self.dataset, self.augment, self.threads = step.run.dataset, augment, threads
        self.pairs = list(iter(step.run.sampler))
        self.stages: Dict[str, float] = {}

    def __call__(self) -> int:
        saved, augmentation = torch.get_num_threads(), self.dataset.augmentation
        torch.set_num_threads(self.threads or saved)
        self.dataset.augmentation = augmentation if self.augment else None
        try:
            for pair in self.pairs:
                self.dataset[pair]
        finally:
            self.dataset.augmentation = augmentation
            torch.set_num_threads(saved)
        return len(self.pairs)


def synthetic_images(config: TrainConfig, work: Path, studies: int):
    """Prepared images of a synthetic VinDr-layout set (every woman abnormal: findings to sample)."""
    root = make_vindr_dataset(work / "data", n_studies=studies, shape=(1024, 832), spacing_mm=0.2,
                              abnormal_fraction=1.0, test_fraction=0.0, seed=1)
    records, _ = load_records(str(root), work)
    images, errors = prepare_images(records, config.preprocess_config(), config.classes, progress=False)
    if errors:
        raise RuntimeError(f"synthetic images failed to prepare: {errors}")
    return images


def measure(rows: Dict[str, Callable[[], int]], repeats: int, device: torch.device, threads: List[int]
            ) -> Dict[str, Dict[str, Any]]:
    """Each row once as warm-up, then ``repeats`` rounds of every row in turn; medians."""
    times: Dict[str, List[float]] = {}
    counts: Dict[str, int] = {}
    stages: Dict[str, List[Dict[str, float]]] = {}
    for round_ in range(repeats + 1):
        for n in threads:
            torch.set_num_threads(n)
            for name, fn in rows.items():
                key = f"{name} @ {n} threads" if len(threads) > 1 else name
                _sync(device)
                start = time.perf_counter()
                counts[key] = fn()
                _sync(device)
                if round_:  # round 0 is the warm-up
                    times.setdefault(key, []).append(time.perf_counter() - start)
                    stages.setdefault(key, []).append(dict(getattr(fn, "stages", {})))
    out = {}
    for key, values in times.items():
        seconds = statistics.median(values)
        per_stage = {s: statistics.median(st[s] for st in stages[key]) for s in stages[key][0]}
        out[key] = {"patches": counts[key], "seconds": seconds, "all_seconds": values,
                    "patches_per_s": counts[key] / seconds, "stages_s": per_stage}
    return out


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description="MammoPatch training throughput (see the module docstring)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="batch 4, one batch per repetition, one thread unless --threads (< 1 minute)")
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="training recipe (JSON or YAML)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="batches per repetition")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", default=None, help="comma-separated torch thread counts (default: torch's)")
    parser.add_argument("--workers", type=int, default=0,
                        help="also the no-context step with this many DataLoader workers")
    parser.add_argument("--out", default="training-benchmark.json")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    config = TrainConfig.load(args.config)
    batch = args.batch or (4 if args.quick else config.batch_size)
    steps = args.steps or (1 if args.quick else 2)
    repeats = args.repeats or 3
    default_threads = [1] if args.quick else [torch.get_num_threads()]
    threads = [int(t) for t in args.threads.split(",")] if args.threads else default_threads
    config = replace(config, pretrained=False, split_file=None, device=str(device), batch_size=batch,
                     patches_per_epoch=batch * steps)
    context = config.sampling.context_px
    plain = replace(config, consistency_weight=0.0, sampling=replace(config.sampling, context_px=0))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = synthetic_images(config, work, 1 if args.quick else 2)
        project = ProjectStep(config, images, work / "project")
        rows: Dict[str, Callable[[], int]] = {
            "bare loop": BareLoop(config, project.run.info, device, 0, steps),
            "project step": project,
        }
        if context:
            rows["bare loop, same work"] = BareLoop(config, project.run.info, device, context, steps)
        if not args.quick and context:
            rows["project step, no context"] = ProjectStep(plain, images, work / "plain")
        if args.workers:
            rows[f"project step, no context, {args.workers} workers"] = ProjectStep(
                replace(plain, num_workers=args.workers), images, work / "workers")
        rows["data: sampling"] = DataOnly(project, augment=False)
        rows["data: sampling + augmentation"] = DataOnly(project, augment=True)
        if max(threads) > 1:  # what the trainer runs on its main thread (num_workers 0)
            rows["data: sampling + augmentation, 1 thread"] = DataOnly(project, augment=True, threads=1)
        started = time.perf_counter()
        table = measure(rows, repeats, device, threads)
        wall = time.perf_counter() - started
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "load_average": os.getloadavg(), "recipe": str(args.config), "backbone": config.backbone,
        "batch_size": batch, "steps_per_repeat": steps, "repeats": repeats, "context_px": context,
        "images": [list(img.image.shape) for img in images], "threads": threads, "wall_s": wall, "rows": table}
    _report(results)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


def _report(results: Dict[str, Any]) -> None:
    rows = results["rows"]
    print(f"# training throughput, {results['device']}, torch {results['torch']}, {results['backbone']}, "
          f"batch {results['batch_size']}, context {results['context_px']} px; load average "
          f"{', '.join(f'{v:.1f}' for v in results['load_average'])}; medians of {results['repeats']} "
          f"interleaved repetitions of {results['steps_per_repeat']} batches")
    print("| row | patches/s | s per batch | vs bare loop | vs bare loop, same work | stages, s per batch |")
    print("|---|---|---|---|---|---|")
    steps = results["steps_per_repeat"]
    for key, row in rows.items():
        suffix = key.split(" @ ")[1] if " @ " in key else None
        bare = rows.get(f"bare loop @ {suffix}" if suffix else "bare loop")
        same = rows.get(f"bare loop, same work @ {suffix}" if suffix else "bare loop, same work")
        vs = lambda ref: f"{row['patches_per_s'] / ref['patches_per_s']:.2f}x" if ref else ""  # noqa: E731
        per_batch = row["seconds"] / steps
        stages = ", ".join(f"{k} {v / steps:.2f}" for k, v in row["stages_s"].items())
        print(f"| {key} | {row['patches_per_s']:.2f} | {per_batch:.2f} | {vs(bare)} | {vs(same)} | {stages} |")


if __name__ == "__main__":
    main()
