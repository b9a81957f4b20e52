"""Exact vs fast mode: seconds per image and agreement, measured in one run.

Exact mode (window by window on MONAI's SlidingWindowInferer, the poster's inference) is the
baseline; fast mode (one dense pass) is timed against it on the same images, and their
heatmaps are compared per class (Pearson r, max |difference|, same findings), on synthetic
1024 x 1024 and 3000 x 2400 mammograms and, when available, real mini-MIAS images.

    python benchmarks/bench_inference.py [--model M] [--mias DIR] [--mias-count 6] [--device cpu]

Without --model it uses the bundled default model, else an untrained model with ImageNet
EfficientNet-Lite0 features (agreement then reflects the features, not trained outputs).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from MammoPatchLib.api import default_model_path
from MammoPatchLib.datasets import read_mias
from MammoPatchLib.inference import Predictor
from MammoPatchLib.inference.agreement import mode_agreement, summarise_agreement
from MammoPatchLib.io import read_mammogram
from MammoPatchLib.io.image import ImageGeometry, MammogramImage
from MammoPatchLib.model_file import load_model, make_untrained_model
from MammoPatchLib.synthetic import synthesize_mammogram


def synthetic_image(shape, spacing, seed) -> MammogramImage:
    mammo = synthesize_mammogram(shape, spacing, "L", "MLO", ["round mass", "calcification cluster",
                                                             "architectural distortion"], bits_stored=14, seed=seed)
    return MammogramImage(pixels=mammo.pixels.astype(np.float32), geometry=ImageGeometry(spacing=(spacing, spacing, 1.0)),
                          path=f"synthetic-{shape[0]}x{shape[1]}")


def run(predictor: Predictor, image: MammogramImage):
    start = time.perf_counter()
    result = predictor.predict_image(image)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--mias", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-mias"))
    parser.add_argument("--mias-count", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)

    model_path = args.model or (default_model_path() if default_model_path().is_file() else None)
    if model_path is None:
        model_path = Path(tempfile.mkdtemp()) / "untrained.pt"
        make_untrained_model(model_path)
        print("model: UNTRAINED (ImageNet Lite0 features, random head)")
    else:
        print(f"model: {model_path}")
    model = load_model(model_path)
    exact = Predictor(model, mode="exact", device=args.device)
    fast = Predictor(model, mode="fast", device=args.device)
    print(f"device: {exact.device}, torch threads: {torch.get_num_threads()}, model spacing: {model.info.spacing_mm} mm")

    figures = {"timings": [], "agreement": {}}
    groups = {"synthetic": [synthetic_image((1024, 1024), 0.1, 1), synthetic_image((3000, 2400), 0.085, 2)]}
    mias = Path(args.mias)
    if (mias / "annotations.csv").exists():
        records = [r for r in read_mias(mias) if r.findings][: args.mias_count]
        groups["mini-MIAS"] = [read_mammogram(r.path, spacing_mm=0.2) for r in records]
    for group, images in groups.items():
        rows = []
        for image in images:
            res_exact, t_exact = run(exact, image)
            res_fast, t_fast = run(fast, image)
            rows.append(mode_agreement(res_exact, res_fast))
            figures["timings"].append({"image": image.path, "shape": list(image.shape), "exact_s": t_exact,
                                       "fast_s": t_fast, "speedup": t_exact / t_fast})
            print(f"{Path(image.path).name:28s} {image.shape[0]}x{image.shape[1]}: exact {t_exact:7.2f} s, "
                  f"fast {t_fast:6.2f} s, fast/exact speed-up {t_exact / t_fast:5.1f}x")
        summary = summarise_agreement(rows)
        figures["agreement"][group] = summary
        print(f"\nagreement fast vs exact on {group} ({len(images)} images):")
        print(f"{'class':28s} {'mean r':>7s} {'min r':>7s} {'max|d|':>7s} {'same findings':>14s}")
        for name, s in summary.items():
            print(f"{name:28s} {s['mean_r']:7.3f} {s['min_r']:7.3f} {s['max_abs_diff']:7.3f} "
                  f"{s['same_findings_fraction']:14.2f}")
        print()
    worst = min(s["min_r"] for g in figures["agreement"].values() for s in g.values())
    print(f"fast mode as default needs min r >= 0.95 on every class: worst min r = {worst:.3f} -> "
          f"{'fast can be default' if worst >= 0.95 else 'exact stays default'}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
