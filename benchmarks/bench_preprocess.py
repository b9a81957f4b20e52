"""Preprocessing speed on a full-field digital mammogram (3000 x 2400, 16-bit DICOM).

Times read + ScaleToUnit + CLAHE x 2 + Otsu crop end to end, and, as the baseline measured in
the same run, the same pipeline with scikit-image's CLAHE in place of OpenCV's. Prints the
seconds per image, the ratio to the baseline and whether the 1.5 s budget is met.

    python benchmarks/bench_preprocess.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from MammoPatchLib.io import read_mammogram
from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom
from MammoPatchLib.transforms import clahe as clahe_module  # noqa: F401  (module patched below)
from MammoPatchLib.transforms import preprocess

BUDGET_S = 1.5


def skimage_clahe(image01, spacing_mm, scale):
    from skimage.exposure import equalize_adapthist

    kernel = (max(8, int(round(scale.tile_mm / spacing_mm))),) * 2
    return equalize_adapthist(image01, kernel_size=kernel, clip_limit=0.01).astype(np.float32)


def time_pipeline(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        preprocess(read_mammogram(path))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mammo = synthesize_mammogram((3000, 2400), 0.085, "L", "MLO", ["round mass", "calcification cluster"],
                                     bits_stored=16, seed=0)
        path = Path(write_dicom(mammo, Path(tmp) / "ffdm.dcm", bits_stored=16))
        ours = time_pipeline(path, args.repeats)
        with mock.patch("MammoPatchLib.transforms.clahe.clahe", skimage_clahe):
            baseline = time_pipeline(path, max(1, math.ceil(args.repeats / 2)))
    print("image: 3000 x 2400, 16-bit DICOM, 0.085 mm")
    print(f"MammoPatch preprocessing (OpenCV CLAHE): {ours:.3f} s/image (median of {args.repeats})")
    print(f"baseline (scikit-image CLAHE):           {baseline:.3f} s/image")
    print(f"speed-up vs baseline: {baseline / ours:.2f}x; budget {BUDGET_S} s: {'met' if ours < BUDGET_S else 'MISSED'}")


if __name__ == "__main__":
    main()
