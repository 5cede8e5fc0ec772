"""torch.distributed helpers: the same code runs alone or under torchrun (nccl on GPU, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks this process's GPU when there is one, else the CPU."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device = {preference!r} but no CUDA device is visible; use 'cpu' or 'auto'")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_preference: str = "auto") -> Context:
    """Join the process group torchrun describes in the environment, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def synchronised_batchnorm(model: torch.nn.Module, device: torch.device, world_size: int) -> torch.nn.Module:
    """``model`` with every BatchNorm a `torch.nn.SyncBatchNorm` (statistics over all processes) when there
    are several; alone it is returned as it is. torch computes SyncBatchNorm's statistics only on a GPU, so
    several CPU processes are refused: there `train.freeze_batchnorm` is the way to identical runs."""
    if world_size == 1:
        return model
    if device.type != "cuda":
        raise ValueError(f"train.sync_batchnorm needs CUDA: torch has no CPU SyncBatchNorm, and this run has "
                         f"{world_size} processes on {device.type}. Set train.sync_batchnorm=false (each process "
                         "then normalises by its own batch) or train.freeze_batchnorm=true (every BatchNorm in "
                         "eval mode: the runs equal one process)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def rank() -> int:
    """This process's rank (0 when alone)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 when alone)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process; the one that prints progress and writes files."""
    return rank() == 0


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every rank's list on every rank (a plain list when running alone)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(items)
    gathered: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging only; metrics are gathered exactly)."""
    value = value.detach()
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank raised the flag (stop requests, non-finite losses)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def global_count(local_count: int | float | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """The sum over every process of a count (float64 tensor, same shape; the count itself when alone).

    The counts a loss divides by (samples, labelled objects) are summed here, so a loss can be normalised
    by the count of the global batch rather than of this process's share (DETR does this for its boxes).
    """
    count = torch.as_tensor(local_count, dtype=torch.float64,
                            device=device if device is not None else getattr(local_count, "device", None))
    if dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
    return count


def count_share(local_count: int | float | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """`global_count` divided by the number of processes: the divisor of a process's loss sum that makes the
    mean of the processes' losses (which DDP's gradient averaging takes) the mean over the global batch.

    Alone it is the local count, so a loss divided by it is the ordinary mean. A process whose share of the
    batch is empty (all its labels ignored) still contributes a zero sum, and every count stays positive as
    long as one process holds one item.
    """
    return global_count(local_count, device) / world_size()


def count_shares(local_counts: Mapping[str, int | float | torch.Tensor],
                 device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """`count_share` of several named counts at once, in one all-reduce: the counts are laid end to end in
    one float64 tensor, summed over the processes and cut back into their names and shapes."""
    counts = {name: torch.as_tensor(count, dtype=torch.float64, device=device)
              for name, count in local_counts.items()}
    packed = count_share(torch.cat([count.reshape(-1) for count in counts.values()]), device)
    pieces = packed.split([count.numel() for count in counts.values()])
    return {name: piece.reshape(count.shape) for (name, count), piece in zip(counts.items(), pieces)}
