"""What an input may ask and what this machine can hold: image sizes, torch device names,
thread and worker counts, batch sizes against the memory available. Torch-free, importing
only ``errors`` and ``utils``: the runtime, the config and every command check numbers here.

Machine-independent bounds (image sizes, device names) are checked in the config; those that
depend on the machine (threads, workers, memory) where the number is used, so that a run's
config stays valid on another machine."""

from __future__ import annotations

import os
import re
from typing import Any

from edgedistill.errors import EdgeDistillError
from edgedistill.utils import human_bytes

__all__ = ["MAX_IMAGE_SIDE", "THREADS_PER_CPU", "check_device", "usable_cpus", "max_threads", "check_count",
           "image_memory", "available_memory", "check_batch_memory"]


def usable_cpus() -> int:
    """Logical CPUs this process may run on (affinity / cgroup cpusets respected)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


_TORCH_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(name: str, what: str = "run.device") -> str:
    """A torch device name: auto, cpu, cuda or cuda:N (anything else would silently mean cpu)."""
    if not isinstance(name, str) or not _TORCH_DEVICE.match(name.strip().lower()):
        raise EdgeDistillError(f"{what} must be auto, cpu, cuda or cuda:N, got '{name}'")
    return name.strip().lower()


THREADS_PER_CPU = 2  # oversubscription beyond this never helps and has brought machines down


def max_threads() -> int:
    """The most threads (or worker processes) one option may ask for on this machine."""
    return THREADS_PER_CPU * usable_cpus()


def check_count(value: Any, option: str, minimum: int = 1, cpus: int | None = None,
                where: str = "this machine") -> int:
    """A thread or worker count, between ``minimum`` and :func:`max_threads` (of ``where``
    with ``cpus`` usable CPUs, when it is another machine)."""
    try:
        if isinstance(value, bool) or int(value) != float(value):
            raise ValueError(value)
        value = int(value)
    except (TypeError, ValueError):
        raise EdgeDistillError(f"{option} must be an integer, got {value!r}") from None
    if value < minimum:
        raise EdgeDistillError(f"{option} must be >= {minimum}, got {value}")
    cpus = usable_cpus() if cpus is None else max(int(cpus), 1)
    if value > THREADS_PER_CPU * cpus:
        raise EdgeDistillError(f"{option} {value} is more than {where} can use: at most {THREADS_PER_CPU * cpus} "
                     f"({THREADS_PER_CPU} x the {cpus} CPUs this process may run on)")
    return value


MAX_IMAGE_SIDE = 4096  # model input side, px: a ViT at 4096/16 = 256^2 tokens is already far past useful


def image_memory(height: int, width: int) -> int:
    """A rough lower bound of the working memory one image takes in a ViT forward pass: its
    float32 input a few times over plus the per-token activations (a ViT-Tiny's MLP)."""
    return 4 * 3 * int(height) * int(width) * 4 + (256 << 10)


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil, a dependency)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_batch_memory(batch: int, per_image: int, option: str, copies: int = 1, available: int | None = None,
                       where: str = "this machine") -> None:
    """Refuse a batch size whose working memory (``per_image`` bytes per image, ``copies``
    processes holding it at once) exceeds the memory available now (here, or ``available``
    on ``where``), naming the largest batch that fits."""
    available = available_memory() if available is None else int(available)
    copies = max(int(copies), 1)
    need = int(batch) * int(per_image) * copies
    if need > available:
        fits = available // (int(per_image) * copies)
        held = f", {copies} processes holding it at once" if copies > 1 else ""
        raise EdgeDistillError(f"{option} {batch} needs about {human_bytes(need)} of memory{held}; {where} has "
                     f"{human_bytes(available)} available: at most {fits} fits")
