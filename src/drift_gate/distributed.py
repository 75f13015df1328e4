"""torch.distributed for ``train`` and ``gate`` under ``torchrun``.

``torchrun --nproc_per_node=N -m drift_gate gate …`` (or ``train``) starts N
processes with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`init` joins them
into one process group (NCCL on GPUs, gloo on the CPU, rendezvous through the
``env://`` variables torchrun sets, so multi-node rendezvous works as torchrun
configures it). Without those variables everything runs in one process and the
helpers here are no-ops.

Work is sharded **by batch**: with batch size B, rank r takes batches r, r+N,
r+2N, … of the data in its fixed order. Each batch is therefore computed exactly
as in a single-process run with the same batch size (and thread count), which is
why the sharded gate's per-sample results equal the single-process ones exactly.
Results are gathered back into the original order on every rank; only rank 0
writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from drift_gate.errors import ConfigError, DriftGateError

__all__ = [
    "Dist",
    "GlobalBatchNorm2d",
    "barrier",
    "gather_shards",
    "global_batchnorm",
    "in_order",
    "init",
    "main_first",
    "shutdown",
]


T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 when not distributed).
        world: number of processes (1 when not distributed).
        device: the device this process computes on.
    """

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints results (rank 0)."""
        return self.rank == 0

    def shard(self, n: int, batch_size: int) -> list[int]:
        """Indices of the batches this rank computes: batches ``rank``, ``rank + world``, …"""
        batches = range(self.rank, (n + batch_size - 1) // batch_size, self.world)
        return [i for b in batches for i in range(b * batch_size, min((b + 1) * batch_size, n))]


def init(device: torch.device) -> Dist:
    """Joins the torchrun process group if ``WORLD_SIZE`` > 1; returns this process's :class:`Dist`.

    On CUDA each process takes the GPU ``LOCAL_RANK`` and uses NCCL; on the CPU, gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if torch.cuda.device_count() <= local:
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def shutdown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        dist.barrier()


def _all_gather(d: Dist, obj: Any) -> list[Any]:
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def gather_shards(
    d: Dist, n: int, batch_size: int, compute: Callable[[Sequence[int]], T]
) -> list[tuple[list[int], T]]:
    """Runs ``compute`` on this rank's shard of ``range(n)`` and gathers every rank's
    ``(indices, result)`` on every rank (rank order).

    An error on any rank is raised on every rank (after the exchange), so that no
    process waits forever for one that failed.
    """
    indices = d.shard(n, batch_size) if d.enabled else list(range(n))
    try:
        local: tuple[str, Any] = ("ok", compute(indices))
    except DriftGateError as exc:
        local = ("error", exc)
    except (ValueError, RuntimeError) as exc:
        local = ("error", DriftGateError(f"rank {d.rank}: {exc.__class__.__name__}: {exc}"))
    parts = _all_gather(d, (indices, local)) if d.enabled else [(indices, local)]
    for _, (status, value) in parts:
        if status == "error":
            raise value
    return [(idx, value) for idx, (_, value) in parts]


def main_first(d: Dist, fn: Callable[[], T]) -> T:
    """Calls ``fn`` on rank 0, then on the other ranks, so that files rank 0 creates
    (data, baselines, caches) are found rather than created again. An error on rank 0
    is raised on every rank."""
    if not d.enabled:
        return fn()
    result: Any = None
    error: DriftGateError | None = None
    if d.main:
        try:
            result = fn()
        except DriftGateError as exc:
            error = exc
    first = _all_gather(d, error)[0]
    if first is not None:
        raise first
    return result if d.main else fn()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient is summed over the ranks too."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks.

    PyTorch's SyncBatchNorm runs on GPUs only; this is the same idea for gloo on
    the CPU: per-channel sums and sums of squares are all-reduced (differentiably),
    so a DDP step normalises, and updates the running statistics, as a
    single-process step on the whole global batch would. In eval mode it is a plain
    BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        n_local = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats: torch.Tensor = _AllReduceSum.apply(
            torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n_local])
        )
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1))
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def global_batchnorm(module: torch.nn.Module, enable: bool = True) -> int:
    """Turns every plain ``BatchNorm2d`` of ``module`` into :class:`GlobalBatchNorm2d`
    (in place, same parameters and buffers), or back with ``enable=False``; returns
    how many were changed. Subclasses that do more than normalise are left alone."""
    src, dst = (
        (torch.nn.BatchNorm2d, GlobalBatchNorm2d) if enable else (GlobalBatchNorm2d, torch.nn.BatchNorm2d)
    )
    changed = 0
    for m in module.modules():
        if type(m) is src:
            m.__class__ = dst
            changed += 1
    return changed


def in_order(parts: Sequence[tuple[Sequence[int], Any]], get: Callable[[Any], Any]) -> Any:
    """One array (NumPy or torch) of every gathered ``(indices, result)`` part, concatenated
    and put back in the original order of the indices."""
    order = [i for idx, _ in parts for i in idx]
    pieces = [get(part) for _, part in parts]
    if isinstance(pieces[0], torch.Tensor):
        stacked: Any = torch.cat(pieces)
        out = torch.empty_like(stacked)
        out[torch.as_tensor(order)] = stacked
        return out
    stacked = np.concatenate(pieces)
    out = np.empty_like(stacked)
    out[np.asarray(order)] = stacked
    return out
