"""The training data order: global batches, split across processes, resumable mid-epoch.

Each pass (epoch) draws one permutation of the training set from a seeded generator and cuts
it into global batches of ``data.batch_size`` samples. With ``W`` processes, process ``r``
takes the ``r``-th of ``W`` contiguous slices of every global batch, so a step sees the same
samples whatever the number of processes. With one process the order is exactly that of
``DataLoader(dataset, batch_size=B, shuffle=True, generator=g)``.

Resuming: the sampler records the generator state at the start of each pass; :meth:`resume_at`
restores such a state and skips the batches already trained, by index, without loading them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, RandomSampler, Sampler

from spikegrad.errors import UserError


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffled global batches of ``batch_size`` indices; this process's slice of each.

    Args:
        size: number of training samples.
        batch_size: the global batch (all processes together).
        generator: the shuffling generator; every process must seed it alike.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, size: int, batch_size: int, generator: torch.Generator, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size % world_size:
            raise UserError(
                f"data.batch_size is the global batch and must be divisible by the number of "
                f"processes: {batch_size} over {world_size} processes; pick a multiple of "
                f"{world_size}"
            )
        self.size, self.batch_size = size, batch_size
        self.rank, self.world_size = rank, world_size
        self.generator = generator
        self._batches = BatchSampler(RandomSampler(range(size), generator=generator), batch_size,
                                     drop_last=False)
        #: generator state at the start of the current (or last) pass
        self.epoch_start_state: Tensor = generator.get_state()
        self._resume: tuple[Tensor, int] | None = None

    def __len__(self) -> int:
        """Steps per epoch (global batches)."""
        return len(self._batches)

    def resume_at(self, epoch_start_state: Tensor, batches_done: int) -> None:
        """Make the next pass replay the one that began at ``epoch_start_state``, from batch
        ``batches_done`` on."""
        self._resume = (epoch_start_state, batches_done)

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume is not None:
            state, skip = self._resume
            self._resume = None
            self.generator.set_state(state)
        self.epoch_start_state = self.generator.get_state()
        for batch in itertools.islice(iter(self._batches), skip, None):
            yield self.shard(batch)

    def global_size(self, index: int) -> int:
        """Samples in global batch ``index`` over all processes (after :meth:`shard`'s padding)."""
        return max(min(self.batch_size, self.size - index * self.batch_size), self.world_size)

    def shard(self, batch: list[int]) -> list[int]:
        """This process's contiguous slice of a global batch.

        A short last batch is split as evenly as possible (slices differ by at most one
        sample); one with fewer samples than processes is repeated so each gets one.
        """
        W = self.world_size
        if W == 1:
            return batch
        if len(batch) < W:
            batch = (batch * W)[:W]
        base, extra = divmod(len(batch), W)
        start = self.rank * base + min(self.rank, extra)
        return batch[start:start + base + (1 if self.rank < extra else 0)]


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` on, in order: a disjoint evaluation shard."""

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
