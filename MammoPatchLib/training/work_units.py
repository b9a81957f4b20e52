"""Resumable work units, dealt to the ranks of a torchrun launch.

A long training run is cut into units whose results depend neither on each other nor on the
process that computes them (each unit seeds itself): cross-validation's recipe x fold, or a
training's ensemble members. Each finished unit is written atomically as one ``torch.save``
file of tensors and plain values (read back with ``weights_only=True``), so:

- a run killed at any moment, ``kill -9`` included, loses only the units in progress: the
  same command finds the files already written and skips those units;
- under torchrun the units still to do are dealt round-robin to the ranks
  (:func:`deal`), rank 0 waits for every rank (:meth:`RankContext.barrier
  <MammoPatchLib.distributed.RankContext.barrier>`) and reads every unit back from disk, so
  the result is the same on any number of ranks and after any number of restarts.

A store's folder name carries a hash of everything its units depend on (:func:`identity`),
and each file repeats it: a unit made under another recipe, fold file or library version is
never read as this run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch

from ..distributed import RankContext
from ..errors import MammoPatchError
from ..io.atomic import atomic_path

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Bumped when a unit file's content changes meaning: older files are then recomputed.
UNIT_FORMAT = 1


def identity(*parts: Any) -> str:
    """A short hash of JSON-able ``parts`` (recipe dicts, fold assignments, versions)."""
    text = json.dumps([UNIT_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class UnitStore:
    """One folder of finished units, ``<folder>/<label>-<key>/<unit>.pt``.

    Args:
        folder: where the stores of a run live (e.g. the report folder's ``units``).
        label: a readable name for the folder (a recipe's name).
        key: :func:`identity` of everything the units depend on.
    """

    def __init__(self, folder: Path, label: str, key: str) -> None:
        self.folder = Path(folder) / f"{label}-{key}"
        self.key = key

    def path(self, unit: str) -> Path:
        return self.folder / f"{unit}.pt"

    def load(self, unit: str) -> Optional[Dict[str, Any]]:
        """The unit's payload, or None when it is not finished (absent, damaged, or made under
        another key: recomputed, never trusted)."""
        path = self.path(unit)
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged unit is recomputed
            logger.warning("recomputing the damaged work unit %s (%s)", path, type(exc).__name__)
            return None
        if not isinstance(payload, dict) or payload.get("key") != self.key:
            logger.warning("recomputing the work unit %s: it was made for another run", path)
            return None
        return payload

    def save(self, unit: str, payload: Dict[str, Any]) -> Path:
        """Write the unit atomically (a killed run leaves no half-written unit)."""
        path = self.path(unit)
        with atomic_path(path) as tmp:
            torch.save({**payload, "key": self.key}, tmp)
        return path


def deal(items: Sequence[T], ranks: RankContext) -> List[T]:
    """This rank's share of ``items``: every ``world_size``-th, from its rank on (all of
    them in a single process)."""
    return list(items[ranks.rank::ranks.world_size])


def fill_by_shares(ranks: RankContext, items: Sequence[T], fill: Callable[[Sequence[T]], object]) -> None:
    """Under torchrun: each rank fills a cache for its share of ``items`` (:func:`deal`), then
    waits for the others, so that afterwards every rank only reads (nothing to do in a single
    process, which fills and reads in one go)."""
    if ranks.distributed:
        fill(deal(items, ranks))
        ranks.barrier()


def duration(seconds: float) -> str:
    """``seconds`` as people read a run's time: 42 s, 3 min 05 s, 2 h 07 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class UnitClock:
    """Elapsed time and an estimate of the time left, over ``total`` units of which ``done``
    were finished before this process started (a resumed run); each unit left is taken to
    cost the mean of those finished here."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self.done = self.first = done
        self.start = time.perf_counter()

    def tick(self, noun: str = "unit") -> str:
        """Count one more unit finished; "unit 3/10, 1 min 12 s elapsed, about 2 min 48 s left"
        (``noun``: what a unit is, e.g. "epoch")."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / (self.done - self.first) * (self.total - self.done)
        return f"{noun} {self.done}/{self.total}, {duration(elapsed)} elapsed, about {duration(left)} left"


#: A unit: the store that keeps it (None: kept in memory, for a run that need not resume) and its name there.
Unit = Tuple[Optional[UnitStore], str]


def run_units(units: Sequence[Unit], compute: Callable[[int], Optional[Dict[str, Any]]],
              ranks: Optional[RankContext] = None, describe: Optional[Callable[[int, Dict[str, Any]], str]] = None,
              together: bool = False) -> List[Dict[str, Any]]:
    """Every unit's payload, in order, on rank 0 (an empty list on the other ranks).

    ``compute(i)`` makes the payload of ``units[i]`` (tensors and plain values, independent of
    the other units and of the rank). A unit its store already holds is skipped; the others are
    dealt to the ranks (:func:`deal`), each written as soon as it is made; rank 0 waits for
    every rank, then reads every unit back from its store, so a payload is the same whether
    made now, before a kill, or on another rank. ``describe(i, payload)``: a progress line for
    each unit made here (elapsed time and time left are added).

    ``together``: every rank joins every unit instead (a unit that itself runs on all the
    ranks, as a DDP training does); ``compute`` returns the payload on rank 0, which writes
    it, and None on the others."""
    ranks = ranks or RankContext()
    if ranks.distributed and any(store is None for store, _ in units):
        raise ValueError("units made on several ranks need a store to meet in")
    todo = [i for i, (store, name) in enumerate(units) if store is None or store.load(name) is None]
    if describe is not None and ranks.is_main and len(todo) < len(units):
        print(f"  {len(units) - len(todo)} of {len(units)} work units already done: skipped", flush=True)
    ranks.barrier()  # every rank has listed what is left before any unit is written
    mine = todo if together else deal(todo, ranks)
    clock = UnitClock(len(mine))
    where = f"[rank {ranks.rank}/{ranks.world_size}] " if ranks.distributed and not together else ""
    kept: Dict[int, Dict[str, Any]] = {}
    for i in mine:
        payload = compute(i)
        if payload is None:  # a rank other than 0 of a unit made together
            continue
        store, name = units[i]
        if store is None:
            kept[i] = payload
        else:
            store.save(name, payload)
        if describe is not None:
            print(f"  {where}{describe(i, payload)}; {clock.tick()}", flush=True)
    ranks.barrier()  # every unit is written
    if not ranks.is_main:
        return []
    return [kept[i] if i in kept else _finished(*units[i]) for i in range(len(units))]


def _finished(store: Optional[UnitStore], name: str) -> Dict[str, Any]:
    payload = store.load(name) if store is not None else None
    if payload is None:
        raise MammoPatchError("a work unit is missing after every rank finished (was its folder changed meanwhile?)",
                              store.path(name) if store is not None else None)
    return payload


__all__ = ["UnitStore", "UnitClock", "Unit", "run_units", "deal", "fill_by_shares", "duration", "identity",
           "UNIT_FORMAT"]
