"""One configuration (a JSON file) holds every training parameter; validated on load with
messages that name the bad field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..config import config_from_dict, config_to_dict, read_config_file
from ..errors import ConfigError
from ..networks import BACKBONES, DEFAULT_BACKBONE, HEAD_POOLINGS
from ..patches import SamplingConfig
from ..transforms import PreprocessConfig
from ..vocabulary import FINDING_CLASSES
from .augment import AugmentConfig

SELECTIONS = ("froc", "loss")
LR_SCHEDULES = ("plateau", "cosine")


@dataclass
class TrainConfig:
    """Training parameters; defaults follow the poster where it gives them.

    Poster: focal loss, Adam lr 1e-4, ReduceLROnPlateau(patience 5, factor 0.1), weighted
    sampling, 256 px patches. Ours (README, "Training"): inference-scale window sampling,
    the consistency term (``sampling.context_px`` > 0 and ``consistency_weight``), hard-negative
    rounds, model selection by lesion-level FROC on whole validation images, a test split of
    women, the head's pooling.

    ``threads``: torch's intra-op threads for the run (null: torch's default, one per core). On
    a CPU shared with other jobs, OpenMP threads that wait for each other at every operator
    can make 2 threads several times slower than 1 (``python -m benchmarks.bench_training
    --threads 1,2`` measures it on the machine at hand).
    """

    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    backbone_weights: Optional[str] = None
    init_model: Optional[str] = None
    head_pooling: str = "mean"
    classes: List[str] = field(default_factory=lambda: list(FINDING_CLASSES))
    spacing_mm: Optional[float] = 0.2
    epochs: int = 30
    batch_size: int = 16
    patches_per_epoch: int = 1024
    learning_rate: float = 1e-4
    lr_schedule: str = "plateau"
    weight_decay: float = 0.0
    focal_gamma: float = 2.0
    consistency_weight: float = 0.0
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    early_stopping_patience: int = 10
    no_finding_share: float = 0.5
    hard_negative_rounds: int = 0
    hard_negative_share: float = 0.5
    hard_negative_per_image: int = 8
    hard_negative_min_score: float = 0.3
    freeze_fraction: float = 0.0
    dropout: float = 0.2
    validation_fraction: float = 0.2
    test_fraction: float = 0.0
    split_file: Optional[str] = None
    time_limit_minutes: Optional[float] = None
    validation_patches_per_finding: int = 4
    validation_patches_per_image: int = 2
    selection: str = "froc"
    validate_every: int = 1
    validation_mode: str = "fast"
    operating_fp_per_image: float = 0.5
    flip_tta: bool = False
    num_workers: int = 0
    threads: Optional[int] = None
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {sorted(BACKBONES)}")
        for name in ("epochs", "batch_size", "patches_per_epoch", "learning_rate", "validate_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        checks = [
            (0.0 <= self.freeze_fraction < 1.0, "freeze_fraction must be in [0, 1)"),
            (0.0 < self.no_finding_share < 1.0, "no_finding_share must be in (0, 1)"),
            (0.0 <= self.hard_negative_share <= 1.0, "hard_negative_share must be in [0, 1]"),
            (self.hard_negative_rounds >= 0, "hard_negative_rounds must be >= 0"),
            (0.0 <= self.validation_fraction < 1.0, "validation_fraction must be in [0, 1)"),
            (0.0 <= self.test_fraction < 1.0 and self.validation_fraction + self.test_fraction < 1.0,
             "test_fraction must be in [0, 1) and leave training women"),
            (self.consistency_weight >= 0.0, "consistency_weight must be >= 0"),
            (self.selection in SELECTIONS, f"selection must be one of {SELECTIONS}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.head_pooling in HEAD_POOLINGS, f"head_pooling must be one of {HEAD_POOLINGS}"),
            (self.validation_mode in ("fast", "exact"), "validation_mode must be fast or exact"),
            (self.spacing_mm is None or self.spacing_mm > 0, "spacing_mm must be positive or null"),
            (self.time_limit_minutes is None or self.time_limit_minutes > 0, "time_limit_minutes must be positive"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1 or null (torch's default)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing, resampling to the run's pixel spacing."""
        return self.preprocessing.at_spacing(self.spacing_mm)

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """Build from a mapping; sub-configs may be partial (their other fields keep defaults)."""
        return config_from_dict(cls, values, "training config")

    @classmethod
    def load(cls, path) -> "TrainConfig":
        values = read_config_file(path)
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(exc.reason, path) from None
