"""Training as in the poster: focal loss, Adam (lr 1e-4), ReduceLROnPlateau (patience 5,
factor 0.1) on validation loss, weighted sampling, early stopping; checkpoints every epoch
(atomically) and ``resume`` continues a killed run where it stopped; mixed precision on GPU;
multi-GPU / multi-node with torchrun (DDP; gloo on CPU)."""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.distributed as dist
from monai.losses import FocalLoss
from torch.utils.data import DataLoader

from .. import __version__
from ..errors import MammoPatchError
from ..evaluation.metrics import best_thresholds, patch_metrics
from ..inference.predictor import resolve_device
from ..io.atomic import atomic_path
from ..model_file import ModelInfo, build_network, save_model
from .augment import build_augmentation
from .config import TrainConfig
from .data import (PatchDataset, PreparedImage, WeightedSlotSampler, build_slots, slot_weights,
                   validation_patches)

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "model.pt"
METRICS_CSV = "metrics.csv"


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _freeze(network: torch.nn.Module, fraction: float) -> None:
    params = list(network.features.parameters())
    for p in params[: int(len(params) * fraction)]:
        p.requires_grad_(False)


def _rng_state() -> Dict[str, Any]:
    """RNG states as tensors and plain types, so checkpoints load with weights_only=True."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next}}


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


def _evaluate_loss(network, loss_fn, patches, targets, device, batch_size, amp) -> tuple:
    network.eval()
    probs, losses = [], []
    with torch.no_grad():
        for start in range(0, len(patches), batch_size):
            x = patches[start:start + batch_size].float().to(device)
            y = targets[start:start + batch_size].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                logits = network(x).float()
            losses.append(float(loss_fn(logits, y)) * len(x))
            probs.append(torch.sigmoid(logits).cpu())
    if not probs:
        return float("nan"), torch.zeros(0, targets.shape[1])
    return sum(losses) / len(patches), torch.cat(probs)


class Trainer:
    """Train a PatchClassifier on prepared images; everything lands in ``out_dir``:
    ``checkpoint.pt`` (every epoch), ``model.pt`` (best validation loss, a model file),
    ``metrics.csv`` (and TensorBoard events when tensorboard is installed), ``config.json``."""

    def __init__(self, config: TrainConfig, out_dir, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, Path(out_dir), progress
        self.device = resolve_device(config.device)
        self.ctx = init_distributed(self.device)
        if self.ctx.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        self.out.mkdir(parents=True, exist_ok=True)

    def fit(self, train_images: Sequence[PreparedImage], val_images: Sequence[PreparedImage],
            resume: bool = False, data_description: str = "") -> Dict[str, Any]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        num_classes = len(cfg.classes)
        info = ModelInfo(backbone=cfg.backbone, classes=list(cfg.classes), spacing_mm=cfg.spacing_mm,
                         preprocessing=cfg.preprocess_config().to_dict(), description=data_description,
                         training={"config": cfg.to_dict(), "library_version": __version__})
        network = build_network(info, pretrained=cfg.pretrained and cfg.backbone.startswith("efficientnet-lite"))
        if cfg.dropout != 0.2:
            network.head[1].p = cfg.dropout
        _freeze(network, cfg.freeze_fraction)
        network.to(self.device)
        model = network
        if self.ctx.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        loss_fn = FocalLoss(gamma=cfg.focal_gamma, use_softmax=False, reduction="mean")
        optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                     weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=cfg.plateau_patience,
                                                               factor=cfg.plateau_factor)
        slots = build_slots(train_images)
        if not any(s.category >= 0 for s in slots):
            raise MammoPatchError("the training images carry no boxed finding of the configured classes")
        sampler = WeightedSlotSampler(slot_weights(slots, cfg.no_finding_share), cfg.patches_per_epoch, seed=cfg.seed,
                                      rank=self.ctx.rank, num_replicas=self.ctx.world_size)
        dataset = PatchDataset(train_images, slots, num_classes, cfg.sampling_config(),
                               build_augmentation(cfg.augment_config()))
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            persistent_workers=cfg.num_workers > 0, drop_last=False)
        val_x, val_y, _ = validation_patches(val_images, num_classes, cfg.sampling_config(),
                                             cfg.validation_patches_per_finding, cfg.validation_patches_per_image)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")

        state = {"epoch": 0, "best_val_loss": float("inf"), "epochs_without_improvement": 0, "history": []}
        checkpoint_path = self.out / CHECKPOINT
        if resume:
            if not checkpoint_path.exists():
                raise MammoPatchError("nothing to resume: no checkpoint", checkpoint_path)
            saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            network.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = saved["state"]
            _set_rng_state(saved["rng"])
            logger.info("resuming after epoch %d", state["epoch"])
        elif self.ctx.is_main:
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

        writer = self._tensorboard() if self.ctx.is_main else None
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"] + 1
            sampler.set_epoch(epoch)
            model.train()
            start, total_loss, seen = time.time(), 0.0, 0
            batches = loader
            if self.progress and self.ctx.is_main:
                from tqdm.auto import tqdm

                batches = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
            for x, y in batches:
                x, y = x.to(self.device), y.to(self.device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and self.device.type == "cuda"):
                    loss = loss_fn(model(x).float(), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total_loss += float(loss.detach()) * len(x)
                seen += len(x)
            train_loss = total_loss / max(seen, 1)
            if self.ctx.world_size > 1:
                packed = torch.tensor([total_loss, seen], dtype=torch.float64)
                dist.all_reduce(packed)
                train_loss = float(packed[0] / packed[1])
            val_loss, val_probs = _evaluate_loss(network, loss_fn, val_x, val_y, self.device, cfg.batch_size * 2,
                                                 cfg.amp)
            metrics = patch_metrics(val_y.numpy(), val_probs.numpy(), list(cfg.classes)) if len(val_y) else {}
            scheduler.step(val_loss if np.isfinite(val_loss) else train_loss)
            monitored = val_loss if np.isfinite(val_loss) else train_loss
            improved = monitored < state["best_val_loss"] - 1e-6
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "val_weighted_f1": metrics.get("weighted_f1", float("nan")),
                   "val_weighted_f1_no_nf": metrics.get("weighted_f1_without_no_finding", float("nan")),
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - start}
            state["history"].append(row)
            state["epoch"] = epoch
            if improved:
                state["best_val_loss"] = monitored
                state["epochs_without_improvement"] = 0
            else:
                state["epochs_without_improvement"] += 1
            if self.ctx.is_main:
                if improved:
                    thresholds = best_thresholds(val_y.numpy(), val_probs.numpy()) if len(val_y) else None
                    info.thresholds = thresholds or [0.5] * num_classes
                    info.training.update({"best_epoch": epoch, "validation": metrics})
                    save_model(network, info, self.out / BEST_MODEL)
                self._log(row, writer)
                with atomic_path(checkpoint_path) as tmp:
                    torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state,
                                "rng": _rng_state(), "config": cfg.to_dict()}, tmp)
                logger.info("epoch %d: train %.4f, val %.4f, val wF1 %.3f", epoch, train_loss, val_loss,
                            row["val_weighted_f1"])
            if state["epochs_without_improvement"] >= cfg.early_stopping_patience:
                logger.info("early stopping after epoch %d", epoch)
                break
        if writer is not None:
            writer.close()
        return state

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _log(self, row: Dict[str, float], writer) -> None:
        path = self.out / METRICS_CSV
        rows: List[Dict[str, Any]] = []
        if path.exists():
            rows = [r for r in csv.DictReader(open(path)) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                w = csv.DictWriter(handle, fieldnames=list(row))
                w.writeheader()
                w.writerows(rows)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, row["epoch"])
