"""The one training loop that ``distill`` and ``pretrain`` share.

A stage supplies a ``Task``: the trainable module (wrapped in DDP here), a loss on a batch,
and hooks for what differs (DINO's EMA teacher, last-layer freezing). Everything else lives
here once: optimizer and schedules, gradient accumulation, mixed precision, DDP, atomic
checkpoints and resume (``checkpoint.py``), non-finite-loss stops, progress and metrics.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from edgedistill import distributed as distmod
from edgedistill.errors import EdgeDistillError
from edgedistill.progress import StepProgress
from edgedistill.rundir import RunDir
from edgedistill.train.checkpoint import before_first_step, load_checkpoint, save_checkpoint
from edgedistill.train.clock import Throughput, TrainingClock
from edgedistill.train.schedule import cosine, param_groups, warmup_cosine
from edgedistill.utils import append_jsonl


@dataclass
class LoopSettings:
    """What the loop needs from a stage's config section (distill.* or pretrain.*)."""

    epochs: int
    batch_size: int  # per process
    effective_batch: int  # 0 = batch_size x world size
    blr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay_end: float | None = None  # cosine weight-decay schedule when set (DINO)
    clip_grad: float = 0.0
    amp: str = "auto"
    compile: bool = False
    checkpoint_every: int = 1
    log_every: int = 10
    max_steps: int = 0
    knn_every: float = 0.0  # epochs between online k-NN measurements (fractions allowed); 0 = off
    seed: int = 0
    num_workers: int = 2
    total_steps: int = 0  # the schedule's length; 0 = epochs x steps per epoch
    max_seconds: float = 0.0  # training budget in budget_clock seconds; the run ends (outputs saved) there
    budget_clock: str = "wall"  # wall | cpu (this process and its data workers: fair on a shared machine)


class Task:
    """What a training stage plugs into the loop."""

    name = "train"
    trainable: nn.Module  # everything the optimizer updates; DDP wraps it
    # Budget-clock seconds spent preparing before the loop (distill's target pass): a fresh run's
    # clock starts there, so a max_seconds budget counts them too.
    setup_seconds: float = 0.0

    def loss(self, model: nn.Module, images: Any, epoch: int) -> dict[str, torch.Tensor]:
        """``model`` is ``trainable`` (maybe DDP-wrapped). Returns "loss" plus named parts."""
        raise NotImplementedError

    def before_optimizer_step(self, epoch: int) -> None:
        """Gradients are ready (and unscaled, clipped): e.g. cancel frozen layers' grads."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """E.g. the EMA teacher update."""

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def backbone(self) -> nn.Module:
        """The network whose CLS feature is evaluated (online k-NN) and saved."""
        raise NotImplementedError

    def save_outputs(self, run_dir: Path) -> None:
        """Write the stage's final artifacts (the backbone pair)."""
        raise NotImplementedError


@dataclass
class LoopResult:
    steps: int
    epochs_done: int
    stopped_early: bool  # by max_steps, before the end: no outputs written
    last_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # training wall-clock, across resumes (online k-NN left out)
    budget_reached: bool = False  # ended by max_seconds, outputs written
    total_steps: int = 0


def _batch_size_of(images: Any) -> int:
    return (images[0] if isinstance(images, (list, tuple)) else images).shape[0]


def _to_device(images: Any, device: torch.device) -> Any:
    if isinstance(images, (list, tuple)):
        return [x.to(device, non_blocking=True) for x in images]
    return images.to(device, non_blocking=True)


def uses_bf16(amp: str, device: torch.device) -> bool:
    """``auto`` = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX): there it runs
    the distill step 1.7x faster than fp32; elsewhere bf16 is emulated and slower."""
    from edgedistill.utils import cpu_has_native_bf16

    if amp == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return amp == "bf16"


def autocast_for(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast where ``uses_bf16``; bf16 needs no loss scaler."""
    if not uses_bf16(amp, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def accumulation_steps(settings: LoopSettings, world_size: int) -> tuple[int, int]:
    """(accumulation steps, effective batch). An effective batch that the per-process batch
    and world size cannot reach exactly is an error, never a silent override."""
    per_step = settings.batch_size * world_size
    effective = settings.effective_batch or per_step
    if effective % per_step:
        raise EdgeDistillError(
            f"effective batch {effective} is not a multiple of batch_size x processes = "
            f"{settings.batch_size} x {world_size} = {per_step}"
        )
    return effective // per_step, effective


def train(
    task: Task,
    loader: DataLoader,
    settings: LoopSettings,
    run: RunDir,
    info: distmod.DistInfo,
    *,
    resume: bool = False,
    knn_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    console: Any = None,
) -> LoopResult:
    """Train ``task`` on ``loader`` (from ``data.build_train_loader``: its sampler makes the
    order a function of (seed, epoch) and each augmentation a function of (seed, epoch,
    index), so resumed and multi-process runs see exactly the images a single run sees)."""
    device = info.device
    plan = _plan(settings, loader, info.world_size)
    sampler = loader.sampler
    trainable = task.trainable.to(device)
    optimizer = torch.optim.AdamW(param_groups(trainable, settings.weight_decay), lr=plan.base_lr, betas=settings.betas)
    model = _wrap(trainable, task, settings, info)
    checkpoint_path = run.checkpoint
    step, seconds_before = (load_checkpoint(checkpoint_path, trainable, optimizer, task, device) if resume
                            else (0, task.setup_seconds))
    start_epoch, start_batch = divmod(step, plan.steps_per_epoch)
    start_batch *= plan.accum  # in micro-batches
    before_first_step(run, settings, info, trainable, optimizer, step if resume else None, plan.stop_at,
                      plan.total_steps)
    if resume and info.is_main and console is not None:
        console.print(f"resumed from {checkpoint_path} at step {step}/{plan.total_steps}")
    saved_step = step if resume else -1
    clock = TrainingClock(seconds_before, settings.budget_clock)

    def save() -> None:
        nonlocal saved_step
        saved_step = step
        if info.is_main:
            save_checkpoint(checkpoint_path, trainable, optimizer, task, step, plan.steps_per_epoch, plan.total_steps,
                            device, clock.seconds())

    metrics_path = run.metrics
    progress = StepProgress(info.is_main, console, plan.total_steps, step, task.name)
    last: dict[str, float] = {}
    budget_reached = clock.over_budget(settings.max_seconds, device)
    window = Throughput()

    try:
        for epoch in range(start_epoch, plan.epochs):
            if step >= plan.stop_at or budget_reached:
                break
            first = start_batch if epoch == start_epoch else 0  # micro-batches already done (resume)
            sampler.set_epoch(epoch, first * settings.batch_size)  # type: ignore[attr-defined]
            trainable.train()
            micro = 0
            for images, _ in loader:
                if first + micro >= plan.steps_per_epoch * plan.accum:
                    break  # a remainder too small for a whole optimizer step
                images = _to_device(images, device)
                is_last_micro = (micro + 1) % plan.accum == 0

                lr = _schedule(optimizer, settings, step, plan.total_steps, plan.warmup_steps, plan.base_lr)

                parts = _backward(task, model, images, epoch, step, plan.accum, settings.amp, device,
                                  sync=is_last_micro or not info.distributed, checkpoint=checkpoint_path)
                micro += 1
                window.add(_batch_size_of(images) * info.world_size)
                if not is_last_micro:
                    continue

                step = _optimizer_step(task, trainable, optimizer, settings.clip_grad, epoch, step, plan.total_steps)

                last = {k: float(v.detach()) for k, v in parts.items()}
                last["lr"] = lr
                budget_reached = clock.over_budget(settings.max_seconds, device)
                if step % settings.log_every == 0 or step in (plan.stop_at, plan.total_steps) or budget_reached:
                    _log_step(last, window, clock, step, epoch, metrics_path if info.is_main else None)
                progress.update(step, last)
                if knn_fn is not None and plan.knn_steps and step % plan.knn_steps == 0:
                    last.update(_online_knn(knn_fn, task, clock, step, step / plan.steps_per_epoch, info.is_main,
                                            metrics_path, progress))
                if step >= plan.stop_at or budget_reached:
                    break

            if _checkpoint_due(step, plan, settings.checkpoint_every):
                save()
            if step >= plan.stop_at or budget_reached:
                break
        if saved_step != step:
            save()  # stopped by max_steps between scheduled checkpoints: keep the place
    finally:
        progress.close()

    if (step >= plan.total_steps or budget_reached) and info.is_main:
        task.save_outputs(run.path)
    return LoopResult(step, step // plan.steps_per_epoch, step < plan.total_steps and not budget_reached, last,
                      seconds=clock.seconds(), budget_reached=budget_reached, total_steps=plan.total_steps)


def _log_step(last: dict[str, float], window: Throughput, clock: TrainingClock, step: int, epoch: int,
              metrics_path: Path | None) -> None:
    """Add the images/s since the last record to ``last`` and append the step's record (the main
    process only: ``metrics_path`` None elsewhere)."""
    last["img_s"] = window.rate()
    if metrics_path is not None:
        append_jsonl(metrics_path, {"step": step, "epoch": epoch, **last, "train_seconds": round(clock.seconds(), 3)})


def _checkpoint_due(step: int, plan: _Plan, checkpoint_every: int) -> bool:
    """At the end of an epoch: every ``checkpoint_every`` epochs, and at the end of the schedule."""
    if step == 0 or step % plan.steps_per_epoch:
        return False
    return (step // plan.steps_per_epoch) % checkpoint_every == 0 or step >= plan.total_steps


def _backward(task: Task, model: nn.Module, images: Any, epoch: int, step: int, accum: int, amp: str,
              device: torch.device, *, sync: bool, checkpoint: Path) -> dict[str, torch.Tensor]:
    """One micro-batch: the loss under autocast, checked finite, its gradient accumulated.
    DDP all-reduces gradients only on the micro-batch that completes a step (``sync``)."""
    with contextlib.nullcontext() if sync else model.no_sync():
        with autocast_for(amp, device):
            parts = task.loss(model, images, epoch)
        _check_finite(parts, step, epoch, checkpoint, device)
        (parts["loss"] / accum).backward()
    return parts


def _optimizer_step(task: Task, trainable: nn.Module, optimizer: torch.optim.Optimizer, clip_grad: float,
                    epoch: int, step: int, total_steps: int) -> int:
    """Clip, step and clear the gradients, with the task's hooks around the update (DINO's
    last-layer freeze before it, the EMA teacher after it); returns the new step count."""
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), clip_grad)
    task.before_optimizer_step(epoch)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    task.after_optimizer_step(step + 1, total_steps)
    return step + 1


def _online_knn(knn_fn: Callable[[nn.Module], dict[str, float]], task: Task, clock: TrainingClock, step: int, epoch: float,
                is_main: bool, metrics_path: Path, progress: StepProgress) -> dict[str, float]:
    """The online k-NN every ``knn_every`` epochs, off the training clock; logged and shown."""
    with clock.pause():
        scores = knn_fn(task.backbone())  # {} when the data has no labels
    if scores and is_main:
        append_jsonl(metrics_path, {"step": step, "epoch": round(epoch, 4), "train_seconds": round(clock.seconds(), 3),
                                    **scores})
        progress.note(" ".join(f"{k}={v:.2f}" for k, v in scores.items()))
    return scores


@dataclass(frozen=True)
class _Plan:
    """The run's shape in optimizer steps and its peak learning rate: fixed by the settings,
    the loader and the world size before the first step (a resume recomputes the same)."""

    accum: int  # micro-batches per optimizer step
    steps_per_epoch: int
    total_steps: int  # the schedule's length: warmup + cosine end there
    epochs: int  # the last one may be partial (total_steps)
    stop_at: int  # max_steps ends the run early, before the schedule's end (no outputs)
    warmup_steps: int
    base_lr: float  # the linear scaling rule: blr x effective batch / 256
    knn_steps: int  # optimizer steps between online k-NN measurements (0 = off)


def _plan(settings: LoopSettings, loader: DataLoader, world_size: int) -> _Plan:
    accum, effective_batch = accumulation_steps(settings, world_size)
    steps_per_epoch = len(loader) // accum
    if steps_per_epoch < 1:
        raise EdgeDistillError(
            f"one optimizer step needs {effective_batch} images but each process has {len(loader.sampler)}"  # type: ignore[arg-type]
        )
    total_steps = settings.total_steps or settings.epochs * steps_per_epoch
    warmup_steps = int(round(settings.warmup_epochs * steps_per_epoch))
    if warmup_steps >= total_steps > 1:  # the learning rate would never reach its peak
        clamped = max(1, total_steps // 10)
        warnings.warn(f"warmup_epochs {settings.warmup_epochs:g} ({warmup_steps} steps) is longer than the run "
                      f"({total_steps} steps): warmup clamped to {clamped} step{'s' if clamped > 1 else ''} "
                      "(a tenth of the run, at least one), so the learning rate peaks within it",
                      UserWarning, stacklevel=2)
        warmup_steps = clamped
    return _Plan(
        accum=accum,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=-(-total_steps // steps_per_epoch),
        stop_at=min(settings.max_steps, total_steps) if settings.max_steps else total_steps,
        warmup_steps=warmup_steps,
        base_lr=settings.blr * effective_batch / 256,
        knn_steps=max(1, round(settings.knn_every * steps_per_epoch)) if settings.knn_every else 0,
    )


def _check_finite(parts: dict[str, torch.Tensor], step: int, epoch: int, checkpoint: Path,
                  device: torch.device) -> None:
    """Stop on a non-finite loss, naming its parts and the checkpoint to resume from. Every rank
    must agree before anyone stops: a rank that skipped a batch alone would leave the others
    waiting in all-reduce forever."""
    if not distmod.all_true(bool(torch.isfinite(parts["loss"].detach()).item()), device):
        detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
        raise EdgeDistillError(
            f"non-finite loss at step {step} (epoch {epoch}): {detail}; "
            f"last good checkpoint: {checkpoint if checkpoint.exists() else 'none yet'}"
        )


def _wrap(trainable: nn.Module, task: Task, settings: LoopSettings, info: distmod.DistInfo) -> nn.Module:
    """DDP around the trainable part only (a distillation teacher stays outside), then compile."""
    model: nn.Module = trainable
    if info.distributed:
        device = info.device
        model = DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False),
        )
    if settings.compile:
        model = torch.compile(model)
    return model


def _schedule(optimizer: torch.optim.Optimizer, settings: LoopSettings, step: int, total_steps: int,
              warmup_steps: int, base_lr: float) -> float:
    """Set this optimizer step's learning rate (and DINO's weight decay); returns the lr."""
    lr = warmup_cosine(step, total_steps, warmup_steps, base_lr, settings.min_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if settings.weight_decay_end is not None:
        optimizer.param_groups[0]["weight_decay"] = cosine(step, total_steps, settings.weight_decay,
                                                           settings.weight_decay_end)
    return lr
