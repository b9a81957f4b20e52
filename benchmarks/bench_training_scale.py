"""Training at scale: disk, peak memory and images per second of each training path
(:data:`~MammoPatchLib.training.recipe.TRAINS`) on VinDr-layout trees of N digital-size
images, how each grows with N, and what a 20,000-image VinDr-Mammo training would need.

    python -m benchmarks.bench_training_scale [--sizes 50 100 200] [--paths head stages network]
                                              [--epochs-run 1] [--patches-per-epoch 256]
                                              [--device auto|cpu|cuda] [--target-images 20000]
                                              [--quick] [--work DIR] [--out results.json]
    python -m benchmarks.bench_training_scale --tables-from results.json

One tree of ``max(--sizes)`` images is written once in the VinDr-Mammo v1.0.0 layout (what
``mammopatch synth --vindr`` writes: four views per woman, here 3000 x 2400 at 0.085 mm, 16
bits): a few distinct women are generated and their files hard-linked under new study and
image ids to reach the count. Each size is the tree's first N images (its two CSVs rewritten,
every woman in VinDr's "training" split), so an image has the same path at every size.

For each path a recipe is written beside the tree from the recipe the path ships with
(:data:`PATHS`), with the epochs whose cost grows with the run shortened to ``--epochs-run``
(the stages path's tuned-stage epochs, the network path's epochs, which also draw
``--patches-per-epoch`` patches; the head's own epochs are cheap and run as shipped). For each
size the real command line runs in a fresh process: ``python -m MammoPatchLib.cli train
--config RECIPE --data TREE --out OUT --cache CACHE``. Each size's cache starts as a copy (hard
links) of the cache the previous size left, so only its new images go through the backbone
(or the preprocessing): the caching rate counts those, while disk, memory and training time
are those of the whole N. Measured per run:

- disk: bytes of the cache folder and of the output folder when the command has finished;
- peak RSS: the highest sum of the resident memory of the command and its child processes
  (DataLoader workers; /proc polled every 0.1 s), and the largest single process's
  ``ru_maxrss`` (``os.wait4``);
- caching images/s: new cache files per second, from the first to the last one to appear
  (files are published atomically, one per image);
- training: the seconds from the last cache file to the command's end (the model file and its
  card included: what a user waits for), and N x the epochs run per second of it.

One more run at the largest size, from its full cache and with twice the shortened epochs,
prices one of those epochs: the difference of the two runs' seconds that are not caching (wall
time less the new images at the steady caching rate). Growth with N is then a least-squares
line over the sizes: bytes per image, RSS per 100 images, caching seconds per image, and the
other seconds (start-up, reading the cache, the epochs that are not shortened, the model file). The 20,000-image estimate
reads the lines at ``--target-images`` and adds the shipped recipe's epochs at the probed price
(the network's scaled to the shipped ``patches_per_epoch``). Epochs draw a fixed number of
samples (``negatives_per_epoch`` cells, ``patches_per_epoch`` patches) whatever N, so their
price is taken as independent of N. A CPU measures no GPU hours: the estimate states the
formula and the inputs that a ``--device cuda`` run of this benchmark measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MammoPatchLib.synthetic import VINDR_BREAST_COLUMNS, VINDR_FINDING_COLUMNS, make_vindr_dataset
from MammoPatchLib.training.recipe import TRAINS, Recipe

from .bench_scaleout import SHAPE, SPACING_MM

REPOSITORY = Path(__file__).resolve().parents[1]
RECIPES = REPOSITORY / "Resources" / "Models" / "training"
#: Per path: the shipped recipe it starts from, what changes in it, and the epochs field that
#: the benchmark shortens (and probes) because its cost is what grows with a longer training.
PATHS = {"head": ("cell-3x3-tta-tail10-gate35.json", {"trains": "head", "tail_epochs": 0}, None),
         "stages": ("cell-3x3-tta-tail10-gate35.json", {}, "tail_epochs"),
         "network": ("poster.json", {}, "epochs")}
FINDING_CSV, BREAST_CSV = "finding_annotations.csv", "breast-level_annotations.csv"
#: What the second run of each size (from the complete cache, nothing left to cache) records.
ALONE_KEYS = ("wall_s", "peak_rss_bytes", "max_process_rss_bytes", "cached_images")
VIEWS_PER_WOMAN = 4
QUICK = {"sizes": [4, 8], "shape": (320, 256), "spacing": 0.2, "patches_per_epoch": 32, "head_epochs": 2}
MIB, GIB = 2 ** 20, 2 ** 30
GPU_FORMULA = ("Only the network path runs on a GPU (torchrun DDP over G GPUs); the head and "
               "stages paths cache features and train on the CPU, in one process, on any machine, so their hours are "
               "the CPU hours above (on that machine's cores). Network path: hours = (N x c / G + F + E x p / (G x s)) "
               "/ 3600, with N images, c the preprocessing seconds per image (CPU, each rank its share), F the other "
               "seconds, E the shipped epochs, p the price of one epoch on one GPU (`--device cuda` measures c, F and "
               "p) and s the scaling efficiency of G ranks")


# --- the data ------------------------------------------------------------------------------------

def make_pool(root: Path, count: int, shape: Tuple[int, int], spacing_mm: float, distinct: int) -> List[Dict]:
    """Write ``count`` images in the VinDr layout under ``root`` (``distinct`` generated women,
    hard-linked under new ids to reach the count); returns their rows in order, each
    ``{"image_id", "breast": row, "findings": [rows]}``."""
    source = make_vindr_dataset(root.parent / f"{root.name}-distinct", n_studies=distinct, shape=shape,
                                spacing_mm=spacing_mm, abnormal_fraction=0.5, seed=0)
    breast = _read_rows(source / BREAST_CSV)
    findings = _read_rows(source / FINDING_CSV)
    studies: Dict[str, List[Dict[str, str]]] = {}
    for row in breast:
        studies.setdefault(row["study_id"], []).append(row)
    originals = list(studies.values())
    pool: List[Dict] = []
    for woman in range((count + VIEWS_PER_WOMAN - 1) // VIEWS_PER_WOMAN):
        study_id = f"{woman:032x}"
        for row in originals[woman % len(originals)]:
            if len(pool) == count:
                break
            image_id = f"{woman:08x}{row['image_id'][8:]}"
            renamed = {"study_id": study_id, "image_id": image_id, "split": "training"}
            target = root / "images" / study_id / f"{image_id}.dicom"
            target.parent.mkdir(parents=True, exist_ok=True)
            _link(source / "images" / row["study_id"] / f"{row['image_id']}.dicom", target)
            pool.append({"image_id": image_id, "breast": {**row, **renamed},
                         "findings": [{**f, **renamed} for f in findings if f["image_id"] == row["image_id"]]})
    return pool


def select_images(root: Path, pool: Sequence[Dict], count: int) -> None:
    """Make ``root``'s CSVs list the pool's first ``count`` images (the rest stay on disk, unread)."""
    chosen = pool[:count]
    _write_rows(root / BREAST_CSV, VINDR_BREAST_COLUMNS, [p["breast"] for p in chosen])
    _write_rows(root / FINDING_CSV, VINDR_FINDING_COLUMNS, [f for p in chosen for f in p["findings"]])


def _link(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system: a copy
        shutil.copyfile(source, target)


def _read_rows(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, columns: Sequence[str], rows: Sequence[Dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --- the recipes ---------------------------------------------------------------------------------

def shipped_recipe(path: str) -> Recipe:
    name, changes, _ = PATHS[path]
    return Recipe.load(RECIPES / name, changes)


def bench_recipe(path: str, file: Path, epochs: int, patches_per_epoch: int, device: Optional[str],
                 head_epochs: Optional[int] = None) -> Recipe:
    """``path``'s shipped recipe with its shortened epochs field at ``epochs`` (the network's
    epochs drawing ``patches_per_epoch`` patches, on ``device``; ``head_epochs``: the cell
    head's epochs too, for --quick), written to ``file``."""
    values = shipped_recipe(path).to_dict()
    knob = PATHS[path][2]
    values["name"] = file.stem
    if head_epochs and path != "network":
        values["epochs"] = head_epochs
    if knob:
        values[knob] = epochs
    if path == "network":
        values["patches_per_epoch"] = patches_per_epoch
        if device:
            values["device"] = device
    recipe = Recipe.from_dict(values)  # validated as the command will read it
    file.write_text(json.dumps(recipe.to_dict(), indent=1))
    return recipe


def epochs_run(recipe: Recipe) -> int:
    """Epochs over the images a recipe trains for (the head's, then the tuned stages')."""
    return recipe.epochs + recipe.tail_epochs


# --- one run -------------------------------------------------------------------------------------

def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc; 0 elsewhere)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


class Watcher(threading.Thread):
    """Polls a running command: the peak of its process tree's RSS, and when each new file
    (not a hidden temporary one) first appears under the cache folder."""

    def __init__(self, pid: int, cache: Path, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.cache, self.interval = pid, cache, interval
        self.known = set(cache.rglob("*"))
        self.stamps: List[float] = []
        self.peak_rss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
            now = time.perf_counter()
            for entry in self.cache.rglob("*"):
                if entry not in self.known and not entry.name.startswith(".") and entry.is_file():
                    self.known.add(entry)
                    self.stamps.append(now)
            time.sleep(self.interval)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def train_arguments(recipe: Path, data: Path, out: Path, cache: Path) -> List[str]:
    """The ``mammopatch`` arguments of one measured run."""
    return ["train", "--config", str(recipe), "--data", str(data), "--out", str(out), "--cache", str(cache),
            "--no-progress"]


def run_train(recipe: Path, data: Path, out: Path, cache: Path, log: Path) -> Dict[str, Any]:
    """One ``mammopatch train`` in a fresh process, measured (see the module docstring)."""
    command = [sys.executable, "-m", "MammoPatchLib.cli", *train_arguments(recipe, data, out, cache)]
    cache.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPOSITORY)
        watcher = Watcher(process.pid, cache)
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        end = time.perf_counter()
        process.returncode = os.waitstatus_to_exitcode(status)
    watcher.stop.set()
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{log.read_text()[-4000:]}")
    stamps = watcher.stamps
    cached_until = stamps[-1] if stamps else start
    if len(stamps) >= 2:
        caching_rate = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)
    else:
        caching_rate = len(stamps) / max(cached_until - start, 1e-9)
    return {"wall_s": end - start, "cached_images": len(stamps), "caching_s": cached_until - start,
            "caching_images_per_s": caching_rate, "training_s": end - cached_until,
            "cache_bytes": folder_bytes(cache), "out_bytes": folder_bytes(out),
            "peak_rss_bytes": watcher.peak_rss, "max_process_rss_bytes": usage.ru_maxrss * 1024}


def seed_cache(previous: Optional[Path], cache: Path) -> None:
    """Start ``cache`` as a hard-linked copy of the previous size's cache (or empty)."""
    if previous is not None and previous.is_dir():
        shutil.copytree(previous, cache, copy_function=_link)


# --- growth and the estimate ---------------------------------------------------------------------

def line(xs: Sequence[float], ys: Sequence[float]) -> Tuple[float, float]:
    """(slope, intercept) of the least-squares line; with one point, through the origin."""
    if len(xs) < 2:
        return (ys[0] / xs[0] if xs and xs[0] else 0.0), 0.0
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def at(fitted: Tuple[float, float], target: int, measured: Sequence[float]) -> float:
    """The line's value at ``target``, never below what was measured at fewer images (a flat
    quantity's line can tilt down by noise)."""
    return max(fitted[0] * target + fitted[1], max(measured))


def not_caching_s(row: Dict[str, Any]) -> float:
    """A run's seconds that are not caching: start-up, reading the cache, training and writing
    the model. Measured by the run from the complete cache where there is one (``alone``);
    otherwise (a probe, or results from before that run existed) the run's seconds less its new
    images at the steady caching rate."""
    if "alone" in row:
        return row["alone"]["wall_s"]
    return row["wall_s"] - (row["cached_images"] / row["caching_images_per_s"] if row["cached_images"] else 0.0)


def training_memory(row: Dict[str, Any], key: str) -> int:
    """``key`` (peak_rss_bytes or max_process_rss_bytes) of the training alone: the run from
    the complete cache, whose memory does not include caching's (the run that caches holds the
    backbone and its buffers too); the caching run's where none was made."""
    return row["alone"][key] if "alone" in row else row[key]


def growth(rows: Sequence[Dict[str, Any]], probe: Optional[Dict[str, Any]], path: str, target: int) -> Dict[str, Any]:
    """One path's growth with N (its rows, one per size), the price of one shortened epoch
    (``probe``: the largest size again with twice those epochs), and the reading at ``target``
    images with the shipped recipe's epochs."""
    n = [r["images"] for r in rows]
    disk = line(n, [r["cache_bytes"] + r["out_bytes"] for r in rows])
    peaks = [training_memory(r, "peak_rss_bytes") for r in rows]
    largests = [training_memory(r, "max_process_rss_bytes") for r in rows]
    rss, largest = line(n, peaks), line(n, largests)
    cached = sum(r["cached_images"] for r in rows)
    caching_s_per_image = sum(r["cached_images"] / r["caching_images_per_s"] for r in rows if r["cached_images"]) \
        / max(cached, 1)
    knob, shipped = PATHS[path][2], shipped_recipe(path)
    shortened, epoch_s, shipped_epochs, scale = 0, 0.0, 0, 1.0
    if knob and probe is not None:
        shortened, shipped_epochs = rows[-1]["shortened_epochs"], getattr(shipped, knob)
        epoch_s = max(not_caching_s(probe) - not_caching_s(rows[-1]), 0.0) / shortened
        if path == "network":
            scale = shipped.patches_per_epoch / rows[-1]["patches_per_epoch"]
    other = line(n, [not_caching_s(r) - shortened * epoch_s for r in rows])
    seconds = target * caching_s_per_image + max(other[0] * target + other[1], 0.0) \
        + shipped_epochs * epoch_s * scale
    priced = {"head": f"{shipped.epochs} head epochs, run as shipped",
              "stages": f"{shipped.epochs} head epochs run as shipped + {shipped.tail_epochs} tail epochs priced",
              "network": f"{shipped.epochs} epochs of {shipped.patches_per_epoch} patches priced"}[path]
    return {"disk_bytes_per_image": disk[0], "rss_bytes_per_100_images": 100 * rss[0],
            "largest_process_bytes_per_100_images": 100 * largest[0],
            "caching_s_per_image": caching_s_per_image, "other_s_per_image": other[0],
            "other_fixed_s": other[1], "shortened_epochs_field": knob, "epoch_s": epoch_s,
            "epoch_scale_to_shipped": scale,
            "estimate": {"images": target, "shipped_epochs": shipped_epochs, "epochs": priced,
                         "disk_bytes": at(disk, target, [r["cache_bytes"] + r["out_bytes"] for r in rows]),
                         "peak_rss_bytes": at(rss, target, peaks),
                         "largest_process_bytes": at(largest, target, largests),
                         "hours_here": seconds / 3600}}


# --- report --------------------------------------------------------------------------------------

def markdown(report: Dict[str, Any]) -> str:
    lines = [f"{report['device']}, torch {report['torch']}; images {report['shape'][0]} x {report['shape'][1]} at "
             f"{report['spacing_mm']} mm; shortened epochs run: {report['epochs_run']} (stages: tail_epochs, "
             f"network: epochs of {report['patches_per_epoch']} patches), probe: twice that", "",
             "Each size runs twice: the run that fills the cache (its new images), then the same command "
             "from the complete cache (\"alone\": training and the model file only, nothing cached).", "",
             "| path | images | cache MiB | out MiB | peak RSS MiB | largest process MiB | images cached | "
             "caching images/s | wall s | alone: peak RSS MiB | alone: largest process MiB | alone: s | "
             "alone: image-epochs/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        alone = r.get("alone")
        tail = (f"{alone['peak_rss_bytes'] / MIB:.0f} | {alone['max_process_rss_bytes'] / MIB:.0f} | "
                f"{alone['wall_s']:.1f} | {r['images'] * r['epochs'] / max(alone['wall_s'], 1e-9):.2f}"
                if alone else "- | - | - | -")
        lines.append(f"| {r['path']} | {r['images']} | {r['cache_bytes'] / MIB:.1f} | {r['out_bytes'] / MIB:.1f} | "
                     f"{r['peak_rss_bytes'] / MIB:.0f} | {r['max_process_rss_bytes'] / MIB:.0f} | "
                     f"{r['cached_images']} | {r['caching_images_per_s']:.2f} | {r['wall_s']:.1f} | {tail} |")
    lines += ["", "Growth with N (least-squares line over the sizes; memory and other seconds from the runs alone) "
              "and the price of one shortened epoch:", "",
              "| path | disk KiB per image | RSS MiB per 100 images | largest process MiB per 100 images | "
              "caching s per image | "
              "other s per image | other s fixed | shortened epoch s |", "|---|---|---|---|---|---|---|---|"]
    for path, g in report["growth"].items():
        lines.append(f"| {path} | {g['disk_bytes_per_image'] / 1024:.0f} | {g['rss_bytes_per_100_images'] / MIB:.0f} "
                     f"| {g['largest_process_bytes_per_100_images'] / MIB:.0f} | {g['caching_s_per_image']:.2f} | {g['other_s_per_image']:.3f} | "
                     f"{g['other_fixed_s']:.1f} | {g['epoch_s']:.1f} |")
    target = report["target_images"]
    lines += ["", f"{target:,} images (VinDr-Mammo), read off the lines, with the shipped recipe's epochs:", "",
              "| path | epochs | disk GiB | peak RSS GiB | largest process GiB | hours on this machine, one process |",
              "|---|---|---|---|---|---|"]
    for path, g in report["growth"].items():
        e = g["estimate"]
        lines.append(f"| {path} | {e['epochs']} | {e['disk_bytes'] / GIB:.1f} | "
                     f"{e['peak_rss_bytes'] / GIB:.1f} | {e['largest_process_bytes'] / GIB:.1f} | {e['hours_here']:.1f} |")
    lines += ["", ("No GPU was measured. " if report["device"].startswith("CPU") else "") + GPU_FORMULA + "."]
    return "\n".join(lines)


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200], help="images per tree")
    parser.add_argument("--paths", nargs="+", choices=TRAINS, default=list(TRAINS), help="training paths")
    parser.add_argument("--epochs-run", type=int, default=1,
                        help="the shortened epochs (stages: tail_epochs; network: epochs); the probe runs twice that")
    parser.add_argument("--patches-per-epoch", type=int, default=256, help="patches of a network epoch here")
    parser.add_argument("--distinct", type=int, default=4, help="women generated (the rest are hard links)")
    parser.add_argument("--device", default=None, help="the network recipe's device (default: the shipped one's)")
    parser.add_argument("--target-images", type=int, default=20000, help="images of the estimate (VinDr-Mammo)")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {QUICK['sizes']}, {QUICK['shape'][0]} x {QUICK['shape'][1]} images, one woman, "
                             f"{QUICK['head_epochs']} head epochs, {QUICK['patches_per_epoch']} patches per epoch")
    parser.add_argument("--work", default=None, help="keep the trees, caches, outputs and logs here")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--tables-from", default=None, metavar="JSON",
                        help="measure nothing: the tables (growth and estimate recomputed) of an earlier run's --out")
    args = parser.parse_args(argv)
    if args.tables_from:
        earlier = json.loads(Path(args.tables_from).read_text())
        settings = {k: v for k, v in earlier.items() if k not in ("results", "probes", "growth")}
        report = summarise(settings, earlier["results"], earlier["probes"], args.out)
        print(markdown(report))
        return report
    if min(args.sizes + [args.epochs_run, args.patches_per_epoch, args.distinct, args.target_images]) < 1:
        parser.error("--sizes, --epochs-run, --patches-per-epoch, --distinct and --target-images must be >= 1")
    shape, spacing = SHAPE, SPACING_MM
    head_epochs = None
    if args.quick:
        args.sizes, shape, spacing, args.distinct = QUICK["sizes"], QUICK["shape"], QUICK["spacing"], 1
        args.patches_per_epoch, head_epochs = QUICK["patches_per_epoch"], QUICK["head_epochs"]
    sizes = sorted(set(args.sizes))

    import torch

    cores = os.cpu_count() or 1
    device = torch.cuda.get_device_name(0) if (args.device or "").startswith("cuda") else f"CPU, {cores} cores"
    results: List[Dict[str, Any]] = []
    probes: Dict[str, Dict[str, Any]] = {}
    settings = {"device": device, "torch": torch.__version__, "platform": platform.platform(),
                "shape": list(shape), "spacing_mm": spacing, "sizes": sizes, "target_images": args.target_images,
                "epochs_run": args.epochs_run, "patches_per_epoch": args.patches_per_epoch, "gpu_hours": GPU_FORMULA}
    with tempfile.TemporaryDirectory(prefix="mammopatch-training-scale-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "vindr"
        started = time.perf_counter()
        pool = make_pool(data, sizes[-1], shape, spacing, args.distinct)
        print(f"{len(pool)} images written in {time.perf_counter() - started:.0f} s", flush=True)
        for path in args.paths:
            file = work / f"bench-{path}.json"
            recipe = bench_recipe(path, file, args.epochs_run, args.patches_per_epoch, args.device, head_epochs)
            previous: Optional[Path] = None
            for n in sizes:
                select_images(data, pool, n)
                cache = work / f"cache-{path}-{n}"
                seed_cache(previous, cache)
                row = run_train(file, data, work / f"out-{path}-{n}", cache, work / f"log-{path}-{n}.txt")
                alone = run_train(file, data, work / f"out-{path}-{n}-alone", cache,
                                  work / f"log-{path}-{n}-alone.txt")
                row["alone"] = {key: alone[key] for key in ALONE_KEYS}
                row.update(path=path, images=n, epochs=epochs_run(recipe), shortened_epochs=args.epochs_run,
                           patches_per_epoch=recipe.patches_per_epoch)
                results.append(row)
                previous = cache
                print(f"{path}, {n} images: {row['wall_s']:.1f} s", flush=True)
                report = summarise(settings, results, probes, args.out)
            if PATHS[path][2]:  # the probe: the largest size again, twice the shortened epochs
                probe_file = work / f"bench-{path}-probe.json"
                bench_recipe(path, probe_file, 2 * args.epochs_run, args.patches_per_epoch, args.device, head_epochs)
                cache = work / f"cache-{path}-probe"
                seed_cache(previous, cache)
                probes[path] = run_train(probe_file, data, work / f"out-{path}-probe", cache,
                                         work / f"log-{path}-probe.txt")
                print(f"{path}, {sizes[-1]} images, {2 * args.epochs_run} epochs: {probes[path]['wall_s']:.1f} s",
                      flush=True)
                report = summarise(settings, results, probes, args.out)
    print("\n" + markdown(report))
    return report


def summarise(settings: Dict[str, Any], results: List[Dict[str, Any]], probes: Dict[str, Dict[str, Any]],
              out: Optional[str]) -> Dict[str, Any]:
    """The report so far (written to ``out`` after every run, so a stopped benchmark keeps what
    it measured)."""
    paths = list(dict.fromkeys(r["path"] for r in results))
    report = {**settings, "results": results, "probes": probes,
              "growth": {path: growth([r for r in results if r["path"] == path], probes.get(path), path,
                                      settings["target_images"]) for path in paths}}
    if out:
        Path(out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
