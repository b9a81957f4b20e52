"""Running a batch: the stage order, the threads, retries, resuming and the ranks, around the
three stages of one image (:class:`~MammoPatchLib.prediction.stages.ImagePipeline`: load, infer, write).

- Launched by torchrun (WORLD_SIZE > 1), rank r takes whole studies: the r-th, (r + W)-th, ...
  study of the sorted job list, in the order of their first image, each rank working out the
  same deal from the files' headers (:func:`.jobs.shard`), so that the two breasts of a view
  are on one rank and can be read as a pair. The process group (gloo on CPU, NCCL on GPUs;
  :mod:`MammoPatchLib.distributed`) is used only for the start barrier and the final gather of
  every rank's rows into ``summary.csv``. Each rank also keeps ``results-rank<r>.csv`` up to date, so a rank that dies
  loses only its image in flight, and a re-run with ``--resume`` finishes the batch (failed
  images are retried: they have no output).
- Per rank, the three stages overlap: ``workers`` threads load the next images (a bounded
  queue of ``2 x workers``), the main thread infers (it owns the device), and one writer
  thread computes the full-size heatmaps and writes and publishes the outputs of the previous
  image (at most ``MAX_PENDING_WRITES`` waiting). OpenCV, NumPy, PyTorch and SimpleITK release
  the GIL in the heavy parts. ``workers=0`` runs the three stages in turn on the main thread.
- Pairs: when the model carries an operating point for pairs, an image waits (at most
  ``PAIR_PATIENCE`` images) for the other breast of its view (same study, same view, the
  other ImageLaterality), and both are written read against each other (:class:`PairWait`).
  A view that holds more than one image of a side (found from the headers before the run,
  :func:`crowded_views_of`) is read alone, image by image, with a warning, as image_scores.csv reads it.
- Resuming: an image whose output folder exists is not loaded: with ``resume`` it is "done
  earlier" (its row read back from its findings), with ``overwrite`` it is recomputed, with
  neither it fails without touching the folder. An image done earlier is still the other
  breast of a pending one: that one is read against what the earlier image's findings.json
  records (its per-class maxima and image score), while the earlier image stays as written.
- Retries: a stage that fails unexpectedly (not a bad input, not memory) gets one more try;
  a failed inference loads the file again first.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import (AbstractSet, Any, Callable, Deque, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, TypeVar,
                    Union)

from ..distributed import RankContext
from ..errors import Cancelled, MammoPatchError
from ..other_breast import BreastKey, BreastScores, crowded_views, source_breast_key
from ..results.files import breast_scores_of, findings_document, findings_of
from ..vocabulary import Status
from .folder import OutputFolder
from .jobs import Job, job_breasts, shard
from .image_scores import write_image_scores
from .rows import RESULT_COLUMNS, SUMMARY_FILE, Row, write_summary
from .stages import Failure, ImagePipeline, Inferred, Loaded

logger = logging.getLogger(__name__)


#: Images whose outputs may wait for the writer thread while the network runs the next one
#: (each holds its result, ~100 MB for a 3000 x 2400 image).
MAX_PENDING_WRITES = 1

ImageCallback = Callable[[int, int, Path], None]
ProgressCallback = Callable[[float, str], None]


def run_batch(jobs: Sequence[Job], folder: OutputFolder, pipeline: ImagePipeline, *,
              ctx: Optional[RankContext] = None, resume: bool = False, overwrite: bool = False, workers: int = 2,
              progress: bool = False, on_image: Optional[ImageCallback] = None,
              on_result: Optional[Callable[[Row], None]] = None,
              on_progress: Optional[ProgressCallback] = None) -> List[Row]:
    """Run this rank's share of ``jobs`` through ``pipeline`` into ``folder``; returns every
    rank's rows (merged on every rank, in job order) and writes ``summary.csv`` (rank 0).

    Args:
        resume, overwrite: what to do with an image whose output folder exists (see the module
            docstring).
        workers: threads loading the next images while the network runs (0: in turn).
        progress: a tqdm bar over the images.
        on_image: called with (position, count, path) before each image of this rank.
        on_result: called with each image's row as soon as it is done.
        on_progress: called with (fraction of this rank's images, text) while it runs; raising
            :class:`~MammoPatchLib.errors.Cancelled` from it stops the batch.
    """
    ctx = ctx or RankContext()
    folder.earlier_outputs([job.name for job in jobs], resume, overwrite)
    with contextlib.ExitStack() as held:
        if ctx.is_main:
            held.enter_context(folder)  # lock, clean stale partial folders; released however the run ends
        else:
            folder.check_writable()
        ctx.barrier()
        breasts = job_breasts(jobs) if ctx.distributed else None  # one read for the deal and the pairs
        batch = _RankBatch(shard(jobs, ctx.rank, ctx.world_size, breasts), folder, pipeline, ctx, resume, overwrite,
                           breasts)
        rows = batch.run(workers, progress, on_image, on_result, on_progress)
        merged = _gather(rows, ctx)
        if ctx.is_main:
            write_summary(merged, folder.root / SUMMARY_FILE)
            write_image_scores(merged, folder.root)
        return merged


class _RankBatch:
    """One rank's share of a batch: the stage order, the threads, resuming and the retries."""

    def __init__(self, jobs: List[Job], folder: OutputFolder, pipeline: ImagePipeline, ctx: RankContext,
                 resume: bool, overwrite: bool, breasts: Optional[Mapping[Job, Dict[str, Any]]] = None) -> None:
        self.jobs, self.folder, self.pipeline, self.ctx = jobs, folder, pipeline, ctx
        self.resume, self.overwrite = resume, overwrite
        self.rows: List[Row] = []
        self.rank_file = folder.root / f"results-rank{ctx.rank}.csv" if ctx.distributed else None
        self.pairs = PairWait(pipeline, crowded=crowded_views_of(jobs, breasts)
                              if pipeline.predictor.reads_other_breast else frozenset())

    def run(self, workers: int, progress: bool, on_image: Optional[ImageCallback],
            on_result: Optional[Callable[[Row], None]], on_progress: Optional[ProgressCallback]) -> List[Row]:
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.jobs), desc=f"images (rank {self.ctx.rank})" if self.ctx.distributed
                       else "images", unit="img")
        loading: Dict[int, Future] = {}
        writing: Deque[Tuple[Job, Future, float]] = deque()

        def record(job: Job, done: Future, start: float) -> None:
            row = done.result().placed(job.index, self.ctx.rank, time.perf_counter() - start)
            self.rows.append(row)
            if self.rank_file is not None:
                write_summary(self.rows, self.rank_file, RESULT_COLUMNS)
            else:
                write_summary(self.rows, self.folder.root / SUMMARY_FILE)
            if on_result is not None:
                on_result(row)
            if bar is not None:
                bar.update(1)

        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as loaders, \
                    ThreadPoolExecutor(max_workers=1) as writer:
                for position, job in enumerate(self.jobs):
                    if workers:
                        self._load_ahead(loaders, loading, position, workers)
                    if on_image is not None:
                        on_image(position, len(self.jobs), job.path)
                    image_progress = _image_progress(on_progress, position, len(self.jobs), job.name)
                    writing.extend(self._process(job, loading.pop(job.index, None), writer if workers else None,
                                                 image_progress))
                    while len(writing) > MAX_PENDING_WRITES or (writing and writing[0][1].done()):
                        record(*writing.popleft())
                writing.extend(self._written_all(self.pairs.release_all(), writer if workers else None))
                while writing:
                    record(*writing.popleft())
        except Cancelled:
            for future in loading.values():
                future.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
        self.rows.sort(key=lambda r: int(r.index))  # an image that waited for its pair was written later
        return self.rows

    def _load_ahead(self, loaders: ThreadPoolExecutor, loading: Dict[int, Future], position: int,
                    workers: int) -> None:
        """Start loading the next ``2 x workers`` images that need it."""
        for job in self.jobs[position:position + 2 * workers]:
            if job.index not in loading and self._needs_loading(job):
                loading[job.index] = loaders.submit(self.pipeline.load, job.path, job.spacing_mm, job.stated)

    def _needs_loading(self, job: Job) -> bool:
        return self.overwrite or not self.folder.is_complete(job.name)

    def _process(self, job: Job, loading: Optional[Future], writer: Optional[ThreadPoolExecutor],
                 image_progress: Optional[ProgressCallback]) -> List[Tuple[Job, Future, float]]:
        """One job through its stages: [(job, the future of its row, when its work began)] for
        the images whose rows are on their way: none while this image waits for the other breast
        of its view, two when it completes a pair. A row is written on ``writer`` while the next
        image runs, or here without one."""
        loaded = loading.result() if loading is not None else None
        start = time.perf_counter()
        done: Future = Future()
        blocked = self.folder.in_the_way(job.name)
        if blocked is not None:  # a user's file or folder: never moved, replaced or deleted
            done.set_result(Row(image=str(job.path), status=Status.FAILED, error=str(MammoPatchError(blocked, job.path))))
        elif not self._needs_loading(job):
            row, document = self._existing(job)
            done.set_result(row)
            return [(job, done, start)] + self._written_all(self.pairs.offer_done(document), writer)
        else:
            if loaded is None:
                loaded = self.pipeline.load(job.path, job.spacing_mm, job.stated)
            inferred = self._infer(job, loaded, image_progress)
            if not isinstance(inferred, Failure):
                return self._written_all(self.pairs.offer(job, inferred, start), writer)
            done.set_result(_failed(inferred))
        return [(job, done, start)] + self._written_all(self.pairs.tick(), writer)

    def _written_all(self, ready: List[Tuple[Job, Inferred, float]],
                     writer: Optional[ThreadPoolExecutor]) -> List[Tuple[Job, Future, float]]:
        return [self._written(job, inferred, start, writer) for job, inferred, start in ready]

    def _written(self, job: Job, inferred: Inferred, start: float,
                 writer: Optional[ThreadPoolExecutor]) -> Tuple[Job, Future, float]:
        """An image whose findings are final: its Grad-CAM maps made here (the device's
        thread), its outputs written on ``writer``."""
        explained = self.pipeline.explain(inferred)
        done: Future = Future()
        if isinstance(explained, Failure):
            done.set_result(_failed(explained))
        elif writer is not None:
            return job, writer.submit(self._write, job, explained), start
        else:
            done.set_result(self._write(job, explained))
        return job, done, start

    def _existing(self, job: Job) -> Tuple[Row, Optional[Dict[str, Any]]]:
        """The row of an image whose output folder exists: done earlier (its findings read back,
        so a resumed batch's summary matches an uninterrupted one), or refused; and its
        ``findings.json`` document when done earlier (None if refused or unreadable)."""
        output = self.folder.root / job.name
        if not self.resume:
            error = MammoPatchError("outputs exist already (--resume skips them, --overwrite replaces them)", output)
            return Row(image=str(job.path), status=Status.FAILED, error=str(error)), None
        document = findings_document(output)
        findings = findings_of(document)
        if findings is None:
            return Row(image=str(job.path), status=Status.DONE_EARLIER, output=str(output)), document
        top = findings[0] if findings else None
        return Row(image=str(job.path), status=Status.DONE_EARLIER, findings=len(findings),
                   top_class=str(top["category"]) if top else "", top_score=float(top["score"]) if top else None,
                   output=str(output)), document

    def _infer(self, job: Job, loaded: Union[Loaded, Failure],
               image_progress: Optional[ProgressCallback]) -> Union[Inferred, Failure]:
        """Stage 2; an unexpected failure (of loading or inferring) loads the file again and
        gets one more try."""
        outcome = loaded if isinstance(loaded, Failure) else self.pipeline.infer(loaded, image_progress)
        if isinstance(outcome, Failure) and outcome.worth_retrying:
            logger.warning("%s: unexpected %s (%s); retrying once", job.path, type(outcome.error).__name__,
                           outcome.error)
            again = self.pipeline.load(job.path, job.spacing_mm, job.stated)
            outcome = again if isinstance(again, Failure) else self.pipeline.infer(again, image_progress)
        return outcome

    def _write(self, job: Job, inferred: Inferred) -> Row:
        """Stage 3; an unexpected failure gets one more try."""
        outcome = self.pipeline.write(inferred, self.folder, job.name)
        if isinstance(outcome, Failure) and outcome.worth_retrying:
            logger.warning("%s: unexpected %s while writing (%s); retrying once", job.path,
                           type(outcome.error).__name__, outcome.error)
            outcome = self.pipeline.write(inferred, self.folder, job.name)
        return _failed(outcome) if isinstance(outcome, Failure) else outcome


#: Images a batch goes on to after one whose other breast it has not met yet, before that one
#: is written as read alone (a VinDr study's four views lie side by side in a sorted batch).
PAIR_PATIENCE = 3


@dataclass
class _Waiting:
    job: Job
    inferred: Inferred
    start: float
    key: BreastKey
    age: int = 0


@dataclass
class _DoneEarlier:
    """An image done in an earlier run of a resumed batch: not written again, but the other
    breast of its view may still be read against what its findings.json records."""

    scores: BreastScores
    key: BreastKey
    age: int = 0


class PairWait:
    """Images held back until the other breast of their view has been predicted too, so that
    both are read against each other (:meth:`ImagePipeline.against_other_breast`), when the
    model carries an operating point for pairs. An image whose other breast does not come
    within :data:`PAIR_PATIENCE` images is read alone; its ``findings.json`` says which
    reading it got. In a resumed batch an image may meet (within the same patience, so that it
    gets the reading an uninterrupted run gives it) the other breast done in an earlier run:
    it is read against what that one's findings.json records (:meth:`offer_done`), and the
    earlier image stays as it was written (read alone, if it was); an earlier findings.json
    that does not record its per-class maxima (older outputs) leaves the image read alone."""

    def __init__(self, pipeline: ImagePipeline, patience: int = PAIR_PATIENCE,
                 crowded: AbstractSet[Tuple[str, str]] = frozenset()) -> None:
        self.pipeline, self.patience, self.crowded = pipeline, patience, crowded
        self.enabled = pipeline.predictor.reads_other_breast
        self.waiting: List[_Waiting] = []
        self.done: List[_DoneEarlier] = []

    def _key(self, source: Any) -> Optional[BreastKey]:
        """An image's key, or None when it is read alone: no pairs, no study or side, or a view
        with more than one image of a side (:func:`crowded_views_of`)."""
        key = source_breast_key(source) if self.enabled and isinstance(source, dict) else None
        return None if key is None or key[:2] in self.crowded else key

    def offer(self, job: Job, inferred: Inferred, start: float) -> List[Tuple[Job, Inferred, float]]:
        """The images ready to be written once ``inferred`` is known (oldest first)."""
        ready = self.tick()
        key = self._key(inferred.loaded.image.metadata())
        if key is None:
            return ready + [(job, inferred, start)]
        match = _partner(self.waiting, key)
        if match is not None:
            self.waiting.remove(match)
            return ready + [(match.job, self.pipeline.against_other_breast(match.inferred, inferred), match.start),
                            (job, self.pipeline.against_other_breast(inferred, match.inferred), start)]
        earlier = _partner(self.done, key)
        if earlier is not None:
            self.done.remove(earlier)
            return ready + [(job, self.pipeline.against_other_breast(inferred, earlier.scores), start)]
        self.waiting.append(_Waiting(job, inferred, start, key))
        return ready

    def offer_done(self, document: Optional[Dict[str, Any]]) -> List[Tuple[Job, Inferred, float]]:
        """The images ready to be written once an image done earlier has gone by (``document``:
        its findings.json, None when refused or unreadable): a waiting image of the other breast
        is read against it; otherwise later ones may be."""
        ready = self.tick()
        scores = breast_scores_of(document) if self.enabled else None
        key = self._key(document.get("source")) if scores is not None and document is not None else None
        if key is None or scores is None:
            return ready
        match = _partner(self.waiting, key)
        if match is None:
            self.done.append(_DoneEarlier(scores, key))
            return ready
        self.waiting.remove(match)
        return ready + [(match.job, self.pipeline.against_other_breast(match.inferred, scores), match.start)]

    def tick(self) -> List[Tuple[Job, Inferred, float]]:
        """One more image has gone by: those that waited too long, to be written as read alone."""
        for entry in [*self.waiting, *self.done]:
            entry.age += 1
        late = [w for w in self.waiting if w.age > self.patience]
        self.waiting = [w for w in self.waiting if w.age <= self.patience]
        self.done = [d for d in self.done if d.age <= self.patience]
        return [(w.job, w.inferred, w.start) for w in late]

    def release_all(self) -> List[Tuple[Job, Inferred, float]]:
        """The end of the batch: every image still waiting, read alone."""
        late, self.waiting, self.done = self.waiting, [], []
        return [(w.job, w.inferred, w.start) for w in late]


def crowded_views_of(jobs: Sequence[Job], breasts: Optional[Mapping[Job, Dict[str, Any]]] = None
                     ) -> FrozenSet[Tuple[str, str]]:
    """The (study, view)s of a batch that hold more than one image of a side
    (:func:`~MammoPatchLib.other_breast.crowded_views`, the rule image_scores.csv follows too),
    from the files' headers before any image is read, since an image is paired as soon as its
    other breast comes; one warning names each such view and its files. ``breasts``: the jobs'
    :func:`~.jobs.job_breasts` where the batch has read them already."""
    breasts = breasts if breasts is not None else job_breasts(jobs)
    keys = [source_breast_key(breasts[job]) for job in jobs]
    crowded = crowded_views(keys)
    for (study, view), positions in crowded.items():
        files = ", ".join(f"{jobs[p].path.name} ({keys[p][2]})" for p in positions)  # type: ignore[index]
        logger.warning("study %s, view %s holds more than one image of a side (%s): those images are read "
                       "alone, not against the other breast", study, view or "(none stated)", files)
    return frozenset(crowded)


_Keyed = TypeVar("_Keyed", _Waiting, _DoneEarlier)


def _partner(entries: Sequence[_Keyed], key: BreastKey) -> Optional[_Keyed]:
    """The first of ``entries`` (each with a ``key``) that is the other breast of ``key``'s view."""
    return next((e for e in entries if e.key[:2] == key[:2] and e.key[2] != key[2]), None)


def _image_progress(on_progress: Optional[ProgressCallback], position: int, count: int,
                    name: str) -> Optional[ProgressCallback]:
    """One image's progress as progress through the batch."""
    if on_progress is None:
        return None

    def report(fraction: float, text: str) -> None:
        on_progress((position + fraction) / max(count, 1), f"{name}: {text}")

    return report


def _failed(failure: Failure) -> Row:
    if isinstance(failure.error, MammoPatchError):
        logger.debug("%s", failure.error)
    elif not isinstance(failure.error, MemoryError):
        logger.debug("%s: unexpected error", failure.source, exc_info=failure.error)
    return failure.row()


def _gather(rows: List[Row], ctx: RankContext) -> List[Row]:
    """Every rank's rows, in job order (torch.distributed.all_gather_object)."""
    if not ctx.distributed:
        return rows
    import torch.distributed as dist

    everything: List[Optional[List[Row]]] = [None] * ctx.world_size
    dist.all_gather_object(everything, rows)
    merged = [row for part in everything for row in (part or [])]
    return sorted(merged, key=lambda r: int(r.index))
