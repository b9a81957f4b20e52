"""Where this process stands in a torchrun launch, for training and for batches alike.

torchrun starts one process per rank and tells each where it stands through the environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). :func:`start_ranks` reads those once and joins the
process group (NCCL on GPUs, gloo on CPUs); without torchrun it is a single process, rank 0
of 1, and torch.distributed is never touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Union

#: How long a collective may wait for the slowest rank. A rank that dies ends the launch anyway
#: (torchrun stops the others), so torch's default (10-30 min) would only cut a long but healthy
#: run short: a batch's final gather waits for the last image of every rank, and a training
#: epoch's reduction for the slowest rank's validation.
COLLECTIVE_TIMEOUT = timedelta(hours=48)


def launched_world_size() -> int:
    """How many ranks torchrun launched (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank in a torchrun launch (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class RankContext:
    """This process's place in the launch (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # the process group was created here, and is destroyed by close()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes what every rank shares (summary, checkpoints, logs)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for in a single process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (what the others pass is ignored): data that one
        rank reads or makes once, such as records and folds, instead of each rank redoing it."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Leave the process group, if :func:`start_ranks` created it."""
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def start_ranks(device: Union[str, "torch.device"] = "auto") -> RankContext:  # noqa: F821 - torch is lazy
    """Join torchrun's process group when launched by it (and pin this rank's GPU when
    ``device`` is not the CPU and CUDA is there); a single process otherwise."""
    world = launched_world_size()
    if world <= 1:
        return RankContext()
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = str(device) != "cpu" and torch.cuda.is_available()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    if use_cuda:
        torch.cuda.set_device(local)
    return RankContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, owns_group=owns)
