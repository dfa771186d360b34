"""Data-parallel training under torchrun without DistributedDataParallel.

DRL-Rec wraps its one module in DDP (:meth:`training.drl.train.DRLTrainer.wrap_ddp`). MMRF
cannot: a step calls many methods of its networks (states, critics, actors, the feedback
model) under three optimisers, and DDP synchronises only what runs through ``forward``. So its
ranks keep in lockstep by hand, which needs three things, each here:

- every rank starts from the same weights (the same seed) and reads its own shards
  (:func:`training.data.pipeline.shard_for_rank`);
- before each optimiser step, the gradients of that optimiser's parameters are averaged over
  the ranks (:func:`average_gradients`, one all-reduce per optimiser), so every rank applies
  the same update and the weights stay equal bit for bit (tested);
- the ranks take the same number of steps: :func:`lockstep` ends the batch stream of every
  rank as soon as one runs out (one all-reduce per step), where DDP uses ``join()``.

With ``world_size`` 1 (no torchrun) nothing here is called. Backend: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["average_gradients", "all_mean", "env_rank", "init", "lockstep", "shutdown"]

T = TypeVar("T")


def env_rank() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` outside torchrun).

    Raises ValueError on a rank outside ``[0, world_size)``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE")
    return rank, world_size


def init(device: str) -> tuple[int, int, str]:
    """Join torchrun's process group when there is one; returns ``(rank, world_size, device)``
    (a CUDA device becomes the rank's ``cuda:<LOCAL_RANK>``)."""
    rank, world_size = env_rank()
    if world_size > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return rank, world_size, device


def shutdown(world_size: int) -> None:
    """Wait for every rank, then leave the process group (no-op for one process)."""
    if world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Replace each gradient by its mean over the ranks, in one all-reduce.

    Parameters without a gradient are skipped; every rank runs the same code on the same
    architecture, so the set is the same on every rank."""
    if world_size <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def all_mean(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """The mean of ``x`` over the ranks (``x`` itself for one process); ``x`` is unchanged."""
    if world_size <= 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world_size


def lockstep(
    batches: Iterable[T], world_size: int, device: str | torch.device = "cpu"
) -> Iterator[T]:
    """``batches``, ended for every rank as soon as one rank's stream is exhausted.

    Each item costs one all-reduce of one number (the MIN of "I have a batch"), so no rank
    enters a step's collectives that a peer will never join."""
    it = iter(batches)
    if world_size <= 1:
        yield from it
        return
    while True:
        item = next(it, None)
        have = torch.tensor([0 if item is None else 1], device=device)
        dist.all_reduce(have, op=dist.ReduceOp.MIN)
        if int(have.item()) == 0:
            return
        assert item is not None
        yield item
