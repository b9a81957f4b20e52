"""More lesions from the same women: each annotated lesion cut out and inserted into the normal
breast tissue of another woman of the same fold.

With 76 lesions the head sees each one in a single surround. A synthetic image moves a lesion
(its annotated circle plus a feathered margin) into a normal image of another woman, so the
head learns the lesion against tissue it was not found in, with its box moved along:

1. the recipient is varied first: a mild elastic deformation (MONAI's ``Rand2DElastic``);
2. the place is inside the recipient's Otsu breast mask (:class:`~..transforms.crop.OtsuBreastMask`)
   away from the skin line and, on an MLO view (or one whose view is unknown, such as
   mini-MIAS's), from the pectoral muscle in the upper chest-wall corner; of a random sample of
   such places the one whose surround is closest in mean intensity to the donor's surround wins
   (density matching), and the patch is shifted by the remaining difference of means;
3. the patch is alpha-blended with a feathered circular mask (1 over the lesion's circle, a
   cosine ramp to 0 over the margin), mirrored when the two breasts face opposite ways;
4. a mild gamma and contrast change (MONAI's ``AdjustContrast``, and ``ScaleIntensityFixedMean``
   about 0, so the background stays black) varies the whole composite.

Fold safety: donor and recipient are always women of one fold ``k``; the image then trains only
the heads of the folds other than ``k`` (:attr:`SyntheticImage.fold`), so no held-out woman's
lesion or breast ever trains her own fold.

Each insertion is deterministic in (seed, donor image, lesion, copy): copy 0 is the same image
whether 1 or 4 copies per lesion are asked for, and a second run reads the files written by
the first (a PNG of the source's bit depth and a JSON sidecar holding its record) instead of
making them again. The folder name holds a hash of the seed, the algorithm's version and the
folds, since a change of any of them changes the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..datasets import Finding, ImageRecord
from ..errors import MammoPatchError
from ..io import MammogramImage, read_mammogram
from ..io.atomic import atomic_path
from ..transforms.laterality import chest_wall_on_right

logger = logging.getLogger(__name__)

#: Bumped whenever the images made for the same inputs change (it is part of the folder name).
SYNTHESIS_VERSION = 1
#: The folder, under the feature cache, that holds the synthetic images.
SYNTHETIC_DIR = "synthetic-lesions"
#: Feathered margin around a lesion's circle: half its radius, within these pixels.
MARGIN_PX = (16.0, 32.0)
#: Least distance in pixels between the pasted patch and the skin line (or pectoral muscle).
SKIN_PX = 16.0
#: The pectoral muscle of an MLO view: the triangle in the upper chest-wall corner of the
#: breast's box spanning these shares of the box's width and height.
PECTORAL_SHARE = (0.4, 0.5)
#: Candidate places drawn per insertion; the best density match among them is taken.
CANDIDATES = 48
#: Elastic deformation of the recipient: control-point spacing and displacement (pixels).
ELASTIC_SPACING_PX = 128
ELASTIC_MAGNITUDE_PX = (1.0, 4.0)
#: Gamma and contrast factor ranges of the intensity variation.
GAMMA_RANGE = (0.85, 1.15)
CONTRAST_RANGE = (0.9, 1.1)


@dataclass(frozen=True)
class SyntheticImage:
    """A synthetic image: its record (``patient_id`` names the donor and recipient women), the
    donor and recipient image ids, and the fold both belong to."""

    record: ImageRecord
    donor: str
    recipient: str
    fold: int


def lesion_circle(finding: Finding) -> Tuple[float, float, float]:
    """(x, y, radius) of a finding's circle: its box's centre and half its mean side."""
    x0, y0, x1, y1 = finding.box
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1), 0.25 * ((x1 - x0) + (y1 - y0))


def feather_margin(radius: float) -> float:
    """The blending margin of a lesion of ``radius`` px (:data:`MARGIN_PX`)."""
    return float(np.clip(0.5 * radius, *MARGIN_PX))


def feathered_disc(radius: float, margin: float) -> np.ndarray:
    """(2R+1, 2R+1) alpha, R = ceil(radius + margin): 1 within ``radius``, a cosine ramp to 0
    over ``margin``, 0 beyond: no seam at the patch's edge."""
    half = int(np.ceil(radius + margin))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    distance = np.hypot(yy, xx)
    ramp = np.clip((distance - radius) / max(margin, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * ramp))).astype(np.float32)


def pectoral_corner(breast: np.ndarray, right: bool) -> np.ndarray:
    """The upper chest-wall corner of the breast's box (:data:`PECTORAL_SHARE`), where an MLO
    view shows the pectoral muscle: no lesion is placed there."""
    corner = np.zeros_like(breast)
    rows, cols = np.nonzero(breast)
    if not len(rows):
        return corner
    top, height = rows.min(), rows.max() - rows.min() + 1
    left, right_edge, width = cols.min(), cols.max(), cols.max() - cols.min() + 1
    yy, xx = np.mgrid[:breast.shape[0], :breast.shape[1]]
    across = (right_edge - xx if right else xx - left) / (PECTORAL_SHARE[0] * width)
    down = (yy - top) / (PECTORAL_SHARE[1] * height)
    corner[(across >= 0) & (down >= 0) & (across + down < 1)] = True
    return corner


def placement_distance(pixels: np.ndarray, view: str, right: bool) -> np.ndarray:
    """Each pixel's distance (px) to the nearest place a lesion must not reach: outside the
    Otsu breast mask (the skin line), beyond the image's edge (where the chest wall meets it)
    or, on an MLO view or an unknown one, in the pectoral corner (:func:`pectoral_corner`)."""
    from scipy.ndimage import distance_transform_edt

    from ..transforms.crop import OtsuBreastMask

    breast = OtsuBreastMask(subsample=4).mask2d(pixels)
    if view.upper() in ("MLO", ""):
        breast = breast & ~pectoral_corner(breast, right)
    return distance_transform_edt(np.pad(breast, 1))[1:-1, 1:-1]


def ring_offsets(radius: float, margin: float) -> Tuple[np.ndarray, np.ndarray]:
    """(dy, dx) of the pixels of the ring between ``radius`` and ``radius + margin``: a
    lesion's surround, whose mean intensity is its local density."""
    half = int(np.ceil(radius + margin))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    distance = np.hypot(yy, xx)
    ring = (distance > radius) & (distance <= radius + margin)
    return yy[ring], xx[ring]


def _vary_elastic(pixels: np.ndarray, seed: int) -> np.ndarray:
    from monai.transforms import Rand2DElastic

    elastic = Rand2DElastic(spacing=ELASTIC_SPACING_PX, magnitude_range=ELASTIC_MAGNITUDE_PX, prob=1.0,
                            padding_mode="border")
    elastic.set_random_state(seed=seed)
    return np.asarray(elastic(pixels[None])[0], dtype=np.float32)


def _vary_intensity(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from monai.transforms import AdjustContrast, ScaleIntensityFixedMean

    gamma = float(rng.uniform(*GAMMA_RANGE))
    factor = float(rng.uniform(*CONTRAST_RANGE)) - 1.0
    varied = AdjustContrast(gamma)(pixels[None])
    varied = ScaleIntensityFixedMean(factor=factor, preserve_range=True, fixed_mean=False)(varied)
    return np.asarray(varied[0], dtype=np.float32)


def insert_lesion(donor: np.ndarray, centre: Tuple[float, float], radius: float, recipient: np.ndarray,
                  distance: np.ndarray, rng: np.random.Generator, mirror: bool = False, ceiling: float = np.inf
                  ) -> Optional[Tuple[np.ndarray, Tuple[int, int]]]:
    """``recipient`` with the donor's lesion (circle at ``centre`` (x, y), ``radius``) blended in
    at a density-matched place whose ``distance`` to the skin line or pectoral muscle is at
    least the patch's radius plus :data:`SKIN_PX`; ``mirror`` flips the patch left-right.
    Returns (image, new centre (x, y)), or None when the donor's patch leaves its image or no
    place in the recipient is far enough inside the breast. The shift of means is limited so
    that the lesion stays between 0 and ``ceiling`` (the file's top value): no lesion is
    flattened into saturated white."""
    margin = feather_margin(radius)
    alpha = feathered_disc(radius, margin)
    half = alpha.shape[0] // 2
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    if cy - half < 0 or cx - half < 0 or cy + half >= donor.shape[0] or cx + half >= donor.shape[1]:
        return None
    patch = donor[cy - half:cy + half + 1, cx - half:cx + half + 1].astype(np.float32)
    if mirror:
        patch = patch[:, ::-1]
    dy, dx = ring_offsets(radius, margin)
    donor_surround = float(patch[dy + half, dx + half].mean())
    rows, cols = np.nonzero(distance >= half + SKIN_PX)
    if not len(rows):
        return None
    pick = rng.choice(len(rows), size=min(CANDIDATES, len(rows)), replace=False)
    surround = recipient[rows[pick, None] + dy[None], cols[pick, None] + dx[None]].mean(axis=1)
    best = int(np.argmin(np.abs(surround - donor_surround)))
    row, col = int(rows[pick[best]]), int(cols[pick[best]])
    lesion = patch[alpha >= 0.5]
    low, high = -float(np.percentile(lesion, 1)), ceiling - float(np.percentile(lesion, 99))
    shifted = patch + min(max(float(surround[best]) - donor_surround, low), high)
    out = recipient.astype(np.float32, copy=True)
    region = out[row - half:row + half + 1, col - half:col + half + 1]
    region[...] = alpha * shifted + (1.0 - alpha) * region
    return out, (col, row)


def moved_findings(donor: ImageRecord, centre: Tuple[float, float], radius: float, new_centre: Tuple[int, int],
                   mirror: bool) -> List[Finding]:
    """The donor's findings whose centre the patch carries (within the lesion's circle plus
    half the margin, where the blend is at least half the donor's), their boxes moved (and
    mirrored) with it."""
    moved = []
    for finding in donor.findings:
        x, y = finding.centre
        if np.hypot(x - centre[0], y - centre[1]) > radius + 0.5 * feather_margin(radius):
            continue
        x0, y0, x1, y1 = (v - c for v, c in zip(finding.box, (centre[0], centre[1]) * 2))
        if mirror:
            x0, x1 = -x1, -x0
        moved.append(Finding(finding.category, (new_centre[0] + x0, new_centre[1] + y0,
                                                new_centre[0] + x1, new_centre[1] + y1)))
    return moved


def synthesis_key(fold_of: Dict[str, int], seed: int) -> str:
    """The name part that changes whenever the images would: algorithm version, seed, folds."""
    text = json.dumps({"version": SYNTHESIS_VERSION, "seed": seed, "folds": sorted(fold_of.items())})
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def insertion_rng(seed: int, donor_id: str, lesion: int, copy: int) -> np.random.Generator:
    """The random stream of one insertion, independent of how many copies are made."""
    return np.random.default_rng([seed, SYNTHESIS_VERSION, zlib.crc32(donor_id.encode()), lesion, copy])


def donors_and_recipients(records: Sequence[ImageRecord], fold_of: Dict[str, int]
                          ) -> List[Tuple[ImageRecord, List[ImageRecord]]]:
    """Each image with an annotated lesion, and the normal images of other women of its fold
    (fold safety: donor and recipient never straddle two folds)."""
    pairs = []
    for donor in records:
        if not donor.findings:
            continue
        recipients = [r for r in records if r.is_normal and r.patient_id != donor.patient_id
                      and fold_of[r.image_id] == fold_of[donor.image_id]]
        pairs.append((donor, recipients))
    return pairs


def write_like_source(pixels: np.ndarray, bits: int, path: Path) -> None:
    """``pixels`` as a PNG of the source's bit depth (8 or 16), atomically."""
    from PIL import Image

    dtype = np.uint8 if bits <= 8 else np.uint16
    top = float(np.iinfo(dtype).max)
    array = np.clip(np.rint(pixels), 0, top).astype(dtype)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _record_to_dict(made: SyntheticImage) -> Dict:
    r = made.record
    return {"image_id": r.image_id, "patient_id": r.patient_id, "donor": made.donor, "recipient": made.recipient,
            "findings": [[f.category, list(f.box)] for f in r.findings], "image_labels": list(r.image_labels),
            "laterality": r.laterality, "view_position": r.view_position, "spacing_mm": r.spacing_mm,
            "size": list(r.size) if r.size else None}


def _record_from_dict(d: Dict, path: Path, fold_of: Dict[str, int]) -> SyntheticImage:
    record = ImageRecord(path=path, image_id=d["image_id"], patient_id=d["patient_id"],
                         findings=[Finding(c, tuple(b)) for c, b in d["findings"]], image_labels=d["image_labels"],
                         laterality=d["laterality"], view_position=d["view_position"], spacing_mm=d["spacing_mm"],
                         size=tuple(d["size"]) if d["size"] else None)
    return SyntheticImage(record, d["donor"], d["recipient"], shared_fold(d["donor"], d["recipient"], fold_of, path))


def shared_fold(donor: str, recipient: str, fold_of: Dict[str, int], where) -> int:
    """The fold of a synthetic image: its donor's and recipient's, which must be one.

    Raises:
        MammoPatchError: they lie in different folds (or an image is in no fold)."""
    folds = {fold_of.get(donor), fold_of.get(recipient)}
    if len(folds) != 1 or None in folds:
        raise MammoPatchError(f"donor {donor} and recipient {recipient} are not in one fold ({sorted(map(str, folds))})",
                              where)
    return int(folds.pop())


def _make_one(donor: ImageRecord, lesion: int, copy: int, recipients: Sequence[ImageRecord], image_id: str,
              folder: Path, seed: int, fold_of: Dict[str, int], source: MammogramImage) -> Optional[SyntheticImage]:
    """One insertion (see :func:`synthesise_lesions`) of a lesion of ``donor`` (read as
    ``source``): the recipients tried in a random order until the lesion fits in one."""
    rng = insertion_rng(seed, donor.image_id, lesion, copy)
    x, y, radius = lesion_circle(donor.findings[lesion])
    donor_right = chest_wall_on_right(source.pixels)
    for index in rng.permutation(len(recipients)):
        recipient = recipients[int(index)]
        target = read_mammogram(recipient.path, spacing_mm=recipient.spacing_mm)
        pixels = _vary_elastic(target.pixels.astype(np.float32), int(rng.integers(2 ** 31)))
        right = chest_wall_on_right(pixels)
        placed = insert_lesion(source.pixels, (x, y), radius, pixels,
                               placement_distance(pixels, recipient.view_position, right), rng,
                               mirror=right != donor_right, ceiling=float(2 ** target.bits_stored - 1))
        if placed is None:
            continue
        composite, centre = placed
        composite = _vary_intensity(composite, rng)
        path = folder / f"{image_id}.png"
        write_like_source(composite, target.bits_stored, path)
        record = ImageRecord(path=path, image_id=image_id, patient_id=f"{donor.patient_id}+{recipient.patient_id}",
                             findings=moved_findings(donor, (x, y), radius, centre, right != donor_right),
                             image_labels=list(dict.fromkeys([*donor.image_labels, *recipient.image_labels])),
                             laterality=recipient.laterality, view_position=recipient.view_position,
                             spacing_mm=target.spacing_mm, size=tuple(composite.shape))  # a PNG states none
        return SyntheticImage(record, donor.image_id, recipient.image_id,
                              shared_fold(donor.image_id, recipient.image_id, fold_of, path))
    return None


def synthesise_lesions(records: Sequence[ImageRecord], fold_of: Dict[str, int], per_lesion: int, out_dir: Path,
                       seed: int = 0, progress: bool = False) -> List[SyntheticImage]:
    """``per_lesion`` synthetic images per annotated lesion of ``records`` (each lesion into a
    normal image of another woman of its fold), written under ``out_dir`` (or read back from
    an earlier run). A lesion whose patch leaves its image, or that fits in no recipient, is
    skipped (one warning counts them).

    Args:
        fold_of: {image_id: fold} of every record.
        seed: the seed every insertion's random stream derives from (with donor, lesion, copy).
    """
    if per_lesion < 0:
        raise MammoPatchError(f"synthetic images per lesion must be >= 0, not {per_lesion}")
    folder = Path(out_dir) / synthesis_key(fold_of, seed)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(donor, lesion, copy, recipients) for donor, recipients in donors_and_recipients(records, fold_of)
            for lesion in range(len(donor.findings)) for copy in range(per_lesion)]
    if progress and jobs:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="synthetic lesions", unit="img")
    made: List[SyntheticImage] = []
    skipped = 0
    source: Optional[MammogramImage] = None  # the donor being read: its lesions and copies come in a row
    for donor, lesion, copy, recipients in jobs:
        image_id = f"synth-{folder.name}-{donor.image_id}-l{lesion}-c{copy}"
        sidecar = folder / f"{image_id}.json"
        if sidecar.is_file():
            entry = json.loads(sidecar.read_text(encoding="utf-8"))
            one = None if entry.get("skipped") else _record_from_dict(entry, folder / f"{image_id}.png", fold_of)
        else:
            if source is None or source.path != str(donor.path):
                source = read_mammogram(donor.path, spacing_mm=donor.spacing_mm)
            one = _make_one(donor, lesion, copy, recipients, image_id, folder, seed, fold_of, source)
            with atomic_path(sidecar) as tmp:
                tmp.write_text(json.dumps(_record_to_dict(one) if one else {"skipped": True}), encoding="utf-8")
        if one is None:
            skipped += 1
        else:
            made.append(one)
    if skipped:
        logger.warning("%d of %d lesion insertion(s) skipped: the lesion's patch leaves its image or fits in no "
                       "normal breast of its fold", skipped, skipped + len(made))
    return made


__all__ = ["SyntheticImage", "synthesise_lesions", "insert_lesion", "placement_distance", "pectoral_corner",
           "feathered_disc", "moved_findings", "donors_and_recipients", "shared_fold", "SYNTHETIC_DIR"]
