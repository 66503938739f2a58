"""The training loop's clocks: the seconds a ``max_seconds`` budget counts (wall-clock or CPU
seconds, evaluation paused out, kept across resumes) and the images/s between two records."""

from __future__ import annotations

import contextlib
import time

import torch

from edgedistill import distributed as distmod

__all__ = ["cpu_seconds", "TrainingClock", "Throughput"]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its children (the data loader's workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, and the children already waited for
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # a worker that just exited
            pass
    return total


class TrainingClock:
    """Seconds of training so far, across resumes: wall-clock, or CPU seconds (``cpu``: what a
    budget should count when other jobs share the machine). Online k-NN is evaluation, not
    training: its time is left out, so ``knn_every`` does not eat into a ``max_seconds`` budget."""

    def __init__(self, before: float = 0.0, kind: str = "wall"):
        self.now = cpu_seconds if kind == "cpu" else time.perf_counter
        self.before = before
        self.started = self.now()
        self.paused = 0.0

    def seconds(self) -> float:
        return self.before + self.now() - self.started - self.paused

    def over_budget(self, max_seconds: float, device: torch.device) -> bool:
        """Past ``max_seconds`` (0 = no budget) on any rank: the first rank over budget stops them
        all, since ranks that disagreed would deadlock in all-reduce."""
        return bool(max_seconds) and not distmod.all_true(self.seconds() < max_seconds, device)

    @contextlib.contextmanager
    def pause(self):
        began = self.now()
        try:
            yield
        finally:
            self.paused += self.now() - began


class Throughput:
    """Images per second since the last reading."""

    def __init__(self) -> None:
        self.images, self.since = 0, time.perf_counter()

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.since, 1e-9)
        self.images, self.since = 0, now
        return rate
