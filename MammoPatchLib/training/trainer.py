"""Training: the poster's focal loss, Adam (lr 1e-4) and ReduceLROnPlateau (patience 5,
factor 0.1) with weighted sampling; ours: the consistency term between window and in-context
predictions, hard-negative rounds, and model selection by lesion-level FROC on whole
validation images through the Predictor users run. Checkpoints are written every epoch
(atomically, RNG state included) and ``resume`` continues a killed run exactly; mixed
precision on GPU; multi-GPU / multi-node with torchrun (DDP; gloo on CPU)."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .. import __version__
from ..distributed import start_ranks
from ..errors import MammoPatchError
from ..evaluation.metrics import patch_metrics
from ..inference.inferers import autocast_for
from ..inference.predictor import resolve_device
from ..io.atomic import atomic_path
from ..model_file import InferenceDefaults, LoadedModel, ModelInfo, Provenance, build_network, save_model
from ..patches import PatchDataset, PreparedImage, Slot, build_slots, validation_patches
from .augment import build_augmentation
from .config import TrainConfig
from .hard_negatives import mine_hard_negatives
from .losses import PatchLoss
from .sampler import WeightedSlotSampler, slot_weights

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "model.pt"
METRICS_CSV = "metrics.csv"


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


def mining_epochs(epochs: int, rounds: int) -> List[int]:
    """Epochs after which hard negatives are mined: ``rounds`` evenly spaced boundaries."""
    return sorted({max(1, round(k * epochs / (rounds + 1))) for k in range(1, rounds + 1)} - {epochs})


@dataclass
class ValidationSet:
    """What a run is validated on: fixed patches, and (for FROC selection) whole images."""

    patches: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor
    records: Sequence[Any] = field(default_factory=list)
    images: Optional[Sequence[Any]] = None


@dataclass
class _Run:
    """Everything one fit() builds once."""

    network: torch.nn.Module
    model: torch.nn.Module
    info: ModelInfo
    loss: PatchLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    slots: List[Slot]
    sampler: WeightedSlotSampler
    dataset: PatchDataset
    loader: DataLoader


class Trainer:
    """Train a PatchClassifier on prepared images; everything lands in ``out_dir``:
    ``checkpoint.pt`` (every epoch), ``model.pt`` (the best epoch, a model file),
    ``metrics.csv`` (and TensorBoard events when tensorboard is installed), ``config.json``."""

    def __init__(self, config: TrainConfig, out_dir, progress: bool = True) -> None:
        self.config, self.out, self.progress = config, Path(out_dir), progress
        self.device = resolve_device(config.device)
        self.ctx = start_ranks(self.device)
        if self.ctx.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.ctx.local_rank)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.out.mkdir(parents=True, exist_ok=True)

    # ---- set-up -------------------------------------------------------------------------
    def _build(self, train_images: Sequence[PreparedImage], data_description: str) -> _Run:
        cfg = self.config
        info = ModelInfo(backbone=cfg.backbone, classes=list(cfg.classes), spacing_mm=cfg.spacing_mm,
                         head_pooling=cfg.head_pooling, preprocessing=cfg.preprocessing,
                         description=data_description,
                         training={"config": cfg.to_dict(), "library_version": __version__})
        present = sorted({int(label) for img in train_images for label in img.labels})
        info.inference = InferenceDefaults(report_classes=[cfg.classes[k] for k in present], flip_tta=cfg.flip_tta)
        network = build_network(info, pretrained=cfg.pretrained and not (cfg.backbone_weights or cfg.init_model))
        if cfg.init_model:  # fine-tuning: start from a trained model file of the same architecture
            from ..model_file import load_model

            start = load_model(cfg.init_model, expected_classes=cfg.classes, expected_backbone=cfg.backbone)
            if start.info.head_pooling != cfg.head_pooling:
                raise MammoPatchError(f"init_model has {start.info.head_pooling} head pooling, the config "
                                      f"{cfg.head_pooling}", cfg.init_model)
            network.load_state_dict(start.network.state_dict())
            info.training["init_model"] = {"path": str(cfg.init_model), "sha256": start.sha256}
        elif cfg.backbone_weights:
            from ..networks.backbones import load_backbone_weights

            load_backbone_weights(network.features, cfg.backbone_weights)
        network.head.dropout.p = cfg.dropout
        params = list(network.features.parameters())
        for p in params[: int(len(params) * cfg.freeze_fraction)]:
            p.requires_grad_(False)
        network.to(self.device).to(memory_format=torch.channels_last)
        model = network
        if self.ctx.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        optimizer = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                     weight_decay=cfg.weight_decay)
        if cfg.lr_schedule == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min",
                                                                   patience=cfg.plateau_patience,
                                                                   factor=cfg.plateau_factor)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs,
                                                                   eta_min=cfg.learning_rate * 0.01)
        slots = build_slots(train_images)
        if not any(s.category >= 0 for s in slots):
            raise MammoPatchError("the training images carry no boxed finding of the configured classes")
        sampler = WeightedSlotSampler(slot_weights(slots, cfg.no_finding_share), cfg.patches_per_epoch,
                                      seed=cfg.seed, rank=self.ctx.rank, num_replicas=self.ctx.world_size)
        dataset = PatchDataset(train_images, slots, len(cfg.classes), cfg.sampling,
                               build_augmentation(cfg.augmentation))
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                            persistent_workers=False, drop_last=False, pin_memory=self.device.type == "cuda",
                            worker_init_fn=_worker_init if cfg.num_workers else None)
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and self.device.type == "cuda")
        return _Run(network, model, info, PatchLoss(cfg.focal_gamma, cfg.consistency_weight), optimizer, scheduler,
                    scaler, slots, sampler, dataset, loader)

    def _set_hard_negatives(self, run: _Run, hard: List[Slot]) -> None:
        cfg = self.config
        slots = run.slots + hard
        run.dataset.slots = slots
        run.sampler.weights = slot_weights(slots, cfg.no_finding_share, cfg.hard_negative_share)

    # ---- one epoch ----------------------------------------------------------------------
    def _train_epoch(self, run: _Run, epoch: int) -> Dict[str, float]:
        """One pass over the sampler; returns the per-patch means of the loss terms and
        ``data_seconds``, the time spent waiting for batches (sampling and augmentation when
        ``num_workers`` is 0)."""
        cfg = self.config
        context = cfg.sampling.context_px
        margin_cells = context // 32
        run.sampler.set_epoch(epoch)
        run.model.train()
        totals: Dict[str, torch.Tensor] = {}
        seen = 0
        batches = run.loader
        if self.progress and self.ctx.is_main:
            from tqdm.auto import tqdm

            batches = tqdm(run.loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        waited = 0.0
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            with _main_thread_data(cfg.num_workers):
                batch = next(iterator, None)
            waited += time.perf_counter() - start
            if batch is None:
                break
            x, y, m = batch
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y, m = y.to(self.device, non_blocking=True), m.to(self.device, non_blocking=True)
            run.optimizer.zero_grad(set_to_none=True)
            with autocast_for(self.device, cfg.amp):
                if context:
                    size = x.shape[-1] - 2 * context
                    window = x[:, :, context:context + size, context:context + size]
                    both = run.model(window).flatten(1), self._in_context(run, x, margin_cells)
                    loss, parts = run.loss(both[0], y, m, both[1])
                else:
                    loss, parts = run.loss(run.model(x).flatten(1), y, m)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            n = len(x)
            seen += n
            # summed on the device: one host sync per epoch instead of one per loss term and step
            for key, value in {"train_loss": loss.detach().float(), **parts}.items():
                totals[key] = totals[key] + value * n if key in totals else value * n
        keys = sorted(totals)
        sums = torch.stack([totals[k] for k in keys]).cpu().double() if keys else torch.zeros(0, dtype=torch.float64)
        packed = torch.cat([sums, torch.tensor([float(seen)], dtype=torch.float64)])
        if self.ctx.world_size > 1:
            dist.all_reduce(packed)
        seen = int(packed[-1])
        return {**{k: v / max(seen, 1) for k, v in zip(keys, packed[:-1].tolist())}, "data_seconds": waited}

    @staticmethod
    def _in_context(run: _Run, x: torch.Tensor, margin_cells: int) -> torch.Tensor:
        """Logits of each sample's central window computed with its context (what the dense
        pass computes inside a whole image); through the DDP wrapper when there is one."""
        features = run.model.module.features(x) if hasattr(run.model, "module") else run.network.features(x)
        c = run.network.cells
        return run.network.head(features[:, :, margin_cells:margin_cells + c, margin_cells:margin_cells + c]).flatten(1)

    # ---- validation ---------------------------------------------------------------------
    def _patch_validation(self, run: _Run, val: ValidationSet) -> Dict[str, Any]:
        cfg = self.config
        network = run.network
        network.eval()
        probs, total = [], 0.0
        with torch.no_grad():
            for start in range(0, len(val.patches), cfg.batch_size * 2):
                x = val.patches[start:start + cfg.batch_size * 2].float().to(self.device)
                y = val.targets[start:start + cfg.batch_size * 2].to(self.device)
                m = val.masks[start:start + cfg.batch_size * 2].to(self.device)
                with autocast_for(self.device, cfg.amp):
                    logits = network(x.contiguous(memory_format=torch.channels_last)).flatten(1)
                total += float(run.loss.masked_focal(logits, y, m)) * len(x)
                probs.append(torch.sigmoid(logits.float()).cpu())
        if not probs:
            return {"val_loss": float("nan"), "metrics": {}, "probs": None, "targets": None}
        p = torch.cat(probs).numpy()
        return {"val_loss": total / len(val.patches), "probs": p, "targets": val.targets.numpy(),
                "metrics": patch_metrics(val.targets.numpy(), p, list(cfg.classes))}

    def _lesion_validation(self, run: _Run, val: ValidationSet) -> Optional[Dict[str, Any]]:
        if not val.records:
            return None
        from ..evaluation.lesions import candidate_predictor, evaluate_lesions, operating_thresholds

        cfg = self.config
        loaded = LoadedModel(network=run.network, info=run.info, path="<training>", sha256="")
        predictor = candidate_predictor(loaded, mode=cfg.validation_mode, device=str(self.device), amp=cfg.amp)
        result = evaluate_lesions(predictor, val.records, list(cfg.classes), images=val.images)
        result["thresholds"] = operating_thresholds(result.pop("cases"), list(cfg.classes),
                                                    fp_per_image=cfg.operating_fp_per_image)
        run.network.train()
        return result

    # ---- the loop -----------------------------------------------------------------------
    def fit(self, train_images: Sequence[PreparedImage], val_images: Sequence[PreparedImage],
            resume: bool = False, data_description: str = "", val_records: Sequence[Any] = (),
            val_mammograms: Optional[Sequence[Any]] = None, provenance: Optional[Provenance] = None) -> Dict[str, Any]:
        """Train; ``val_records`` (with ``val_mammograms``, the read images, optional) are the
        whole validation images for FROC selection; ``provenance`` goes into the model file."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        run = self._build(train_images, data_description)
        run.info.provenance = provenance
        x, y, m, _ = validation_patches(val_images, len(cfg.classes), cfg.sampling,
                                        cfg.validation_patches_per_finding, cfg.validation_patches_per_image)
        use_froc = cfg.selection == "froc" and bool(val_records)
        val = ValidationSet(x, y, m, list(val_records) if use_froc else [], val_mammograms if use_froc else None)
        state = {"epoch": 0, "best": None, "epochs_without_improvement": 0, "history": [], "hard_negatives": []}
        checkpoint_path = self.out / CHECKPOINT
        if resume:
            state = self._resume(run, checkpoint_path)
        elif self.ctx.is_main:
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if state["hard_negatives"]:
            self._set_hard_negatives(run, [Slot(int(i), -1, -2, tuple(r)) for i, r in state["hard_negatives"]])
        writer = self._tensorboard() if self.ctx.is_main else None
        mine_after = mining_epochs(cfg.epochs, cfg.hard_negative_rounds)
        started = time.time()
        while state["epoch"] < cfg.epochs:
            epoch = state["epoch"] + 1
            start = time.time()
            row: Dict[str, Any] = {"epoch": epoch, **self._train_epoch(run, epoch)}
            patch = self._patch_validation(run, val)
            row["val_loss"] = patch["val_loss"]
            row["val_weighted_f1"] = patch["metrics"].get("weighted_f1", float("nan"))
            lesion = None
            if use_froc and (epoch % cfg.validate_every == 0 or epoch == cfg.epochs) and self.ctx.is_main:
                lesion = self._lesion_validation(run, val)
                row.update({f"val_sens@{k}": v for k, v in lesion["all_classes_froc"].items()})
                row["val_froc_score"], row["val_image_auc"] = lesion["score"], lesion["image_auc"]
            monitored = self._monitored(row, lesion, use_froc)
            self._step_scheduler(run, row)
            if epoch in mine_after:
                hard = mine_hard_negatives(run.network, train_images, cfg.sampling, len(cfg.classes),
                                           self.device, cfg.hard_negative_per_image, cfg.hard_negative_min_score,
                                           amp=cfg.amp)
                state["hard_negatives"] = [(s.image, list(s.region)) for s in hard]
                self._set_hard_negatives(run, hard)
                row["hard_negatives"] = len(hard)
                logger.info("epoch %d: mined %d hard negatives", epoch, len(hard))
            row["lr"] = run.optimizer.param_groups[0]["lr"]
            row["seconds"] = time.time() - start
            improved = monitored is not None and (state["best"] is None or monitored > state["best"] + 1e-9)
            if monitored is not None:
                if improved:
                    state["best"], state["epochs_without_improvement"] = monitored, 0
                else:
                    state["epochs_without_improvement"] += 1
            state["history"].append(row)
            state["epoch"] = epoch
            if self.ctx.is_main:
                if improved:
                    self._save_best(run, epoch, patch, lesion)
                self._log(row, writer)
                self._checkpoint(run, state, checkpoint_path)
                logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                              if isinstance(v, float)))
            if state["epochs_without_improvement"] >= cfg.early_stopping_patience:
                logger.info("early stopping after epoch %d", epoch)
                break
            if cfg.time_limit_minutes and time.time() - started > 60 * cfg.time_limit_minutes:
                logger.info("time limit (%.1f min) reached after epoch %d", cfg.time_limit_minutes, epoch)
                state["stopped_by_time_limit"] = True
                break
        if writer is not None:
            writer.close()
        return state

    def _monitored(self, row, lesion, use_froc) -> Optional[float]:
        """Higher is better: the FROC score when whole-image validation ran this epoch, else
        minus the validation (or training) loss when selecting by loss."""
        if use_froc:
            monitored = float(lesion["score"]) if lesion is not None else float("nan")
        else:
            loss = row["val_loss"] if np.isfinite(row["val_loss"]) else row["train_loss"]
            monitored = -float(loss)
        if self.ctx.world_size > 1:  # every rank follows rank 0's decision
            value = torch.tensor([monitored], dtype=torch.float64)
            dist.broadcast(value, 0)
            monitored = float(value[0])
        return monitored if np.isfinite(monitored) else None

    def _step_scheduler(self, run: _Run, row) -> None:
        if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.scheduler.step(row["val_loss"] if np.isfinite(row["val_loss"]) else row["train_loss"])
        else:
            run.scheduler.step()

    def _save_best(self, run: _Run, epoch: int, patch, lesion) -> None:
        cfg = self.config
        info = run.info
        if lesion is not None:
            info.thresholds = lesion["thresholds"]
            info.training["lesion_validation"] = {k: v for k, v in lesion.items() if k not in ("thresholds",)}
        elif patch["probs"] is not None:  # no whole-image validation: F1-best thresholds on the patches
            from ..evaluation.metrics import best_thresholds

            info.thresholds = best_thresholds(patch["targets"], patch["probs"])
        else:
            info.thresholds = [0.5] * len(cfg.classes)
        info.training.update({"best_epoch": epoch, "validation": patch["metrics"]})
        save_model(run.network, info, self.out / BEST_MODEL)

    def _checkpoint(self, run: _Run, state, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({"model": run.network.state_dict(), "optimizer": run.optimizer.state_dict(),
                        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
                        "state": _plain(state), "rng": _rng_state(), "config": self.config.to_dict()}, tmp)

    def _resume(self, run: _Run, path: Path) -> Dict[str, Any]:
        if not path.exists():
            raise MammoPatchError("nothing to resume: no checkpoint", path)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        run.network.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        run.scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        logger.info("resuming after epoch %d", saved["state"]["epoch"])
        return saved["state"]

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _log(self, row: Dict[str, Any], writer) -> None:
        path = self.out / METRICS_CSV
        rows: List[Dict[str, Any]] = []
        if path.exists():
            rows = [r for r in csv.DictReader(open(path)) if int(r["epoch"]) < row["epoch"]]
        rows.append(row)
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="") as handle:
                w = csv.DictWriter(handle, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, row["epoch"])


def _plain(value):
    """Checkpoint state as plain Python types (loads with weights_only=True)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


@contextlib.contextmanager
def _main_thread_data(num_workers: int):
    """Sampling and augmentation on the main thread (``num_workers`` 0) run at one torch
    thread, as DataLoader workers do: their operators touch a few small tensors, where an
    OpenMP team costs more than it saves, and on a CPU shared with other jobs every parallel
    region waits for its slowest thread (benchmarks/RESULTS.md, training throughput)."""
    threads = torch.get_num_threads()
    if num_workers or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
