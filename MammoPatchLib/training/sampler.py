"""The weighted, DDP-aware sampler of training slots."""

from __future__ import annotations

import math
from typing import Dict, Iterator, Sequence, Tuple

import torch
from torch.utils.data import Sampler

from ..patches.slots import HARD_NEGATIVE_SLOT, NO_FINDING_SLOT, Slot


def slot_weights(slots: Sequence[Slot], no_finding_share: float, hard_negative_share: float = 0.0) -> torch.Tensor:
    """Weighted sampling against class imbalance: every present finding class gets the same
    share of patches, No Finding gets ``no_finding_share``, of which hard negatives (when
    there are any) take ``hard_negative_share``."""
    counts: Dict[int, int] = {}
    for s in slots:
        counts[s.category] = counts.get(s.category, 0) + 1
    finding_classes = [c for c in counts if c >= 0]
    negative_share = no_finding_share if finding_classes else 1.0
    hard = hard_negative_share if HARD_NEGATIVE_SLOT in counts and NO_FINDING_SLOT in counts else (
        1.0 if HARD_NEGATIVE_SLOT in counts else 0.0)
    weights = []
    for s in slots:
        if s.category == NO_FINDING_SLOT:
            share = negative_share * (1.0 - hard)
        elif s.category == HARD_NEGATIVE_SLOT:
            share = negative_share * hard
        else:
            share = (1.0 - no_finding_share) / len(finding_classes)
        weights.append(share / counts[s.category])
    return torch.tensor(weights, dtype=torch.double)


class WeightedSlotSampler(Sampler):
    """Draws ``num_samples`` (slot, seed) pairs per epoch with replacement, by weight; with
    ``num_replicas`` > 1 each rank takes its share of the same draw (DDP). The draw depends
    only on (seed, epoch) and the weights, so a resumed run repeats it exactly."""

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
