"""Distributed data parallel plumbing: start-up (torchrun or submitit), sharding, gathers.

``gather_with_grad`` concatenates a tensor over processes and sends the gradient of every copy
back to the process that owns the rows, so a contrastive loss computed against the gathered
batch back-propagates into every process's encoder (negatives come from the global batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# How long a collective waits for the other processes. The main process alone computes TSP's
# global video features (every clip of every ActivityNet video, hours on the paper's data) and the
# per-epoch validation while the others wait at a barrier; torch's default (10 min under NCCL,
# 30 min under gloo) would abort them. CLAPBENCH_DIST_TIMEOUT_MINUTES overrides it.
DIST_TIMEOUT_MINUTES = 24 * 60


def dist_timeout() -> timedelta:
    value = os.environ.get("CLAPBENCH_DIST_TIMEOUT_MINUTES")
    if value is None:
        return timedelta(minutes=DIST_TIMEOUT_MINUTES)
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"CLAPBENCH_DIST_TIMEOUT_MINUTES: expected a positive number of minutes, got {value!r}")
    return timedelta(minutes=minutes)


def _under_submitit() -> bool:
    return "SUBMITIT_FOLDER" in os.environ or "SUBMITIT_EXECUTOR" in os.environ


WORLD_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def export_submitit_world() -> int:
    """Inside a submitit job of several tasks, export this task's MASTER_ADDR/PORT, RANK, WORLD_SIZE,
    LOCAL_RANK and LOCAL_WORLD_SIZE, replacing any values the job inherited from the shell that
    submitted it or from an outer job; returns the task's global rank.

    ``CUDA_VISIBLE_DEVICES`` stays as SLURM set it: on a cluster without device cgroups it holds the
    job's physical GPUs (e.g. "2,3"), and submitit's replacement by the local rank ("0", "1") would
    put the tasks on GPUs 0 and 1, another job's. ``setup_distributed`` picks the task's GPU by its
    local rank among the visible ones.

    Outside a submitit job, or in a job of one task, nothing is exported and the rank is 0. A job of
    several tasks whose world could not be exported raises instead of running each task alone.
    """
    import submitit

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # submitit recognises no job environment: not inside a submitit job
        return 0
    if env.num_tasks <= 1:
        return 0
    # overwrite: without it submitit refuses (RuntimeError) when any of these is already set
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if os.environ.get("WORLD_SIZE") != str(env.num_tasks) or os.environ.get("RANK") != str(env.global_rank):
        raise RuntimeError(
            f"submitit job {env.job_id} has {env.num_tasks} tasks but its process group was not set up "
            f"(task {env.global_rank}: RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}); "
            "running each task alone would repeat the stage in every task")
    return env.global_rank


def setup_distributed() -> DistInfo:
    """Join the process group when launched by torchrun or by a submitit job of several tasks.

    A plain single process (no ``WORLD_SIZE`` > 1, no multi-task submitit job) stays local.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if _under_submitit():
        export_submitit_world()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():  # the local rank's GPU among those the job sees (CUDA_VISIBLE_DEVICES as SLURM set it)
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=dist_timeout())
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def _gather_padded(x: torch.Tensor) -> tuple[List[torch.Tensor], List[int]]:
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    biggest = max(sizes)
    padded = x.new_zeros((biggest,) + tuple(x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return [p[:s] for p, s in zip(parts, sizes)], sizes


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts, sizes = _gather_padded(x.detach())
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every process holds a gradient for every row; the owner of a row needs their sum.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Rows of every process, concatenated in rank order; gradients flow back to their owners."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts, _ = _gather_padded(x.detach())
    return torch.cat(parts, dim=0)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / dist.get_world_size()


def gather_to_main(obj: Any) -> Optional[List[Any]]:
    """Every process's ``obj`` (picklable), in rank order, on the main process; None on the others.
    One process: ``[obj]``. A collective: every process must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: Optional[List[Any]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every process when ``flag`` is true on any (used to stop together on a signal)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> List[int]:
    """This process's item order for ``epoch``: a function of (seed, epoch) only.

    The permutation is padded (wrapping around) to a multiple of ``world_size`` so every process
    runs the same number of steps, then dealt round-robin, as ``DistributedSampler`` does.
    Because it depends on nothing else, skipping its first n batches reproduces a resumed epoch.
    """
    if num_items == 0:
        return []
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(num_items, generator=g).tolist()
    else:
        order = list(range(num_items))
    total = -(-num_items // world_size) * world_size
    order = (order * (total // num_items + 1))[:total]
    return order[rank::world_size]
