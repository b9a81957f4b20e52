"""A head fitted from cached features streamed off disk equals the one fitted with every image's
features and block vectors in memory, and never holds more than a few images' features."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from MammoPatchLib.datasets import Finding, ImageRecord
from MammoPatchLib.networks import PatchClassifier, TunedStages
from MammoPatchLib.training import stage_fit
from MammoPatchLib.training.cell_head_fit import fit_cell_head
from MammoPatchLib.training.feature_cache import CellGeometry, StoredImage
from MammoPatchLib.training.recipe import Recipe
from MammoPatchLib.training.stage_fit import fit_streamed_head, fit_tuned_tail_head, frozen_outputs

CLASSES = ["Mass", "Suspicious Calcification"]


def _stored(tmp_path: Path, n: int, channels: int, grid=(9, 7), seed: int = 0) -> List[StoredImage]:
    """``n`` images' features written as cache entries (one lesion each on every other image)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = grid
        findings = [Finding(CLASSES[i % 2], (32.0 * (1 + i % 4), 64.0, 32.0 * (2 + i % 4), 112.0))] if i % 2 == 0 else []
        record = ImageRecord(path=Path(f"i{i}.png"), image_id=f"i{i}", patient_id=f"w{i}", findings=findings)
        geometry = CellGeometry(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (32 * h, 32 * w), (32 * h, 32 * w))
        path = tmp_path / f"i{i}.pt"
        features = torch.from_numpy(rng.normal(size=(2, channels, h, w)).astype(np.float16))
        torch.save({"features": features}, path)
        images.append(StoredImage(record, None, geometry, path=path))
    return images


def _in_memory(images: List[StoredImage]) -> List[StoredImage]:
    return [StoredImage(im.record, im.load().clone(), im.geometry, path=im.path) for im in images]


def _recipe(**changes) -> Recipe:
    base = dict(classes=CLASSES, bottleneck=6, hidden=8, epochs=4, negatives_per_epoch=60, batch_cells=16,
                flip_augment=True, radius_px=40.0)
    return Recipe(**{**base, **changes})


def _assert_same_head(a, b) -> None:
    for key, value in a.mlp.state_dict().items():
        torch.testing.assert_close(b.mlp.state_dict()[key], value, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.projection.weight, a.projection.weight, atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes", [{}, {"hard_negative_share": 0.5, "hard_negative_after": 1, "dropout": 0.2}])
def test_a_streamed_head_equals_the_head_fitted_in_memory(tmp_path, changes):
    """Flip augment, and hard negatives re-scored from the second epoch (with dropout, so the
    torch random state must match too); a loader with a worker process reads the crops."""
    recipe = _recipe(**changes)
    stored = _stored(tmp_path, 6, 24)
    expected = fit_cell_head(_in_memory(stored), recipe, CLASSES, seed=3)
    streamed = fit_streamed_head(stored, recipe, CLASSES, seed=3, workers=1)
    _assert_same_head(expected, streamed)
    untrained = fit_streamed_head(stored, _recipe(epochs=1, **changes), CLASSES, seed=3, workers=0)
    assert not torch.allclose(untrained.mlp.hidden.weight, streamed.mlp.hidden.weight, atol=1e-3)


def test_a_one_stage_recipes_whole_fit_streams_its_head_phase_and_equals_the_in_memory_one(tmp_path, monkeypatch):
    """The stages recipe's head phase runs the pretrained stage on each crop (no
    ``frozen_outputs`` of every image); the whole fit, tail epochs included, equals the fit
    whose head phase held every image's stage output."""
    torch.manual_seed(0)
    backbone = PatchClassifier(pretrained=False).features.eval()
    stages = TunedStages(backbone, 1).eval()
    channels = backbone.features_before(torch.zeros(1, 3, 64, 64), 1).shape[1]
    stored = _stored(tmp_path, 4, channels, seed=1)
    recipe = _recipe(trains="stages", tune_stages=1, tail_epochs=1, tail_learning_rate=1e-3, epochs=2)
    streamed = fit_tuned_tail_head(stored, recipe, CLASSES, stages, seed=5, workers=0)
    monkeypatch.setattr(stage_fit, "fit_streamed_head", lambda images, recipe, classes, seed, stages, workers:
                        fit_cell_head(frozen_outputs(images, stages), recipe, classes, seed=seed))
    expected = fit_tuned_tail_head(stored, recipe, CLASSES, stages, seed=5, workers=0)
    _assert_same_head(expected, streamed)
    for key, value in expected.tail.state_dict().items():
        torch.testing.assert_close(streamed.tail.state_dict()[key], value, atol=1e-5, rtol=0)


class _NumpyImage(StoredImage):
    """A cache entry read into numpy memory, which tracemalloc counts (torch's own allocator it
    does not), so the test sees how many images' features are held at once."""

    def load(self) -> torch.Tensor:
        return torch.from_numpy(np.load(self.path.with_suffix(".npy")))


def test_a_streamed_fit_holds_a_batchs_images_not_every_image(tmp_path):
    """40 images: the in-memory fit's inputs alone are all 40 images' features; the streamed
    fit (no worker cache, no worker process) never holds more than a few at once."""
    import tracemalloc

    stored = _stored(tmp_path, 40, 512, grid=(10, 8))
    images = []
    for im in stored:
        np.save(im.path.with_suffix(".npy"), im.load().numpy())
        images.append(_NumpyImage(im.record, None, im.geometry, path=im.path))
    one_image = images[0].load().numpy().nbytes
    recipe = _recipe(epochs=1, batch_cells=4, negatives_per_epoch=40)
    tracemalloc.start()
    try:
        fit_streamed_head(images, recipe, CLASSES, seed=0, workers=0, cache_bytes=0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held = [im.load() for im in images]
        _, all_images = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) == 40 and all_images >= 40 * one_image
    assert peak < 10 * one_image, f"the streamed fit held {peak / one_image:.1f} images' features at once"
