"""torch.distributed in one place: ``torchrun`` set-up (gloo on CPU, NCCL on GPU), the
collectives training and evaluation share, and putting rank shards back in dataset order.

Training and evaluation both import from here (and nothing here imports either), so the
two packages do not depend on each other. Outside ``torchrun`` every helper is a no-op that
returns what one process would.
"""

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
    from edgedistill.limits import check_device
    from edgedistill.errors import EdgeDistillError

    name = check_device(name, "device")
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


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device() -> torch.device:
    """Where collectives want their tensors: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_features(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather (N_r, D) features and (N_r,) labels from every rank, in rank order.

    Ranks may hold different counts (padded to the largest for the collective, then trimmed).
    Without an initialized process group this returns its inputs. With NCCL the tensors must
    be on the rank's GPU; with gloo on CPU.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features, labels
    world = dist.get_world_size()
    device = features.device
    labels = labels.to(device, torch.long).reshape(-1)
    count = torch.tensor([features.shape[0]], device=device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    pad = max(sizes) - features.shape[0]
    feats = torch.cat([features, features.new_zeros((pad, *features.shape[1:]))]).contiguous()
    labs = torch.cat([labels, labels.new_full((pad,), -1)]).contiguous()
    all_feats = [torch.empty_like(feats) for _ in range(world)]
    all_labs = [torch.empty_like(labs) for _ in range(world)]
    dist.all_gather(all_feats, feats)
    dist.all_gather(all_labs, labs)
    return (torch.cat([f[:n] for f, n in zip(all_feats, sizes)]),
            torch.cat([lab[:n] for lab, n in zip(all_labs, sizes)]))


def shard_indices(n: int) -> list[int]:
    """This rank's share of a dataset of ``n`` items: ``indices[rank::world]``."""
    rank, world = rank_world()
    return list(range(rank, n, world))


def dataset_order(n: int, world: int) -> torch.Tensor:
    """Where item i of a dataset sits in the rank-ordered all-gather of ``indices[rank::world]``
    shards; ``gathered[dataset_order(n, world)]`` restores dataset order."""
    gathered = torch.cat([torch.arange(r, n, world) for r in range(world)])
    order = torch.empty(n, dtype=torch.long)
    order[gathered] = torch.arange(n)
    return order


def gather_in_order(feats: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather ``indices[rank::world]`` shards (CPU tensors) back into dataset order, on CPU."""
    _, world = rank_world()
    if world == 1:
        return feats, labels
    comm = comm_device()
    feats, labels = gather_features(feats.to(comm), labels.to(comm))
    order = dataset_order(n, world).to(feats.device)
    return feats[order].cpu(), labels[order].cpu()


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def max_across_ranks(values: list[float]) -> list[float]:
    """Element-wise maximum over ranks (float64)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [float(v) for v in t.cpu()]
