"""What one image's default outputs cost, before and after the heatmaps moved to the network's
cells, against the network's own time, in one run:

    python -m benchmarks.bench_outputs [--device cpu] [--threads 2] [--repeats 3] [--model M] [--out F]

For a 1024 x 1024 film (0.2 mm, mini-MIAS's pixel size) and a 3000 x 2400 digital image
(0.085 mm), both synthetic, with the bundled model in fast mode:

- network: the inferer's seconds per image (``windows_s``, median of the repeats);
- before: the outputs as written before (``full_resolution_heatmaps=True``: every reported
  class's heatmap at every source pixel, float32, compressed) - bytes on disk and seconds;
- after: the default outputs (heatmaps on the network's cells) - bytes and seconds;
- agreement: each written cell-grid heatmap read back from its file and resampled onto the
  source pixels as a viewer does (:func:`~MammoPatchLib.inference.resample.grid_to_source`)
  against the full-resolution heatmap: the largest absolute difference.

Targets: writing the default outputs takes at most the network's time; a 1024 x 1024 film
leaves at most 1 MB; the agreement is within 0.01. Everything printed is also written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from MammoPatchLib.api import default_model_path
from MammoPatchLib.inference import Predictor
from MammoPatchLib.inference.resample import grid_to_source
from MammoPatchLib.io import read_mammogram
from MammoPatchLib.model_file import load_model
from MammoPatchLib.results.files import FINDINGS_FILE, OutputOptions, write_result
from MammoPatchLib.vocabulary import heatmap_stem

from .run import synthetic_image

#: The images measured: (name, shape, pixel spacing in mm).
CASES = (("film 1024 x 1024", (1024, 1024), 0.2), ("digital 3000 x 2400", (3000, 2400), 0.085))

#: The targets the run is checked against.
MAX_FILM_BYTES = 1_000_000
MAX_DIFFERENCE = 0.01


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def timed_write(result, options: OutputOptions, root: Path, repeats: int) -> Dict[str, Any]:
    """Median seconds of writing ``result``'s outputs ``repeats`` times (each into a fresh
    folder, the last one kept for its bytes)."""
    times = []
    for k in range(repeats):
        folder = root / f"run{k}"
        start = time.perf_counter()
        write_result(result, folder, options=options)
        times.append(time.perf_counter() - start)
        if k < repeats - 1:
            shutil.rmtree(folder)
    return {"seconds": float(np.median(times)), "bytes": folder_bytes(folder), "folder": folder}


def agreement(result, folder: Path) -> float:
    """Largest absolute difference between the written cell-grid heatmaps, resampled onto the
    source pixels from their files, and the full-resolution heatmaps."""
    document = json.loads((folder / FINDINGS_FILE).read_text())
    region = document["heatmaps"]["analysed_region_px"]
    worst = 0.0
    for name in document["heatmaps"]["classes"]:
        written = read_mammogram(folder / f"{heatmap_stem(name)}.nrrd", min_side=0)
        back = grid_to_source(written.pixels[None], written.geometry, region, result.image.geometry,
                              result.image.shape)[0]
        full = result.heatmaps_every(1, [result.classes.index(name)])[0]
        worst = max(worst, float(np.abs(back - full).max()))
    return worst


def measure(predictor: Predictor, name: str, shape, spacing: float, repeats: int, root: Path) -> Dict[str, Any]:
    image = synthetic_image(shape, spacing)
    predictor.predict_image(image)  # warm-up
    results = [predictor.predict_image(image) for _ in range(repeats)]
    network = float(np.median([r.timings["windows_s"] for r in results]))
    result = results[-1]
    before = timed_write(result, OutputOptions(full_resolution_heatmaps=True), root / name / "before", repeats)
    after = timed_write(result, OutputOptions(), root / name / "after", repeats)
    return {"image": name, "shape": list(shape), "spacing_mm": spacing, "network_s": network,
            "before": {k: v for k, v in before.items() if k != "folder"},
            "after": {k: v for k, v in after.items() if k != "folder"},
            "max_abs_difference": agreement(result, after["folder"]),
            "bytes_ratio": before["bytes"] / after["bytes"], "seconds_ratio": before["seconds"] / after["seconds"],
            "after_vs_network": after["seconds"] / network}


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description="MammoPatch output size and writing time (see the module docstring)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default: 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--out", default="bench-outputs.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model = load_model(args.model or default_model_path())
    predictor = Predictor(model, device=args.device)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape, spacing in CASES:
            rows.append(measure(predictor, name, shape, spacing, args.repeats, Path(tmp)))
    results = {"date": time.strftime("%Y-%m-%d"), "device": args.device,
               "cpu": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
               "threads": args.threads, "torch": torch.__version__,
               "model": {"path": model.path, "sha256": model.sha256}, "rows": rows}
    print(f"# outputs per image, {args.device}, {args.threads} threads, torch {torch.__version__}")
    print("| image | network s | before MB | before s | after MB | after s | bytes before/after | "
          "after s / network s | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['image']} | {row['network_s']:.3f} | {row['before']['bytes'] / 1e6:.2f} | "
              f"{row['before']['seconds']:.3f} | {row['after']['bytes'] / 1e6:.3f} | {row['after']['seconds']:.3f} | "
              f"{row['bytes_ratio']:.0f}x | {row['after_vs_network']:.2f} | {row['max_abs_difference']:.2g} |")
    film = rows[0]
    checks = {"film at most 1 MB": film["after"]["bytes"] <= MAX_FILM_BYTES,
              "writing at most the network's time": all(r["after_vs_network"] <= 1.0 for r in rows),
              f"agreement within {MAX_DIFFERENCE}": all(r["max_abs_difference"] <= MAX_DIFFERENCE for r in rows)}
    results["targets_met"] = checks
    for check, met in checks.items():
        print(f"- {check}: {'met' if met else 'NOT met'}")
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
