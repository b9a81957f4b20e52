"""Lesion synthesis: lesions of one woman moved into normal breasts of another woman of the
same fold, their boxes with them, deterministically, and never across folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MammoPatchLib.datasets import Finding, ImageRecord
from MammoPatchLib.errors import MammoPatchError
from MammoPatchLib.training.lesion_synthesis import (SKIN_PX, feathered_disc, insert_lesion, pectoral_corner,
                                                     placement_distance, shared_fold, synthesise_lesions)

SIZE = 256
LESION_RADIUS = 8


def breast(right: bool, rng: np.random.Generator, level: float) -> np.ndarray:
    """A half-disc 'breast' against the left (or right) edge, textured, on a black background."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    wall = SIZE - 1 if right else 0
    inside = np.hypot(yy - SIZE / 2, xx - wall) < 0.45 * SIZE
    return np.where(inside, level + rng.normal(0, 4, (SIZE, SIZE)), 0.0)


def write(pixels: np.ndarray, path: Path, dtype=np.uint8) -> Path:
    Image.fromarray(np.clip(pixels, 0, np.iinfo(dtype).max).astype(dtype)).save(path)
    return path


def small_data(folder: Path, dtype=np.uint8):
    """Four women in two folds: each has a breast with one bright lesion and a normal breast."""
    rng = np.random.default_rng(0)
    scale = 1 if dtype == np.uint8 else 200
    records, fold_of = [], {}
    for woman in range(4):
        right = woman % 2 == 1
        lesion = breast(right, rng, 90.0 + 10 * woman)
        cx = SIZE - 45 if right else 45
        cy = 120
        yy, xx = np.mgrid[:SIZE, :SIZE]
        lesion[np.hypot(yy - cy, xx - cx) <= LESION_RADIUS - 2] += 100.0
        box = (cx - LESION_RADIUS, cy - LESION_RADIUS, cx + LESION_RADIUS, cy + LESION_RADIUS)
        normal = breast(right, rng, 90.0 + 10 * woman)
        for side, pixels, findings in (("a", lesion, [Finding("Mass", box)]), ("b", normal, [])):
            image_id = f"w{woman}{side}"
            records.append(ImageRecord(path=write(pixels * scale, folder / f"{image_id}.png", dtype),
                                       image_id=image_id, patient_id=f"woman-{woman}", findings=findings,
                                       spacing_mm=0.2, size=(SIZE, SIZE)))
            fold_of[image_id] = woman % 2  # women 0 and 2 in fold 0, 1 and 3 in fold 1
    return records, fold_of


def test_lesions_move_into_normal_breasts_of_the_same_fold(tmp_path):
    records, fold_of = small_data(tmp_path)
    made = synthesise_lesions(records, fold_of, 1, tmp_path / "synthetic", seed=3)
    assert len(made) == 4  # every lesion fits
    by_id = {r.image_id: r for r in records}
    for one in made:
        donor, recipient = by_id[one.donor], by_id[one.recipient]
        assert recipient.is_normal and donor.patient_id != recipient.patient_id
        assert fold_of[one.donor] == fold_of[one.recipient] == one.fold
        assert one.record.patient_id == f"{donor.patient_id}+{recipient.patient_id}"
        pixels = np.asarray(Image.open(one.record.path))
        assert pixels.dtype == np.uint8 and pixels.shape == (SIZE, SIZE)
        (finding,) = one.record.findings
        assert finding.category == "Mass"
        assert np.allclose(np.subtract(finding.box[2:], finding.box[:2]), 2 * LESION_RADIUS)
        x, y = (int(v) for v in finding.centre)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        distance = np.hypot(yy - y, xx - x)
        centre = pixels[distance <= LESION_RADIUS - 4].mean()
        surround = pixels[(distance > LESION_RADIUS + 2) & (distance <= LESION_RADIUS + 12)].mean()
        assert centre > surround + 50  # the lesion is where its box says
        original = np.asarray(Image.open(recipient.path)).astype(float)
        assert original[y, x] > 0  # inside the recipient's breast, not on the background


def test_synthesis_is_deterministic_and_reused(tmp_path):
    records, fold_of = small_data(tmp_path)
    four = synthesise_lesions(records, fold_of, 2, tmp_path / "a", seed=1)
    one = synthesise_lesions(records, fold_of, 1, tmp_path / "b", seed=1)
    for first in one:  # copy 0 does not depend on how many copies are made
        twin = next(m for m in four if m.record.image_id == first.record.image_id)
        assert first.record.findings == twin.record.findings and first.recipient == twin.recipient
        assert np.array_equal(np.asarray(Image.open(first.record.path)), np.asarray(Image.open(twin.record.path)))
    stamps = {m.record.path: m.record.path.stat().st_mtime_ns for m in one}
    again = synthesise_lesions(records, fold_of, 1, tmp_path / "b", seed=1)  # read back, not made again
    assert [m.record for m in again] == [m.record for m in one]
    assert {m.record.path: m.record.path.stat().st_mtime_ns for m in again} == stamps
    other = synthesise_lesions(records, fold_of, 1, tmp_path / "c", seed=2)
    assert {m.record.image_id for m in other}.isdisjoint(m.record.image_id for m in one)
    assert any(not np.array_equal(np.asarray(Image.open(a.record.path)), np.asarray(Image.open(b.record.path)))
               for a, b in zip(one, other))


def test_each_donor_is_read_once_for_all_its_copies(tmp_path, monkeypatch):
    from MammoPatchLib.training import lesion_synthesis

    records, fold_of = small_data(tmp_path)
    donors = {str(r.path) for r in records if r.findings}
    reads = []
    real = lesion_synthesis.read_mammogram
    monkeypatch.setattr(lesion_synthesis, "read_mammogram",
                        lambda path, **kw: reads.append(str(path)) or real(path, **kw))
    made = synthesise_lesions(records, fold_of, 3, tmp_path / "synthetic", seed=1)
    assert len(made) == 3 * len(donors)
    assert {donor: reads.count(donor) for donor in donors} == {donor: 1 for donor in donors}


def test_sixteen_bit_sources_give_sixteen_bit_images(tmp_path):
    records, fold_of = small_data(tmp_path, dtype=np.uint16)
    made = synthesise_lesions(records, fold_of, 1, tmp_path / "synthetic")
    assert made and all(np.asarray(Image.open(m.record.path)).dtype == np.uint16 for m in made)


def test_no_recipient_in_the_fold_means_no_image(tmp_path):
    records, fold_of = small_data(tmp_path)
    alone = {k: (0 if k.startswith("w0") else 1) for k in fold_of}  # woman 0 alone in fold 0
    made = synthesise_lesions(records, alone, 1, tmp_path / "synthetic")
    assert "w0a" not in {m.donor for m in made}
    assert all(alone[m.donor] == alone[m.recipient] for m in made)
    with pytest.raises(MammoPatchError, match="not in one fold"):
        shared_fold("w0a", "w1b", fold_of, "here")


def test_place_keeps_away_from_skin_and_pectoral_muscle():
    rng = np.random.default_rng(0)
    pixels = breast(False, rng, 100.0)
    distance = placement_distance(pixels, "MLO", right=False)
    corner = pectoral_corner(pixels > 50, right=False)
    assert corner[30, 5] and not corner[SIZE - 20, 5]  # upper chest-wall corner only
    assert not (distance[corner] > 0).any() and (distance[:, SIZE - 100:] == 0).all()  # beyond the skin line
    assert placement_distance(pixels, "CC", right=False)[corner].max() > 0  # a CC view shows no muscle
    donor = pixels.copy()
    donor[115:126, 40:51] += 80
    placed = insert_lesion(donor, (45, 120), 6.0, pixels, distance, np.random.default_rng(1))
    assert placed is not None
    out, (x, y) = placed
    half = feathered_disc(6.0, 16.0).shape[0] // 2
    assert distance[y, x] >= half + SKIN_PX
    assert out[y, x] > pixels[y, x] + 40
    assert insert_lesion(donor, (45, 120), 6.0, pixels, np.minimum(distance, half), np.random.default_rng(1)) is None


def test_feathered_disc_is_one_inside_and_zero_at_its_edge():
    alpha = feathered_disc(5.0, 10.0)
    half = alpha.shape[0] // 2
    assert alpha[half, half] == 1.0 and alpha[half, half + 5] == 1.0
    assert alpha[half, 0] == pytest.approx(0.0, abs=1e-6) and 0.0 < alpha[half, half + 10] < 1.0


def test_a_fold_never_trains_on_its_own_women_lesions_or_breasts(tmp_path):
    import torch

    from MammoPatchLib.training.crossval import fold_training_images
    from MammoPatchLib.training.feature_cache import CachedImage, CellGeometry

    records, fold_of = small_data(tmp_path)
    made = synthesise_lesions(records, fold_of, 1, tmp_path / "synthetic")
    geometry = CellGeometry(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (SIZE, SIZE), (SIZE, SIZE))

    def cached(record):
        return CachedImage(record, torch.zeros(2, 1, 1, 1), geometry)

    real = [cached(r) for r in records]
    synthetic = [(one, cached(one.record)) for one in made]
    woman_fold = {r.patient_id: fold_of[r.image_id] for r in records}
    for fold in (0, 1):
        train = fold_training_images(fold, real, fold_of, synthetic=synthetic)
        women = {woman for image in train for woman in image.record.patient_id.split("+")}
        assert women and all(woman_fold[woman] != fold for woman in women)
        assert sum("+" in image.record.patient_id for image in train) == sum(one.fold != fold for one in made) > 0
