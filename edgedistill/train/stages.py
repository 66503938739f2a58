"""The ``distill`` and ``pretrain`` stages: plain functions the CLI and the pipeline call.

Each checks its run directory (``rundir.RunDir``), reads the data (bad input fails here,
before any model is built), builds its task and hands it to the one training loop.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from edgedistill.config import Config, check_pretrain_sizes
from edgedistill.errors import EdgeDistillError
from edgedistill.rundir import RunDir

__all__ = ["distill", "pretrain", "closing_knn", "seed_everything"]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_threads(cfg: Config) -> None:
    """run.threads and data.num_workers, bounded by what this machine can run (the config
    itself is machine-independent, so the bound is checked here)."""
    import torch

    from edgedistill.limits import check_count

    check_count(cfg.data.num_workers, "data.num_workers", minimum=0)
    if cfg.run.threads > 0:
        torch.set_num_threads(check_count(cfg.run.threads, "run.threads"))


def distill(cfg: Config, out: Path | None = None, *, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Train a student with AttnDistill; returns a summary (run dir, steps, final losses)."""

    from edgedistill.data.transforms import train_transform

    def build(info: Any) -> tuple[Any, dict[str, Any]]:
        from edgedistill.models.teacher import build_teacher
        from edgedistill.train.distill import DistillTask, build_student

        teacher, teacher_info = build_teacher(cfg.teacher, cfg.teacher_img_size)
        student, student_kwargs = build_student(cfg)
        grids = {"teacher_grid": _grid(teacher_info["kwargs"]), "student_grid": _grid(student_kwargs)}
        if info.is_main and console is not None:
            _announce(console, cfg, student_kwargs, grids)
        task = DistillTask(cfg, teacher, student, student_kwargs, teacher_info, info.device)
        prepared = task.prepare_targets(target_statistics_loader(cfg))
        if "projector_r2" in prepared and info.is_main and console is not None:
            console.print(f"projector: least-squares start on the student's initial features, "
                          f"R^2 {prepared['projector_r2']:.2f} on the training images")
        return task, {"teacher": teacher_info, **grids, **prepared}

    from edgedistill.data.mixing import MixSettings
    from edgedistill.models.teacher import check_teacher_source

    check_teacher_source(cfg.teacher)  # a hub teacher offline fails here, before a run directory exists

    transform = train_transform(cfg.data.img_size, cfg.data.crop_scale, cfg.data.mean, cfg.data.std, hflip=cfg.data.hflip)
    d = cfg.distill
    mix = MixSettings(d.mixup_alpha, d.cutmix_alpha, d.mix_prob)
    return _run_stage(cfg, out, resume, console, "distill", "student", transform, build, mix)


def _grid(kwargs: dict[str, Any]) -> str:
    side = int(kwargs["img_size"]) // int(kwargs["patch_size"])
    return f"{side}x{side}"


def _announce(console: Any, cfg: Config, student_kwargs: dict[str, Any], grids: dict[str, str]) -> None:
    """The choices the run made on its own, said once, before training."""
    patch, size = student_kwargs["patch_size"], student_kwargs["img_size"]
    why = "" if cfg.student.patch_size else " (student.patch_size unset: it follows the image size)"
    console.print(f"student {cfg.student.arch}: patch {patch} at {size} px, a {grids['student_grid']} grid{why}; "
                  f"teacher grid {grids['teacher_grid']}", highlight=False, soft_wrap=True)


def closing_knn(cfg: Config, run_dir: Path) -> dict[str, float]:
    """The finished student's k-NN top-1 (from ``run_dir``) and a random-init twin's (same
    architecture, ``run.seed``), when the data has a labeled validation split; ``{}`` otherwise.
    What ``edgedistill distill`` ends with (the pipeline and the ablation measure their own)."""
    from edgedistill.data import build_knn_loaders
    from edgedistill.eval.models import open_model
    from edgedistill.eval.online import online_knn
    from edgedistill.train.distill import build_student

    try:
        build_knn_loaders(cfg, batch_size=cfg.eval.batch_size)
    except EdgeDistillError:
        return {}  # unlabeled data, or no validation split: nothing to measure
    module = open_model(run_dir, device=cfg.run.device).module
    student = online_knn(module, cfg)
    seed_everything(cfg.run.seed)
    twin, _ = build_student(cfg)
    random_init = online_knn(twin.to(next(module.parameters()).device), cfg)
    if not student or not random_init:
        return {}
    return {"knn_top1": student["knn_top1"], "random_init_knn_top1": random_init["knn_top1"]}


def target_statistics_loader(cfg: Config) -> Any:
    """Up to ``distill.target_stats_images`` training images (a seeded sample), eval transform:
    what the teacher's CLS statistics and the projector's least-squares start are measured on."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from edgedistill.data import build_eval_loader, ignore_interrupts

    d = cfg.data
    full = build_eval_loader(d.path, "train", d.img_size, cfg.eval.batch_size, d.num_workers, d.mean, d.std,
                             max_bad_images=d.max_bad_images).dataset
    n = min(len(full), cfg.distill.target_stats_images)
    indices = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.run.seed))[:n].sort().values
    return DataLoader(Subset(full, indices.tolist()), batch_size=cfg.eval.batch_size, num_workers=d.num_workers,
                      worker_init_fn=ignore_interrupts)


def pretrain(cfg: Config, out: Path | None = None, *, resume: bool = False, console: Any = None) -> dict[str, Any]:
    """Pretrain a DINO teacher on (unlabeled) images; returns a summary."""

    from edgedistill.train.pretrain import DinoTask, multicrop_for

    check_pretrain_sizes(cfg)
    return _run_stage(cfg, out, resume, console, "pretrain", "teacher", multicrop_for(cfg),
                      lambda info: (DinoTask(cfg), {}))


def _run_stage(cfg: Config, out: Path | None, resume: bool, console: Any, section: str, artifact: str,
               transform: Callable[[Any], Any], build: Callable[[Any], tuple[Any, dict[str, Any]]],
               mix: Any = None) -> dict[str, Any]:
    """The shared shape of a training stage: check the run directory, read the data (bad
    input fails here, before any model is built), build the task, train, summarize."""
    import torch.distributed as dist

    from edgedistill.data import build_train_loader
    from edgedistill import distributed as distmod
    from edgedistill.train.distill import loop_settings
    from edgedistill.train.loop import train, uses_bf16

    run = RunDir.for_config(cfg, out)
    info = distmod.setup(cfg.run.device)
    held = contextlib.ExitStack()
    try:
        run.check_not_foreign()  # a user's folder is refused before a lock file is made beside it
        _hold(run, info, held)
        run.check_writable(resume, artifact)
        configure_threads(cfg)
        if not info.is_main:
            warnings.simplefilter("ignore")  # one copy of each warning, from rank 0
        if info.is_main:
            run.save_config(cfg)
        loader = build_train_loader(cfg, transform, distributed=info.distributed, seed=cfg.run.seed, mix=mix)
        seed_everything(cfg.run.seed)
        task, extra = build(info)
        knn_fn = _online_knn(cfg, info) if getattr(cfg, section).knn_every else None
        started = time.perf_counter()
        settings = loop_settings(cfg, section)
        result = train(task, loader, settings, run, info, resume=resume, knn_fn=knn_fn, console=console)
        summary = {
            "run_dir": str(run.path), "steps": result.steps, "epochs": result.epochs_done,
            "complete": not result.stopped_early, "seconds": time.perf_counter() - started,
            # the training loop's own clock (across resumes) and why it ended, for budgeted runs
            "train_seconds": result.seconds, "total_steps": result.total_steps,
            "budget_reached": result.budget_reached,
            "metrics": result.last_metrics, "world_size": info.world_size, "is_main": info.is_main,
            # how it ran, for whoever compares two runs later
            "device": str(info.device), "bf16": uses_bf16(settings.amp, info.device),
            "process_group": dist.get_backend() if dist.is_initialized() else None, **extra,
        }
        if info.is_main:
            run.write_summary(summary)
        return summary
    finally:
        held.close()
        distmod.teardown()


def _hold(run: RunDir, info: Any, held: contextlib.ExitStack) -> None:
    """Rank 0 holds the run directory until ``held`` closes (``RunDir.lock``); every rank
    fails when it cannot."""
    from edgedistill import distributed as distmod

    problem = ""
    if info.is_main:
        try:
            held.enter_context(run.lock())
        except EdgeDistillError as exc:
            problem = str(exc)
    problem = distmod.broadcast_str(problem)
    if problem:
        raise EdgeDistillError(problem)


def _online_knn(cfg: Config, info: Any) -> Callable[[Any], dict[str, float]]:
    """k-NN of the backbone on the labeled train/val splits, every ``knn_every`` epochs."""
    from edgedistill.eval.online import online_knn

    return lambda backbone: online_knn(backbone, cfg, info)
