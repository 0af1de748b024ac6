"""Data-parallel ZO over torch.distributed (`torchrun --nproc_per_node=N launch.py ...`).

A ZO step is fully described by its seed and a few scalars, so ranks that share the seed need to
exchange only those scalars: every rank derives the same step seed, evaluates the same probes on
its own shards of the batch, and the per-shard loss sums are combined into the same number on
every rank, which then applies the same update. No parameter or gradient is ever communicated.

Shards are fixed: `train.shards` contiguous pieces of every batch (and of every evaluation set);
rank r computes the shards i with i mod N = r. The combination is exact whatever the rank count:
each shard's sum enters a float64 all-reduce from the one rank that computed it (every other rank
adds an exact 0), and the shards are then added in shard order. So a 1-rank run with the same
`train.shards`, which computes the shards one after the other, gives bitwise the same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from zo import ZOError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0 writes the run folder (metrics, summary, W&B, checkpoints, the model)."""
        return self.rank == 0

    def mine(self, shard: int) -> bool:
        return shard % self.world == self.rank

    def combine(self, values: Sequence[float | None]) -> list[float]:
        """Every shard's value on every rank, from the rank that computed it (None on the others)."""
        if self.world == 1:
            return [float(v) for v in values]  # type: ignore[arg-type]
        import torch.distributed as dist

        total = torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()


def ranks_from_env(device: torch.device) -> Ranks:
    """The process group torchrun set up in the environment, or a Slurm job's tasks (submitit with
    tasks_per_node > 1: its SLURM_* variables are exported as torch.distributed's); one rank without."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    import torch.distributed as dist

    if device.type == "cuda":  # one GPU per rank on the node
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size())


def pieces(items: Sequence, shards: int) -> list[Sequence]:
    """`shards` contiguous pieces of items (the first ones one longer where it does not divide)."""
    size, extra = divmod(len(items), shards)
    out, at = [], 0
    for i in range(shards):
        n = size + (i < extra)
        out.append(items[at : at + n])
        at += n
    return out


def sharded_mean(fn: Callable[[Sequence], float], items: Sequence, shards: int, ranks: Ranks) -> float:
    """The mean of fn over items, computed as fn's per-shard means weighted by the shards' sizes."""
    parts = pieces(items, shards)
    local = [_share(fn, p, ranks.mine(i)) for i, p in enumerate(parts)]
    return sum(ranks.combine(local)) / len(items)


def _share(fn: Callable[[Sequence], float], part: Sequence, mine: bool) -> float | None:
    """A shard's sum: computed where it is this rank's, an exact 0 when empty, else another rank's."""
    if not len(part):
        return 0.0
    return fn(part) * len(part) if mine else None


def sharded_scores(fn: Callable[[Sequence], dict], items: Sequence, shards: int, ranks: Ranks) -> dict:
    """Like `sharded_mean` for a dict of means (an evaluation: accuracy, eval_loss, ...)."""
    parts = pieces(items, shards)
    local = {i: fn(p) for i, p in enumerate(parts) if ranks.mine(i) and len(p)}
    keys = sorted(next(iter(local.values())))  # every rank holds at least one non-empty shard
    values = [
        _share(lambda _, i=i, k=k: local[i][k], p, i in local) for k in keys for i, p in enumerate(parts)
    ]
    every = ranks.combine(values)  # one all-reduce for all the keys
    n = len(parts)
    return {k: sum(every[j * n : (j + 1) * n]) / len(items) for j, k in enumerate(keys)}


def gathered(local: list, n: int, shards: int, ranks: Ranks) -> list:
    """Per-item results of a sharded pass over n items (predictions), in item order, on every rank;
    `local` holds this rank's, its shards' in shard order."""
    if ranks.world == 1:
        return list(local)
    import torch.distributed as dist

    every: list = [None] * ranks.world
    dist.all_gather_object(every, local)
    out, taken = [], [0] * ranks.world
    for i, part in enumerate(pieces(range(n), shards)):
        owner = i % ranks.world
        out += every[owner][taken[owner] : taken[owner] + len(part)]
        taken[owner] += len(part)
    return out


def check(shards: int, ranks: Ranks, backward: bool) -> None:
    if shards % ranks.world:
        raise ZOError(
            f"train.shards={shards} does not split over {ranks.world} ranks: use a multiple of "
            f"{ranks.world} (each rank takes every {ranks.world}th shard)"
        )
    if backward and ranks.world > 1:
        raise ZOError("first-order optimizers are not data-parallel here: run them on one rank")
