"""The endless, seeded stream of training batches: the same batch at the same step, resumed or not, on any
number of DDP ranks (each takes its shard of the global batch).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from distill import distributed

if TYPE_CHECKING:
    from distill.data.datasets import PairedPatchDataset


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch: a pure function of (seed, epoch), as DataLoader's
    ``shuffle=True`` with a generator seeded ``seed * 100_003 + epoch`` draws it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base-seed draw came first
    return torch.randperm(size, generator=generator).tolist()


class StreamBatches:
    """Batch sampler of the endless seeded stream: global batch ``step`` is slice ``step % per_epoch`` of
    epoch ``step // per_epoch``'s order, and this rank yields its shard of it as ``(epoch, index)`` keys.

    Starting at ``start_step`` lands on exactly the batch an uninterrupted run sees there, without
    touching the model or the data (a resumed run) and every rank of a DDP run covers a disjoint slice.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("the training set is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.per_epoch = math.ceil(size / batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step, cached_epoch, order = self.start_step, -1, []
        while True:
            epoch, b = divmod(step, self.per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, epoch_order(self.size, self.seed, epoch)
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield [(epoch, i) for i in distributed.shard(batch, self.rank, self.world_size)]
            step += 1


class _EpochItems(Dataset):
    """Items addressed by ``(epoch, index)``: each read selects its epoch's crops first, so a stream that
    crosses epochs works inside DataLoader workers (each holds its own copy of the dataset)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def training_batches(
    dataset: PairedPatchDataset,
    batch_size: int,
    seed: int,
    *,
    start_step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless, reproducible stream of batches: a new crop set and order every epoch.

    ``batch_size`` is the global batch; with ``world_size`` > 1 this rank gets its contiguous shard.
    """
    sampler = StreamBatches(len(dataset), batch_size, seed, start_step, rank, world_size)
    loader = DataLoader(_EpochItems(dataset), batch_sampler=sampler, num_workers=num_workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))  # not the global RNG
    yield from loader
