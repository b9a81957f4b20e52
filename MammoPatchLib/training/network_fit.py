"""The network path of a recipe (trains "network"): the whole network, end to end, from images.

Images are preprocessed once into a disk cache (one file per image, written atomically by the
torchrun rank that owns it) and streamed from there: the dataset holds each image's findings
and cache file, and each sample maps the file and reads only its patch
(:class:`~MammoPatchLib.patches.PatchDataset`), in DataLoader workers. Patches are drawn by the
recipe's sampler (the poster's: area 0.05-5 x the finding's box, aspect 0.33-1.66 x, centre
within 50 VinDr pixels; No Finding patches from the breasts of normal images) with the poster's
weighted sampling, augmented, and trained with the poster's focal loss, Adam and
ReduceLROnPlateau (stepped on the epoch's training loss: there is no validation split, the
schedule is fixed and choosing between recipes is cross-validation's work).

Batch norm keeps the pretrained running statistics (eval mode while training, its affine
weights train) and EfficientNet-Lite's stochastic depth is off (the poster names neither): what
trains is then what the whole-image pass computes, a few patches per rank cannot make the
statistics noisy, and N torchrun ranks (each taking batch_size / N of the same draw, the loss
normalised over the whole batch, no random draw that depends on how a batch is split) train
the model one process trains (dropout in the head aside: set it to 0 to compare). A
checkpoint is written atomically after every epoch (weights, optimiser, schedule, RNG), and
``resume`` continues after a kill from the last one with the same result as an uninterrupted
run. Mixed precision and channels-last on CUDA; torchrun DDP with NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from ..datasets import ImageRecord
from ..distributed import RankContext, start_ranks
from ..errors import MammoPatchError
from ..inference.inferers import autocast_for
from ..inference.predictor import resolve_device
from ..io.atomic import atomic_path
from ..model_file import ModelInfo, build_network
from ..networks import BACKBONES, PatchClassifier
from ..patches import PatchDataset, PreparedImage, build_slots, prepare_images
from ..vocabulary import FINDING_CLASSES
from .augment import build_augmentation
from .cell_head_fit import focal_loss
from .recipe import Recipe, cell_model_info
from .sampler import WeightedSlotSampler, slot_weights
from .work_units import UnitClock

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"


@dataclass
class NetworkFit:
    """What :func:`fit_network` gives: the trained network (CPU, eval mode), its model
    information, the images it trained on, and one row per epoch."""

    network: PatchClassifier
    info: ModelInfo
    images: List[PreparedImage]
    history: List[Dict[str, float]] = field(default_factory=list)


def network_info(recipe: Recipe) -> ModelInfo:
    """The model information of a network a recipe trains end to end (its windows are the
    sampler's patches)."""
    return replace(cell_model_info(recipe), window=recipe.sampling.patch_size)


def join_ranks(recipe: Recipe) -> RankContext:
    """This process's place in a torchrun launch (NCCL where the recipe's device is a GPU,
    gloo on CPUs; a single process without torchrun)."""
    return start_ranks(resolve_device(recipe.device))


def initial_network(recipe: Recipe) -> Tuple[ModelInfo, PatchClassifier]:
    """(model information, network) a run of ``recipe`` starts from: ImageNet weights where
    they ship offline, the head initialised from the recipe's seed."""
    torch.manual_seed(recipe.seed)
    info = network_info(recipe)
    network = build_network(info, pretrained=BACKBONES[recipe.backbone].pretrained_offline)
    network.head.dropout.p = recipe.dropout
    params = getattr(network.features, "_global_params", None)
    if params is not None and params.drop_connect_rate:  # EfficientNet-Lite's stochastic depth: off
        network.features._global_params = params._replace(drop_connect_rate=0.0)
    return info, network


def loader_workers(requested: int, announce: bool = False) -> int:
    """The recipe's DataLoader workers, at most one per CPU this process may run on: a recipe
    written for a many-core GPU machine (the poster's 4 workers) then runs on a laptop without
    oversubscribing it. Each sample draws from its own seed, so the patches do not depend on
    the worker count."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(requested, cpus)
    if announce and workers < requested:
        logger.info("num_workers %d lowered to %d: this machine offers %d CPU(s)", requested, workers, cpus)
    return workers


def stream_images(records: Sequence[ImageRecord], recipe: Recipe, cache_dir: Path, ctx: RankContext,
                  progress: bool) -> List[PreparedImage]:
    """Every record preprocessed into ``cache_dir`` (each rank prepares its share, in the
    recipe's ``num_workers`` DataLoader workers, then every rank reads every image's findings
    and cache file, not its pixels)."""
    config = recipe.preprocessing.at_spacing(recipe.spacing_mm)
    prepare_images(list(records)[ctx.rank::ctx.world_size], config, FINDING_CLASSES, cache_dir,
                   progress and ctx.is_main, release=True, workers=loader_workers(recipe.num_workers))
    ctx.barrier()
    images, errors = prepare_images(records, config, FINDING_CLASSES, cache_dir, False, release=True)
    if errors and ctx.is_main:
        logger.warning("%d image(s) skipped (unreadable); the first: %s", len(errors), errors[0])
    return images


def fit_network(recipe: Recipe, records: Sequence[ImageRecord], out_dir, cache_dir, ctx: RankContext,
                resume: bool = False, progress: bool = True) -> NetworkFit:
    """Train ``recipe``'s network on ``records`` (all of them: a fixed schedule, no
    validation split) as this rank of ``ctx`` (:func:`join_ranks`), writing ``checkpoint.pt``
    and ``metrics.csv`` into ``out_dir`` every epoch; ``resume`` continues from the checkpoint
    there.

    Raises:
        MammoPatchError: no boxed finding of the recipe's classes, a batch that the torchrun
            ranks cannot share equally, or ``resume`` without a checkpoint of this recipe."""
    out = Path(out_dir)
    device = resolve_device(recipe.device)
    if ctx.distributed and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if resume and not (out / CHECKPOINT).is_file():  # said before any image is prepared
        raise MammoPatchError("nothing to resume: no checkpoint (train without --resume first)", out / CHECKPOINT)
    if recipe.batch_size % ctx.world_size:
        raise MammoPatchError(f"batch_size {recipe.batch_size} cannot be shared by {ctx.world_size} ranks: "
                              "make it a multiple of the number of ranks")
    out.mkdir(parents=True, exist_ok=True)
    images = stream_images(records, recipe, Path(cache_dir), ctx, progress)
    wanted = [FINDING_CLASSES.index(c) for c in recipe.classes]
    # patches around the findings of the recipe's classes, and (the poster's No Finding) from normal breasts
    slots = [s for s in build_slots(images, wanted) if s.finding >= 0 or images[s.image].is_normal]
    if not any(s.finding >= 0 for s in slots):
        raise MammoPatchError(f"the data hold no boxed finding of the recipe's classes {recipe.classes}")
    info, network = initial_network(recipe)
    fast = device.type == "cuda" and recipe.amp
    network.to(device)
    if fast:
        network.to(memory_format=torch.channels_last)
    model: nn.Module = network
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=recipe.plateau_patience,
                                                           factor=recipe.plateau_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=fast and not torch.cuda.is_bf16_supported())
    sampler = WeightedSlotSampler(slot_weights(slots, recipe.no_finding_share), recipe.patches_per_epoch,
                                  seed=recipe.seed, rank=ctx.rank, num_replicas=ctx.world_size)
    dataset = PatchDataset(images, slots, len(FINDING_CLASSES), recipe.sampling,
                           build_augmentation(recipe.augmentation))
    workers = loader_workers(recipe.num_workers, announce=ctx.is_main)
    loader = DataLoader(dataset, batch_size=recipe.batch_size // ctx.world_size, sampler=sampler,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        worker_init_fn=_one_thread if workers else None)
    class_mask = torch.zeros(len(FINDING_CLASSES), device=device)
    class_mask[wanted] = 1.0
    parts = {"model": network, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    history: List[Dict[str, float]] = _resume(out / CHECKPOINT, parts, recipe) if resume else []
    clock = UnitClock(recipe.epochs, len(history))
    for epoch in range(len(history) + 1, recipe.epochs + 1):
        sampler.set_epoch(epoch)
        row = _train_epoch(model, loader, optimizer, scaler, class_mask, device, fast, ctx, progress, epoch,
                           recipe.epochs)
        scheduler.step(row["train_loss"])
        row["lr"] = optimizer.param_groups[0]["lr"]
        history.append(row)
        if ctx.is_main:
            _checkpoint(out / CHECKPOINT, parts, history, recipe)
            _log(out / METRICS_CSV, history)
            logger.info("%s: training loss %.4f, %.1f patches/s, lr %.3g", clock.tick("epoch"), row["train_loss"],
                        row["patches_per_second"], row["lr"])
    network.eval().to("cpu", memory_format=torch.contiguous_format)
    return NetworkFit(network, info, images, history)


def train_mode(model: nn.Module) -> None:
    """Training mode with batch norm's running statistics kept (see the module docstring)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer, scaler, class_mask: torch.Tensor,
                 device: torch.device, fast: bool, ctx: RankContext, progress: bool, epoch: int,
                 epochs: int) -> Dict[str, float]:
    """One pass over the epoch's draw: the patch-weighted mean training loss over every rank,
    patches per second, and the seconds spent waiting for batches."""
    train_mode(model)
    batches = loader
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False)
    total = torch.zeros(3, dtype=torch.float64, device=device)  # this rank's share of (loss sum, steps), patches
    started = time.perf_counter()
    waited, last = 0.0, started
    for x, target, mask in batches:
        waited += time.perf_counter() - last
        x = x.to(device, non_blocking=True)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        mask = mask.to(device, non_blocking=True) * class_mask
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, fast):
            logits = model(x).flatten(1)
        loss = _global_focal(logits.float(), target, mask, ctx)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=device),
                              torch.full((), float(len(x)), dtype=torch.float64, device=device)]) / torch.tensor(
            [ctx.world_size, ctx.world_size, 1], dtype=torch.float64, device=device)
        last = time.perf_counter()
    if ctx.distributed:
        dist.all_reduce(total)
    seconds = time.perf_counter() - started
    loss_sum, steps, patches = total.tolist()
    return {"epoch": epoch, "train_loss": loss_sum / max(steps, 1.0),
            "patches_per_second": patches / max(seconds, 1e-9), "seconds": seconds, "data_seconds": waited}


def _global_focal(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, ctx: RankContext) -> torch.Tensor:
    """The focal loss averaged over the elements that count in the whole batch of every rank,
    scaled so that DDP's mean of the ranks' gradients is the one-process gradient."""
    if not ctx.distributed:
        return focal_loss(logits, target, mask)
    local = mask.sum().detach()
    counted = local.clone()
    dist.all_reduce(counted)
    return focal_loss(logits, target, mask) * local.clamp(min=1.0) / counted.clamp(min=1.0) * ctx.world_size


def _checkpoint(path: Path, parts: Dict[str, Any], history: List[Dict[str, float]], recipe: Recipe) -> None:
    state = {name: part.state_dict() for name, part in parts.items()}
    state.update(history=history, recipe=recipe.to_dict(), rng=torch.get_rng_state(),
                 cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path, parts: Dict[str, Any], recipe: Recipe) -> List[Dict[str, float]]:
    """The checkpoint's history, with every part and the RNG restored."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if _schedule(saved["recipe"]) != _schedule(recipe.to_dict()):
        raise MammoPatchError("the checkpoint was made by another recipe (or other settings of it); use a new --out "
                              "folder or the recipe that made it", path)
    for name, part in parts.items():
        part.load_state_dict(saved[name])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    logger.info("resuming after epoch %d", len(saved["history"]))
    return list(saved["history"])


def _schedule(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """What a resumed run must share with the run it continues (where it runs may change)."""
    return {k: v for k, v in recipe.items() if k not in ("device", "num_workers")}


def _log(path: Path, history: Sequence[Dict[str, float]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def _one_thread(worker_id: int) -> None:
    """DataLoader workers cut and augment a few small patches: one torch thread each (an OpenMP
    team per worker would only fight the training thread for the cores)."""
    torch.set_num_threads(1)


__all__ = ["fit_network", "join_ranks", "initial_network", "network_info", "stream_images", "train_mode", "NetworkFit",
           "CHECKPOINT", "METRICS_CSV"]
