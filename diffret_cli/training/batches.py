"""The order of training items: fixed by (seed, stage, epoch), so a resumed run sees the
batches an uninterrupted one would; each rank takes its share of every global batch."""

from __future__ import annotations

import torch

from diffret_cli.distributed import DistInfo
from diffret_cli.errors import ConfigError


def check_global_batch(num_items: int, batch_size: int, dist: DistInfo, *, section: str) -> None:
    """Before any work: the global batch must split evenly over the ranks and fit the data."""
    if batch_size % dist.world_size:
        lo = batch_size - batch_size % dist.world_size
        raise ConfigError(f"{section}.batch_size={batch_size} does not split evenly over {dist.world_size} "
                          "processes (each takes the same share of the global batch)",
                          hint=f"use {section}.batch_size={lo} or {lo + dist.world_size}, or a number of "
                          f"processes that divides {batch_size}")
    if num_items < batch_size:
        raise ConfigError(f"the training split has {num_items} pairs, fewer than one {section} batch of "
                          f"{batch_size}", hint=f"lower {section}.batch_size")


def epoch_batches(n: int, batch_size: int, *, seed: int, stage: int, epoch: int, dist: DistInfo) -> list[list[int]]:
    """This rank's share of every global batch of an epoch (drop_last)."""
    g = torch.Generator().manual_seed(seed * 1000003 + stage * 1009 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = batch_size // dist.world_size
    out = []
    for b in range(n // batch_size):
        glob = order[b * batch_size:(b + 1) * batch_size]
        out.append(glob[dist.rank * per_rank:(dist.rank + 1) * per_rank])
    return out


def total_steps(steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps of a stage: all its epochs, or ``train.max_steps`` when smaller."""
    total = steps_per_epoch * epochs
    return min(total, int(max_steps)) if max_steps else total
