"""Running a batch: the list of jobs (files, folders, glob patterns and manifests), their
deterministic sharding over torchrun ranks, decoding and preprocessing overlapped with
inference, crash-safe outputs (:mod:`.batch`) and one merged summary.

- A manifest is a CSV with a ``path`` column (relative paths are relative to the manifest) and
  an optional ``spacing_mm`` column for files that store no spacing.
- Launched by torchrun (WORLD_SIZE > 1), rank r takes jobs r, r + W, r + 2W, ... of the sorted
  job list; the process group (gloo on CPU, NCCL on GPUs) is used only for the start barrier
  and the final gather of every rank's rows into ``summary.csv``. Each rank also keeps
  ``results-rank<r>.csv`` up to date, so a rank that dies loses only its image in flight, and a
  re-run with ``--resume`` finishes the batch (failed images are retried: they have no output).
- Per rank, three stages overlap: ``workers`` threads read and preprocess the next images (a
  bounded queue of ``2 x workers``), the main thread runs the network (it owns the device), and
  one writer thread computes the full-size heatmaps and writes and publishes the outputs of the
  previous image (at most ``MAX_PENDING_WRITES`` waiting). OpenCV, NumPy, PyTorch and
  SimpleITK release the GIL in the heavy parts. ``workers=0`` runs the three stages in turn on
  the main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import timedelta
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .batch import OutputFolder, output_stem, unique_names
from .errors import Cancelled, MammoPatchError
from .io import read_mammogram
from .outputs import SUMMARY_COLUMNS, write_summary
from .vocabulary import PathLike

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One input of a batch: its position in the batch, its file, output folder name, spacing."""

    index: int
    path: Path
    name: str
    spacing_mm: Optional[float] = None


def read_manifest(path: PathLike) -> List[Tuple[Path, Optional[float]]]:
    """(path, spacing or None) of every row of a manifest CSV (see module docstring)."""
    from .datasets.records import read_csv_rows
    from .io.validate import check_spacing_value

    manifest = Path(path)
    rows = read_csv_rows(manifest, ["path"])
    out = []
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise MammoPatchError(f"line {line}: empty path", manifest)
        file = Path(row["path"])
        file = file if file.is_absolute() else manifest.parent / file
        spacing = None
        if row.get("spacing_mm"):
            try:
                spacing = check_spacing_value(float(row["spacing_mm"]), "spacing_mm")
            except ValueError as exc:
                raise MammoPatchError(f"line {line}: {exc}", manifest) from None
        out.append((file, spacing))
    return out


def is_manifest(path: PathLike) -> bool:
    return str(path).lower().endswith(".csv") and Path(path).is_file()


def plan_jobs(inputs, spacing_mm: Optional[float] = None) -> List[Job]:
    """The batch's jobs, in a deterministic order (inputs in the order given, folders sorted)."""
    from .io.discovery import collect_images

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    entries: List[Tuple[Path, Optional[float]]] = []
    for item in inputs:
        if is_manifest(item):
            entries.extend(read_manifest(item))
        else:
            entries.extend((p, None) for p in collect_images([item]))
    seen, unique = set(), []
    for path, spacing in entries:
        if path not in seen:
            seen.add(path)
            unique.append((path, spacing))
    names = unique_names(output_stem(p) for p, _ in unique)
    return [Job(i, p, n, s if s is not None else spacing_mm) for i, ((p, s), n) in enumerate(zip(unique, names))]


@dataclass
class RankContext:
    """Where this process stands in a torchrun launch (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the process group was created here, and is destroyed by close()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def shard(jobs: Sequence[Job], rank: int, world_size: int) -> List[Job]:
    """Rank ``rank``'s share of the batch: jobs rank, rank + W, rank + 2W, ... Interleaving
    (rather than blocks) keeps the ranks' loads even when neighbouring inputs differ in size,
    e.g. a VinDr study's four views."""
    return [job for job in jobs if job.index % world_size == rank]


def init_ranks(device: str = "auto") -> RankContext:
    """Join torchrun's process group when launched by it; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return RankContext()
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    owns = not dist.is_initialized()
    if owns:
        # The final gather waits for the slowest rank; a rank that dies ends the launch anyway
        # (torchrun stops the others), so the default 10-30 min collective timeout would only
        # cut a long but healthy run short.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(hours=48))
    if use_cuda:
        torch.cuda.set_device(local)
    return RankContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, owns_group=owns)


#: Images whose outputs may wait for the writer thread while the network runs the next one
#: (each holds its result, ~100 MB for a 3000 x 2400 image).
MAX_PENDING_WRITES = 1

#: A rank's results file: the summary's columns and the input's place in the batch.
RESULT_COLUMNS = ["index", *SUMMARY_COLUMNS]


def run_batch(jobs: Sequence[Job], out_dir: PathLike, predictor, predict_one: Callable[..., Dict[str, object]],
              should_skip: Callable[[Job], bool] = lambda job: False,
              ctx: Optional[RankContext] = None, workers: int = 2, progress: bool = False,
              on_result: Optional[Callable[[Dict[str, object]], None]] = None,
              on_progress: Optional[Callable[[float, str], None]] = None,
              on_image: Optional[Callable[[int, int, Path], None]] = None) -> List[Dict[str, object]]:
    """Run this rank's share of ``jobs``; returns every rank's rows (merged on every rank) and
    writes ``summary.csv`` (rank 0). ``predict_one(job, loaded, image_progress)`` does one
    image's network work and returns its summary row, or a callable that writes its outputs and
    returns the row (run on the writer thread); ``loaded`` is what the prefetching threads made:
    (image, prepared), the exception, or None for a job ``should_skip`` says needs no reading
    (done earlier)."""
    import time

    ctx = ctx or RankContext()
    out = OutputFolder(out_dir)
    with contextlib.ExitStack() as held:
        if ctx.rank == 0:
            held.enter_context(out)  # lock, clean stale partial folders; released however the run ends
        else:
            out.check_writable()
        _barrier(ctx)
        mine = shard(jobs, ctx.rank, ctx.world_size)
        rows: List[Dict[str, object]] = []
        rank_file = out.root / f"results-rank{ctx.rank}.csv" if ctx.distributed else None

        def load(job: Job):
            try:
                image = read_mammogram(job.path, spacing_mm=job.spacing_mm)
                predictor.check(image)
                return image, predictor.preprocess(image) if predictor.scales == (1.0,) else None
            except Exception as exc:  # noqa: BLE001 - reported by predict_one in order
                return exc

        def record(row: Dict[str, object], job: Job, start: float) -> None:
            row.setdefault("seconds", f"{time.perf_counter() - start:.2f}")
            row.update(index=job.index, rank=ctx.rank)
            rows.append(row)
            if rank_file is not None:
                write_summary(rows, rank_file, RESULT_COLUMNS)
            else:
                write_summary(rows, out.root / "summary.csv")
            if on_result is not None:
                on_result(row)
            if bar is not None:
                bar.update(1)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc=f"images (rank {ctx.rank})" if ctx.distributed else "images", unit="img")
        pending: Dict[int, Future] = {}
        writing: Deque[Tuple[Job, Future, float]] = deque()
        todo = list(mine)
        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as writer:
                def refill(position: int) -> None:
                    if workers == 0:  # read on this thread, in predict_one
                        return
                    for job in todo[position:position + 2 * workers]:
                        if job.index not in pending and not should_skip(job):
                            pending[job.index] = pool.submit(load, job)

                for position, job in enumerate(todo):
                    refill(position)
                    if on_image is not None:
                        on_image(position, len(todo), job.path)
                    image_progress = None
                    if on_progress is not None:
                        def image_progress(fraction, text, position=position, name=job.name):
                            on_progress((position + fraction) / max(len(todo), 1), f"{name}: {text}")
                    future = pending.pop(job.index, None)
                    loaded = future.result() if future is not None else None
                    start = time.perf_counter()
                    outcome = predict_one(job, loaded, image_progress)
                    done: Future = Future()
                    if callable(outcome) and workers == 0:
                        done.set_result(outcome())
                    elif callable(outcome):  # outputs to write: on the writer thread, while the next image runs
                        done = writer.submit(outcome)
                    else:
                        done.set_result(outcome)
                    writing.append((job, done, start))
                    while len(writing) > MAX_PENDING_WRITES or (writing and writing[0][1].done()):
                        first, finished, began = writing.popleft()
                        record(finished.result(), first, began)
                while writing:
                    first, finished, began = writing.popleft()
                    record(finished.result(), first, began)
        except Cancelled:
            for future in pending.values():
                future.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
        merged = _gather(rows, ctx)
        if ctx.rank == 0:
            write_summary(merged, out.root / "summary.csv")
        return merged


def _barrier(ctx: RankContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def _gather(rows: List[Dict[str, Any]], ctx: RankContext) -> List[Dict[str, Any]]:
    """Every rank's rows, in job order (torch.distributed.all_gather_object)."""
    if not ctx.distributed:
        return rows
    import torch.distributed as dist

    everything: List[Optional[List[Dict[str, Any]]]] = [None] * ctx.world_size
    dist.all_gather_object(everything, rows)
    merged = [row for part in everything for row in (part or [])]
    return sorted(merged, key=lambda r: int(r["index"]))
