"""torch.distributed set-up for ``torchrun``: gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launched: bool = False  # started by torchrun (even with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.launched


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    from edgedistill.errors import EdgeDistillError

    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EdgeDistillError(f"run.device={name} but CUDA is not available here (use run.device=cpu)")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    return torch.device("cpu")


def setup(device_name: str = "auto") -> DistInfo:
    """Initialize the process group when launched by torchrun.

    One torchrun process still gets a process group and DDP: ``--nproc_per_node=1`` then runs
    the multi-GPU code path (NCCL, DDP, sharded sampler) on a machine with one GPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                    local_rank=local_rank, device=resolve_device(device_name, local_rank),
                    launched="TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ)
    if info.distributed and not dist.is_initialized():
        if info.device.type == "cuda":
            torch.cuda.set_device(info.device)
        dist.init_process_group(backend="nccl" if info.device.type == "cuda" else "gloo")
    return info


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only when ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def broadcast_str(text: str) -> str:
    if not dist.is_initialized():
        return text
    holder = [text]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
