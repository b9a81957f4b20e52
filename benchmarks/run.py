"""MammoPatch inference benchmark: stock MONAI vs exact vs fast, in one run, on one device.

    python -m benchmarks.run [--device cpu|cuda] [--quick] [--model M] [--mias DIR] [--out results.json]
                             [--parts windows,end-to-end,agreement]

Measured, all in the same process:

1. Windows at full resolution (a 3 x 3000 x 2400 image = 5,916 windows of 256 px at stride 32;
   on the CPU, and with --quick, a smaller image): the baseline is MONAI's stock
   ``SlidingWindowInferer`` whose predictor paints each window's probabilities over the whole
   window (stitching on the compute device), with the default batch (16) and a tuned one; then
   MammoPatch's exact mode (``ExactInferer``) at both batches and fast mode (``DenseInferer``).
   Same network, same precision (bf16 autocast on CUDA). Windows/s, seconds, ratios against
   the stock baseline, peak memory.
2. End to end: ``Predictor.predict_image`` on a 3000 x 2400 mammogram at 0.085 mm (resampled
   to the model's spacing), exact and fast, with per-stage times and peak memory; for a
   cell-head model also the baseline "exact, windows without context" (:class:`WindowsWithoutContext`).
3. Agreement of fast and exact heatmaps on real images (mini-MIAS, when --mias is given or
   found beside the repository): per-class Pearson r over the breast, and whether the top
   findings match; for a cell-head model also of the baseline against fast.

Everything printed is also written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch

from MammoPatchLib.api import default_model_path
from MammoPatchLib.inference import DEFAULT_BATCH, DenseInferer, ExactInferer, Predictor, resolve_device
from MammoPatchLib.inference.agreement import mode_agreement, summarise_agreement, top_findings_match
from MammoPatchLib.inference.inferers import autocast_for, calibrated, is_per_cell
from MammoPatchLib.io.image import ImageGeometry, MammogramImage
from MammoPatchLib.model_file import load_model
from MammoPatchLib.synthetic import synthesize_mammogram


def synthetic_image(shape, spacing: float, seed: int = 0) -> MammogramImage:
    mammo = synthesize_mammogram(shape, spacing, "L", "MLO", ["round mass", "calcification cluster",
                                                             "architectural distortion"], bits_stored=14, seed=seed)
    return MammogramImage(pixels=mammo.pixels.astype(np.float32),
                          geometry=ImageGeometry(spacing=(spacing, spacing, 1.0)), path=f"synthetic {shape}")


class StockMonaiPredictor(torch.nn.Module):
    """What a MONAI user writes: each window's class probabilities painted over the window."""

    def __init__(self, network: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.network, self.device = network, device

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        with autocast_for(self.device, True):
            probs = torch.sigmoid(self.network(windows).float().flatten(1))
        return probs[:, :, None, None].expand(-1, -1, *windows.shape[-2:]).contiguous()


class WindowsWithoutContext(ExactInferer):
    """Baseline for a cell-head model: exact mode as it was before its windows were seen in
    context. Every 256 px window at a 32 px stride goes through the whole network on its own
    (its trunk sees zero padding where the image goes on), and MONAI stitches each window's
    block of cell probabilities with its Gaussian importance map."""

    @torch.no_grad()
    def __call__(self, inputs, network, callback=None):  # type: ignore[override]
        def blocks(windows: torch.Tensor) -> torch.Tensor:
            with autocast_for(self.device, self.amp):
                return calibrated(network(windows.contiguous(memory_format=torch.channels_last)), self.temperatures)

        return torch.as_tensor(self.sliding(torch.as_tensor(inputs).float().to(self.device), blocks)).float()


#: The name of the :class:`WindowsWithoutContext` rows.
BASELINE = "exact, windows without context (before)"


def inference_modes(model, device: str) -> Dict[str, Predictor]:
    """The Predictors compared: fast, exact and, for a cell-head model, the baseline."""
    modes = {"fast": Predictor(model, mode="fast", device=device),
             "exact": Predictor(model, mode="exact", device=device)}
    if is_per_cell(model.network):
        info, exact = model.info, modes["exact"]
        baseline = WindowsWithoutContext(info.window, info.stride, exact.sw_batch_size, "gaussian", exact.device,
                                         exact.amp, info.inference.temperatures or None)
        modes[BASELINE] = Predictor(model, mode="exact", device=device, inferer=baseline)
    return modes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> Dict[str, float]:
    fn()  # warm-up (cuDNN autotuning, allocator)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"seconds": float(np.median(times)), "min_seconds": float(np.min(times)), "peak_gib": _peak_gib(device)}


def windows_benchmark(network, device: torch.device, shape, tuned_batch: int, repeats: int) -> Dict[str, Any]:
    from monai.inferers import SlidingWindowInferer

    h, w = (256 + 32 * ((s - 256 + 31) // 32) for s in shape)
    image = torch.rand(1, 3, h, w, device=device)
    n_windows = ((h - 256) // 32 + 1) * ((w - 256) // 32 + 1)
    stock_net = network.to(memory_format=torch.contiguous_format)
    rows: Dict[str, Any] = {}

    def stock(batch):
        inferer = SlidingWindowInferer((256, 256), sw_batch_size=batch, overlap=0.875, mode="constant",
                                       sw_device=device, device=device)
        return lambda: inferer(image, StockMonaiPredictor(stock_net, device))

    with torch.no_grad():
        rows["stock MONAI, batch 16"] = timed(stock(16), device, repeats)
        rows[f"stock MONAI, batch {tuned_batch}"] = timed(stock(tuned_batch), device, repeats)
        fast_net = network.to(memory_format=torch.channels_last)
        for batch in (16, tuned_batch):
            exact = ExactInferer(sw_batch_size=batch, device=device)
            rows[f"exact, batch {batch}"] = timed(lambda: exact(image, fast_net), device, repeats)
        if is_per_cell(fast_net):
            baseline = WindowsWithoutContext(sw_batch_size=tuned_batch, device=device)
            rows[f"{BASELINE}, batch {tuned_batch}"] = timed(lambda: baseline(image, fast_net), device, repeats)
        dense = DenseInferer(device=device)
        rows["fast (dense pass)"] = timed(lambda: dense(image, fast_net), device, repeats)
    base = rows[f"stock MONAI, batch {tuned_batch}"]["seconds"]
    for row in rows.values():
        row["windows_per_s"] = n_windows / row["seconds"]
        row["speed_vs_tuned_stock"] = base / row["seconds"]
    return {"image": [3, h, w], "windows": n_windows, "rows": rows}


def end_to_end(model, device: str, repeats: int, shape=(3000, 2400), spacing=0.085) -> Dict[str, Any]:
    image = synthetic_image(shape, spacing)
    out = {"image": list(shape), "spacing_mm": spacing}
    for mode, predictor in inference_modes(model, device).items():
        predictor.predict_image(image)  # warm-up
        stages: List[Dict[str, float]] = []
        totals = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = predictor.predict_image(image)
            totals.append(time.perf_counter() - start)
            stages.append(result.timings)
        out[mode] = {"seconds": float(np.median(totals)),
                     "stages": {k: float(np.median([s[k] for s in stages])) for k in stages[0]},
                     "peak_gib": _peak_gib(resolve_device(device)),
                     "process_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    return out


def agreement(model, device: str, mias: Path, count: int) -> Dict[str, Any]:
    from MammoPatchLib.datasets import read_mias
    from MammoPatchLib.io import read_mammogram

    records = [r for r in read_mias(mias) if r.findings][:count]
    modes = inference_modes(model, device)
    fast = modes.pop("fast")
    rows: Dict[str, List[Any]] = {mode: [] for mode in modes}
    same_top: Dict[str, List[bool]] = {mode: [] for mode in modes}
    for record in records:
        image = read_mammogram(record.path, spacing_mm=0.2)
        b = fast.predict_image(image)
        for mode, predictor in modes.items():
            a = predictor.predict_image(image)
            rows[mode].append(mode_agreement(a, b))
            same_top[mode].append(top_findings_match(a, b))
    out: Dict[str, Any] = {"images": [r.image_id for r in records]}
    for mode in modes:
        summary = summarise_agreement(rows[mode])
        out[mode] = {"per_class": {c: summary[c] for c in fast.selected},
                     "top_findings_match": float(np.mean(same_top[mode])) if records else float("nan")}
    return out


#: The benchmark's parts (see the module docstring), in the order they run.
PARTS = ("windows", "end-to-end", "agreement")


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description="MammoPatch inference benchmark (see the module docstring)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and, on the CPU, a smaller image")
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--mias", default=None, help="mini-MIAS folder for the agreement on real images")
    parser.add_argument("--mias-count", type=int, default=8)
    parser.add_argument("--out", default="benchmark-results.json")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts to run, of {PARTS}")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: unknown part(s) {unknown}; the parts are {list(PARTS)}")

    device = resolve_device(args.device)
    model = load_model(args.model or default_model_path())
    network = model.network.to(device).eval()
    repeats = 2 if args.quick else 5
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    shape = (3000, 2400) if device.type == "cuda" or not args.quick else (768, 768)
    results: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__, "model": {"path": model.path, "backbone": model.info.backbone,
                                              "sha256": model.sha256}}
    tuned = DEFAULT_BATCH.get(device.type, 16)
    print(f"# {results['device']}, torch {results['torch']}, {model.info.backbone}")
    if "windows" in parts:
        results["windows"] = windows_benchmark(network, device, shape, tuned, repeats)
        print(f"## windows at full resolution: {results['windows']['image']}, {results['windows']['windows']} windows")
        print("| method | s | windows/s | vs tuned stock MONAI | peak GiB |\n|---|---|---|---|---|")
        for name, row in results["windows"]["rows"].items():
            print(f"| {name} | {row['seconds']:.3f} | {row['windows_per_s']:.0f} | "
                  f"{row['speed_vs_tuned_stock']:.2f}x | {row['peak_gib']:.2f} |")
    if "end-to-end" in parts:
        end_to_end_part(results, model, str(device), repeats)
    mias = Path(args.mias) if args.mias else Path(__file__).resolve().parents[2] / "shared" / "data" / "mini-mias"
    if "agreement" in parts and (mias / "annotations.csv").is_file():
        agreement_part(results, model, str(device), mias, args.mias_count)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return results


def end_to_end_part(results: Dict[str, Any], model, device: str, repeats: int) -> None:
    results["end_to_end"] = end_to_end(model, device, repeats)
    print("## end to end, 3000 x 2400 at 0.085 mm (resampled to the model's spacing)")
    fast_s = results["end_to_end"]["fast"]["seconds"]
    for mode, row in results["end_to_end"].items():
        if not isinstance(row, dict):
            continue
        stages = ", ".join(f"{k} {v:.3f}" for k, v in row["stages"].items())
        print(f"- {mode}: {row['seconds']:.3f} s, {row['seconds'] / fast_s:.1f}x fast ({stages}); "
              f"peak {row['peak_gib']:.2f} GiB")


def agreement_part(results: Dict[str, Any], model, device: str, mias: Path, count: int) -> None:
    results["agreement"] = agreement(model, device, mias, count)
    for mode, table in results["agreement"].items():
        if mode == "images":
            continue
        print(f"## fast vs {mode} on {len(results['agreement']['images'])} mini-MIAS images")
        for name, row in table["per_class"].items():
            print(f"- {name}: mean r {row['mean_r']:.3f}, min r {row['min_r']:.3f}, "
                  f"max |diff| {row['max_abs_diff']:.3f}")
        print(f"- same top findings: {table['top_findings_match']:.2f}")


if __name__ == "__main__":
    main()
