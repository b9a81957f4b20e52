"""The poster's weighted sampling of training slots, one draw shared by every torchrun rank."""

from __future__ import annotations

import math
from typing import Dict, Iterator, Sequence, Tuple

import torch
from torch.utils.data import Sampler

from ..patches.slots import NO_FINDING_SLOT, Slot


def slot_weights(slots: Sequence[Slot], no_finding_share: float) -> torch.Tensor:
    """Weighted sampling against class imbalance: every present finding class gets the same
    share of patches, No Finding (the breast) gets ``no_finding_share``."""
    counts: Dict[int, int] = {}
    for s in slots:
        counts[s.category] = counts.get(s.category, 0) + 1
    finding_classes = [c for c in counts if c != NO_FINDING_SLOT]
    if not finding_classes or NO_FINDING_SLOT not in counts:  # one kind only: its share is everything
        no_finding_share = 0.0 if finding_classes else 1.0
    weights = [(no_finding_share if s.category == NO_FINDING_SLOT
                else (1.0 - no_finding_share) / len(finding_classes)) / counts[s.category] for s in slots]
    return torch.tensor(weights, dtype=torch.double)


class WeightedSlotSampler(Sampler):
    """Draws ``num_samples`` (slot, seed) pairs per epoch with replacement, by weight; with
    ``num_replicas`` > 1 each rank takes every ``num_replicas``-th pair of the same draw, so
    the ranks' batches together are the one-process run's batches (per-rank batch = batch /
    ranks). The draw depends only on (seed, epoch) and the weights: a resumed run repeats it."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int = 0, rank: int = 0, num_replicas: int = 1):
        self.weights, self.seed, self.rank, self.num_replicas = weights, seed, rank, num_replicas
        self.total = int(math.ceil(num_samples / num_replicas)) * num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        slots = torch.multinomial(self.weights, self.total, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**31 - 1, (self.total,), generator=generator)
        for i in range(self.rank, self.total, self.num_replicas):
            yield int(slots[i]), int(seeds[i])
