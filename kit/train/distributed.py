"""Process-group setup for data-parallel training launched with torchrun; a no-op otherwise.

One code path: the loop always calls :func:`setup_distributed`. Launched by
``python -m torch.distributed.run --nproc_per_node N ...`` (torchrun), it reads RANK / WORLD_SIZE /
LOCAL_RANK, joins the process group (nccl on CUDA, gloo on CPU) and pins the CUDA device;
launched as a plain ``python`` process it returns rank 0 of 1 and touches nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from kit.devices import resolve_device

__all__ = ["resolve_device", "setup_distributed", "is_main", "rank_and_world", "cleanup"]


def setup_distributed(device: str = "auto") -> tuple[int, int, int, torch.device]:
    """Join the torchrun process group if this process was launched by torchrun.

    Idempotent: a process group that already exists (set up here or by the caller) is reused.

    Args:
        device: 'auto' | 'cpu' | 'cuda', see :func:`resolve_device`.

    Returns:
        (rank, world_size, local_rank, device); (0, 1, 0, device) outside torchrun.

    Example:
        >>> rank, world_size, local_rank, device = setup_distributed("cpu")  # plain python: no-op
        >>> (rank, world_size)
        (0, 1)
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0)) if launched else 0
    torch_device = resolve_device(device, local_rank)
    if not launched and not dist.is_initialized():
        return 0, 1, 0, torch_device
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)  # before init: nccl binds each rank to its own GPU
    if not dist.is_initialized():
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        # device_id lets nccl connect eagerly to the right GPU; gloo takes none.
        extra = {"device_id": torch_device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **extra)
    return dist.get_rank(), dist.get_world_size(), local_rank, torch_device


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script); no-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
