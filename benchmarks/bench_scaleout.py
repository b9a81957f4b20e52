"""Batch throughput: images/s of ``mammopatch predict`` over a folder of full-field mammograms,
one process against torchrun with 2 and 4 ranks, and reading in turn against prefetching
worker threads, all measured in the same run on the same machine.

    python -m benchmarks.bench_scaleout [--images 24] [--ranks 1 2 4] [--device cpu|cuda]
                                        [--mode fast|exact] [--predict-args "..."] [--out results.json]

Each configuration runs the real command line (``python -m MammoPatchLib.cli predict`` or
``python -m torch.distributed.run --standalone --nproc_per_node N -m MammoPatchLib.cli
predict``) over the same generated DICOMs (3000 x 2400 at 0.085 mm, 16 bits), writing the
default outputs into a fresh folder. On the CPU every configuration gets the same number of
threads in total (cores / ranks per process), so the table shows what sharding and prefetching
add, not what extra threads add. Reported per configuration:

- wall images/s: images / wall-clock time of the whole command (start-up, model loading and
  the final merge included: what a user waits for);
- steady images/s: images finished per second after each rank's first image, up to the last
  one (start-up excluded: what an archive-scale run converges to), and per rank;
- ratios of both against the baseline (1 process, ``--workers 0``) measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

SHAPE, SPACING_MM = (3000, 2400), 0.085


def make_images(folder: Path, count: int, distinct: int = 4) -> None:
    """``count`` DICOM files; ``distinct`` different phantoms, copied to reach the count."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(min(count, distinct)):
        mammo = synthesize_mammogram(SHAPE, SPACING_MM, "L" if k % 2 else "R", "CC" if k % 3 else "MLO",
                                     ["round mass", "calcification cluster"], bits_stored=16, seed=k)
        write_dicom(mammo, folder / f"img{k:04d}.dcm")
    for k in range(distinct, count):
        shutil.copyfile(folder / f"img{k % distinct:04d}.dcm", folder / f"img{k:04d}.dcm")


def watch_finished(out: Path, stop: threading.Event, stamps: List[float]) -> None:
    """Record the time each image's output folder appears (folders are published atomically)."""
    seen: set = set()
    while not stop.is_set():
        if out.is_dir():
            for entry in os.scandir(out):
                if entry.is_dir() and entry.name.startswith("img") and entry.name not in seen:
                    seen.add(entry.name)
                    stamps.append(time.perf_counter())
        time.sleep(0.02)


def run_config(images: Path, out: Path, ranks: int, workers: int, device: str, mode: str,
               cores: int, extra: List[str]) -> Dict[str, float]:
    predict = ["-m", "MammoPatchLib.cli", "predict", str(images), "--out", str(out), "--device", device,
               "--mode", mode, "--workers", str(workers), "--no-progress", *extra]
    if ranks == 1:
        command = [sys.executable, *predict]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   *predict]
    env = dict(os.environ)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, cores // ranks))
    stamps: List[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_finished, args=(out, stop, stamps), daemon=True)
    watcher.start()
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    count = sum(1 for p in out.iterdir() if p.is_dir() and p.name.startswith("img"))
    # R ranks finish their first images together: count the images after the R-th one
    steady = 0.0
    if len(stamps) > ranks and stamps[-1] > stamps[ranks - 1]:
        steady = (len(stamps) - ranks) / (stamps[-1] - stamps[ranks - 1])
    return {"ranks": ranks, "workers": workers, "images": count, "wall_s": wall,
            "wall_images_per_s": count / wall, "steady_images_per_s": steady,
            "steady_images_per_s_per_rank": steady / ranks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--mode", default="fast", choices=["fast", "exact"])
    parser.add_argument("--workers", type=int, default=2, help="prefetching threads per rank (baseline: 0)")
    parser.add_argument("--predict-args", default="",
                        help="more predict options for every configuration, e.g. \"--heatmaps none\"")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    cores = os.cpu_count() or 1
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {cores} cores"
    configs = [(1, 0)] + [(r, args.workers) for r in args.ranks]
    results = []
    with tempfile.TemporaryDirectory(prefix="mammopatch-scaleout-") as tmp:
        images = Path(tmp) / "images"
        make_images(images, args.images)
        for k, (ranks, workers) in enumerate(configs):
            row = run_config(images, Path(tmp) / f"out{k}", ranks, workers, args.device, args.mode, cores,
                             shlex.split(args.predict_args))
            results.append(row)
            print(f"ranks {ranks}, workers {workers}: {row['images']} images in {row['wall_s']:.1f} s", flush=True)
    base = results[0]
    print(f"\n{device_name}, torch {torch.__version__}, {args.mode} mode, {args.images} images of "
          f"{SHAPE[0]} x {SHAPE[1]} at {SPACING_MM} mm, outputs: {args.predict_args or 'default'}\n")
    print("| ranks | workers per rank | wall s | wall images/s | vs baseline | steady images/s | per rank "
          "| vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for row in results:
        print(f"| {row['ranks']} | {row['workers']} | {row['wall_s']:.1f} | {row['wall_images_per_s']:.2f} | "
              f"{row['wall_images_per_s'] / base['wall_images_per_s']:.2f}x | {row['steady_images_per_s']:.2f} | "
              f"{row['steady_images_per_s_per_rank']:.2f} | "
              f"{row['steady_images_per_s'] / max(base['steady_images_per_s'], 1e-9):.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                              "platform": platform.platform(), "mode": args.mode,
                                              "predict_args": args.predict_args,
                                              "images": args.images, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
