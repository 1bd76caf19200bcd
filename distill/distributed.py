"""torchrun / DistributedDataParallel plumbing: the process group, who is rank 0, barriers, sharding.

Launched by ``torchrun`` (or ``ispdc run --nproc N``), every process runs the same recipe; the trainer
wraps its step in DDP and each rank takes its own slice of every *global* batch, so N processes see
exactly the batches one process would (global batch = the recipe's ``batch_size``).  Outside torchrun
every helper here degrades to the single-process case, so callers never branch on it.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

BARRIER_TIMEOUT = _dt.timedelta(hours=2)  # rank 0 may export/convert alone while the others wait
_solo_depth = 0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA).

    Idempotent; a plain (non-torchrun) process gets rank 0 of 1 and no process group.
    """
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
        atexit.register(shutdown)
    return info()


def info() -> DistInfo:
    """This process's rank and world size (rank 0 of 1 without a process group or inside :func:`solo`)."""
    if _solo_depth or not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return info().is_main


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Rank 0 working alone (export, quantize, hand-off) while the others wait: a ``train()`` in here
    is a plain single-process run, never a collective the other ranks would not join."""
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if info().enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """The slice of a global batch each rank trains on; the global batch must split evenly."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} training processes; "
                         f"use a multiple of {world_size}")
    return batch_size // world_size


def shard(indices: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous slice of one global batch (the ranks' slices concatenate to the batch)."""
    if len(indices) % world_size:
        raise ValueError(f"a batch of {len(indices)} samples does not split over {world_size} processes; "
                         f"make the patches per epoch (images x patches_per_image) a multiple of batch_size")
    size = len(indices) // world_size
    return list(indices[rank * size : (rank + 1) * size])


def torchrun_command(nproc: int, cli_args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m recipes.cli <args>``.

    ``--standalone`` picks a free rendezvous port, so parallel runs on one machine do not collide.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1; got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "recipes.cli", *cli_args]
