"""Frozen-backbone features of whole images, computed once and reused by every training run.

With the backbone frozen, the only thing training changes is the head, so the backbone's
dense features of each image (and of its mirror image, the flip augmentation) are computed
once, through the same preprocessing and network the Predictor runs, and stored on disk. A
head then trains on every cell of every image exactly as the dense pass sees it, in seconds
per epoch on a CPU, instead of recomputing the backbone for each patch.

Each image's entry holds the (2, C, h, w) fp16 features ([image, mirrored image], the
mirrored one in mirrored coordinates), and the geometry that maps its cells back to source
pixels (:class:`CellGeometry`): what ``inference.resample.cells_to_source`` needs. The
features are the backbone's output (``cut`` 0: one per 32 px cell), or for a recipe that
tunes the backbone's last ``cut`` stages those before them (EfficientNet-Lite0: ``cut`` 1 and
2 at stride 32, ``cut`` 3 at stride 16, so h x w is then twice the cell grid per side).
The cache key covers the backbone, its weights, the preprocessing, the pixel spacing and
the window grid, and the folder name the cut, so a changed setting never reads stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..inference import Predictor
from ..io import read_mammogram
from ..io.atomic import atomic_path
from ..io.image import MammogramImage
from ..model_file import LoadedModel, ModelInfo, build_network, weights_sha256
from ..networks import FEATURE_STRIDE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellGeometry:
    """Where a preprocessed image's cells lie in its source image: the 3 x 3 index matrix
    (source (row, col, 1) -> preprocessed), the source shape, the analysed (unpadded)
    preprocessed shape, and the side of one cell in preprocessed pixels (``cell_px``: 32, or
    16 for finer cells; the one place the head's targets and the out-of-fold mapping read it
    from). It answers what :func:`cells_to_source` asks of a PreprocessedImage."""

    matrix: Tuple[Tuple[float, ...], ...]
    source_shape: Tuple[int, int]
    valid_shape: Tuple[int, int]
    cell_px: int = FEATURE_STRIDE

    def index_matrix(self) -> np.ndarray:
        return np.asarray(self.matrix, dtype=np.float64)

    def to_processed(self, points_rc: np.ndarray) -> np.ndarray:
        """(N, 2) source (row, col) -> preprocessed (row, col)."""
        points = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
        full = np.c_[points, np.ones(len(points))] @ self.index_matrix().T
        return full[:, :2]

    @property
    def scale(self) -> float:
        """Preprocessed pixels per source pixel (mean of the two axes)."""
        m = self.index_matrix()
        return float(0.5 * (abs(m[0, 0]) + abs(m[1, 1])))


@dataclass
class CachedImage:
    """One image's cached features and what training and evaluation need beside them."""

    record: ImageRecord
    features: torch.Tensor  # (2, C, h, w) float16: [image, mirrored image]
    geometry: CellGeometry
    #: Image pixels per feature position (16: features cached before a stride-2 stage).
    stride: ClassVar[int] = FEATURE_STRIDE

    def load(self) -> torch.Tensor:
        """The (2, C, h, w) features."""
        return self.features

    @property
    def grid_shape(self) -> Tuple[int, int]:
        """The cell grid (one cell per ``geometry.cell_px``, 32 px unless finer cells); features
        cached at stride 16 for 32 px cells are twice as fine."""
        h, w = self.load().shape[-2:]
        factor = self.geometry.cell_px // self.stride
        return int(h) // factor, int(w) // factor


@dataclass
class StoredImage(CachedImage):
    """A cached image whose features stay in their cache entry (``build_cache(...,
    in_memory=False)``) and are read from it each time they are asked for, so a training run
    that streams them never holds every image's at once; ``features`` is None."""

    stride: int = FEATURE_STRIDE
    path: Optional[Path] = None

    def load(self) -> torch.Tensor:
        if self.features is not None:
            return self.features
        return torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)["features"]


def frozen_backbone_model(info: ModelInfo) -> LoadedModel:
    """The pretrained backbone (and an untrained head) that the cache's features come from."""
    network = build_network(info, pretrained=True).eval()
    return LoadedModel(network=network, info=info, path="", sha256=weights_sha256(network.features.state_dict()))


def cache_key(model: LoadedModel) -> str:
    """Hash of everything the features depend on."""
    info = model.info
    described = {"backbone": info.backbone, "weights": model.sha256, "spacing_mm": info.spacing_mm,
                 "window": info.window, "stride": info.stride, "preprocessing": info.preprocessing.__dict__}
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def image_features(predictor: Predictor, image: MammogramImage, cut: int = 0
                   ) -> Tuple[torch.Tensor, CellGeometry, int]:
    """(2, C, h, w) backbone features of ``image`` and its mirror, through the Predictor's
    own preprocessing (window grid included) and network, with their stride in pixels;
    ``cut`` > 0: the features before the backbone's last ``cut`` stages, for a run that tunes
    those stages."""
    prepared = predictor.preprocess(image)
    batch = prepared.tensor.as_tensor()[None].float()
    both = torch.cat([batch, torch.flip(batch, dims=(-1,))]).contiguous(memory_format=torch.channels_last)
    backbone = predictor.network.features
    features = backbone.features_before(both, cut) if cut else backbone(both)
    matrix = prepared.index_matrix()
    geometry = CellGeometry(tuple(tuple(float(v) for v in row) for row in matrix),
                            tuple(int(v) for v in prepared.source_shape), tuple(int(v) for v in prepared.valid_shape))
    return features.contiguous().half(), geometry, int(batch.shape[-2]) // int(features.shape[-2])


def cache_folder(cache_dir: Path, model: LoadedModel, cut: int) -> Path:
    """Where one backbone's features at one cut are kept (the cut in the name: ``-cut2``)."""
    return Path(cache_dir) / f"{model.info.backbone}-{cache_key(model)}{f'-cut{cut}' if cut else ''}"


def build_cache(records: Sequence[ImageRecord], info: ModelInfo, cache_dir: Path,
                progress: bool = True, cut: int = 0, in_memory: bool = True
                ) -> Tuple[List[CachedImage], List[str]]:
    """Features of every record (the backbone's, or with ``cut`` > 0 those before its last
    ``cut`` stages), read from ``cache_dir`` where present, computed (and stored atomically,
    one file per image) where not; ``in_memory`` False leaves them on disk (each
    :class:`CachedImage` then reads its entry when asked). Returns (cached images, errors
    naming the files that could not be read)."""
    from dataclasses import replace

    model = frozen_backbone_model(replace(info, tuned_stages=0))
    predictor = Predictor(model, mode="fast", device="cpu", thresholds=[0.5] * len(info.classes))
    folder = cache_folder(cache_dir, model, cut)
    folder.mkdir(parents=True, exist_ok=True)
    cached: List[CachedImage] = []
    errors: List[str] = []
    iterator = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc="backbone features", unit="img")
    for record in iterator:
        path = folder / f"{record.image_id}.pt"
        entry = _read_entry(path)
        if entry is None:
            try:
                image = read_mammogram(record.path, spacing_mm=record.spacing_mm)
                predictor.check_image(image)
                entry = image_features(predictor, image, cut=cut)
            except MammoPatchError as exc:
                errors.append(str(exc))
                continue
            features, geometry, stride = entry
            with atomic_path(path) as tmp:
                torch.save({"features": features, "matrix": torch.tensor(geometry.matrix, dtype=torch.float64),
                            "source_shape": list(geometry.source_shape),
                            "valid_shape": list(geometry.valid_shape), "stride": stride}, tmp)
        features, geometry, stride = entry
        cached.append(StoredImage(record, features if in_memory else None, geometry, stride=stride, path=path))
    return cached, errors


def _read_entry(path: Path) -> Optional[Tuple[torch.Tensor, CellGeometry, int]]:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        matrix = tuple(tuple(float(v) for v in row) for row in payload["matrix"].tolist())
        geometry = CellGeometry(matrix, tuple(payload["source_shape"]), tuple(payload["valid_shape"]))
        return payload["features"], geometry, int(payload.get("stride", FEATURE_STRIDE))
    except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed, never trusted
        logger.warning("recomputing the damaged feature cache entry %s (%s)", path, type(exc).__name__)
        return None
