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
from typing import Any, Dict, List, Optional, Sequence, TypeVar

import torch

from ..distributed import RankContext
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


def duration(seconds: float) -> str:
    """``seconds`` as people read a run's time: 42 s, 3 min 05 s, 2 h 07 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class UnitClock:
    """Elapsed time and an estimate of the time left, over the ``total`` units this process
    computes (each unit's cost taken as the mean so far)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = time.perf_counter()

    def tick(self) -> str:
        """Count one more unit finished; "unit 3/10, 1 min 12 s elapsed, about 2 min 48 s left"."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        return f"unit {self.done}/{self.total}, {duration(elapsed)} elapsed, about {duration(left)} left"


__all__ = ["UnitStore", "UnitClock", "deal", "duration", "identity", "UNIT_FORMAT"]
