"""The config's checks: an impossible value is rejected with a message naming its key, before
any work starts. ``build_config`` and ``config_from_dict`` run ``validate`` on every config
they make; ``from edgedistill.config import validate`` is the public name.

Machine-independent: a run's config must stay readable elsewhere; what this machine can hold
(threads, workers) is checked where it is used (``edgedistill.limits``). Torch-free, like the
rest of the config.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from edgedistill.errors import EdgeDistillError
from edgedistill.limits import MAX_IMAGE_SIDE, check_device
from edgedistill.runtime import registry

if TYPE_CHECKING:  # the package imports this module
    from edgedistill.config import Config

__all__ = ["validate", "check_pretrain_sizes", "auto_local_crop_size", "patch_size_in_name"]

STAGES = ("pretrain", "distill", "eval", "export", "bench")  # pipeline.stages, in their order


def validate(cfg: Config) -> None:
    """Reject impossible values with a message naming the key. Machine-independent: a run's
    config must stay readable elsewhere; what this machine can hold (threads, workers) is
    checked where it is used."""
    _check_run_and_data(cfg)
    _check_models(cfg)
    _check_training(cfg)
    _check_pretrain(cfg)
    _check_distill(cfg)
    _check_eval_and_export(cfg)
    _check_pipeline_and_bench(cfg)
    check_device(cfg.run.device, "run.device")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise EdgeDistillError(message)


def _check_run_and_data(cfg: Config) -> None:
    d = cfg.data
    _need(cfg.run.threads >= 0, f"run.threads must be >= 0 (0 = torch's default), got {cfg.run.threads}")
    _need(8 <= d.img_size <= MAX_IMAGE_SIDE, f"data.img_size must be at least 8 and at most {MAX_IMAGE_SIDE}, got {d.img_size}")
    _need(d.batch_size >= 1, f"data.batch_size must be positive, got {d.batch_size}")
    _need(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    _need(0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, f"data.crop_scale must satisfy 0 < lo <= hi <= 1, got {d.crop_scale}")
    _need(d.max_bad_images >= 0, "data.max_bad_images must be >= 0")
    _need(all(s > 0 for s in d.std), "data.std must be positive")


def _check_models(cfg: Config) -> None:
    """teacher.* and student.*: sizes, and a patch size that divides the image."""
    for section in ("teacher", "student"):
        sub = getattr(cfg, section)
        _need(0 <= sub.img_size <= MAX_IMAGE_SIDE, f"{section}.img_size must be between 0 and {MAX_IMAGE_SIDE}, "
                                                   f"got {sub.img_size}")
        _need(sub.patch_size >= 0, f"{section}.patch_size must be >= 0")
        _need(sub.depth >= 0, f"{section}.depth must be >= 0")
        size = sub.img_size or cfg.data.img_size
        if sub.patch_size:
            _need(size % sub.patch_size == 0, f"{section}.patch_size {sub.patch_size} does not divide the image size {size}")
    _need(cfg.student.reg_tokens >= 0, f"student.reg_tokens must be >= 0, got {cfg.student.reg_tokens}")


def _check_training(cfg: Config) -> None:
    """What the loop reads from distill.* and pretrain.* alike (``train.loop.LoopSettings``)."""
    for name in ("distill", "pretrain"):
        sec = getattr(cfg, name)
        _need(sec.epochs >= 1, f"{name}.epochs must be >= 1, got {sec.epochs}")
        _need(sec.effective_batch >= 0, f"{name}.effective_batch must be >= 0")
        _need(sec.blr > 0, f"{name}.blr must be positive")
        _need(sec.min_lr >= 0 and sec.weight_decay >= 0 and sec.clip_grad >= 0,
              f"{name}.min_lr, weight_decay and clip_grad must be >= 0")
        _need(sec.warmup_epochs >= 0, f"{name}.warmup_epochs must be >= 0")
        _need(sec.amp in ("auto", "bf16", "off"), f"{name}.amp must be auto, bf16 or off, got '{sec.amp}'")
        _need(sec.max_steps >= 0, f"{name}.max_steps must be >= 0")
        _need(sec.checkpoint_every >= 1, f"{name}.checkpoint_every must be >= 1")
        _need(sec.log_every >= 1, f"{name}.log_every must be >= 1 (optimizer steps), got {sec.log_every}")
        _need(sec.knn_every >= 0, f"{name}.knn_every must be >= 0 (epochs; 0 = off), got {sec.knn_every}")
        _need(sec.total_steps >= 0, f"{name}.total_steps must be >= 0 (0 = epochs x steps per epoch), got {sec.total_steps}")
        _need(sec.max_seconds >= 0, f"{name}.max_seconds must be >= 0 (0 = no budget), got {sec.max_seconds}")
        _need(sec.budget_clock in ("wall", "cpu"), f"{name}.budget_clock must be wall or cpu, got '{sec.budget_clock}'")


def patch_size_in_name(arch: str) -> int:
    """The patch size an architecture's name states (16 for ``vit_tiny_patch16_224``); 0 when
    it states none."""
    match = re.search(r"patch(\d+)", arch)
    return int(match.group(1)) if match else 0


def auto_local_crop_size(img_size: int, patch: int) -> int:
    """``pretrain.local_crop_size: 0``: DINO's 96/224 of the image, rounded to a multiple of the
    patch size (DINOv2's 98 at patch 14), at least 8 px."""
    return max(round(img_size * 96 / 224 / patch) * patch, -(-8 // patch) * patch)


def check_pretrain_sizes(cfg: Config) -> None:
    """Every crop pretraining makes (global: ``data.img_size``; local: ``local_crop_size``) is
    a multiple of the patch size. Checked where pretraining starts, not in ``validate``: a
    config that only distills need not fit a teacher it never pretrains."""
    p = cfg.pretrain
    patch = p.patch_size or patch_size_in_name(p.arch)
    if not patch:  # a name without its patch size: the model's own check reports it
        return
    source = f"pretrain.patch_size {patch}" if p.patch_size else f"patch size {patch} (pretrain.arch {p.arch})"
    size = cfg.data.img_size
    _need(size % patch == 0, f"data.img_size {size} (pretraining's global crops) is not a multiple of the {source}: "
                             f"set pretrain.patch_size to a divisor of {size}, or data.img_size to a multiple of {patch}")
    if p.local_crops and p.local_crop_size:
        local = p.local_crop_size
        _need(local % patch == 0, f"pretrain.local_crop_size {local} is not a multiple of the {source}: "
                                  f"set pretrain.local_crop_size to a multiple of {patch} (0 picks one), "
                                  f"pretrain.patch_size to a divisor of {local}, or pretrain.local_crops=0")


def _check_pretrain(cfg: Config) -> None:
    """DINO's own settings (and both drop-path rates)."""
    p = cfg.pretrain
    _need(p.out_dim >= 1, f"pretrain.out_dim must be >= 1, got {p.out_dim}")
    _need(p.local_crops >= 0, f"pretrain.local_crops must be >= 0, got {p.local_crops}")
    _need(p.teacher_temp > 0 and p.warmup_teacher_temp > 0 and p.student_temp > 0,
          "pretrain.teacher_temp, warmup_teacher_temp and student_temp must be positive")
    _need(0 <= p.momentum_teacher <= 1, f"pretrain.momentum_teacher must be in [0, 1], got {p.momentum_teacher}")
    _need(0 <= p.center_momentum < 1, f"pretrain.center_momentum must be in [0, 1), got {p.center_momentum}")
    _need(p.freeze_last_layer >= 0, f"pretrain.freeze_last_layer must be >= 0, got {p.freeze_last_layer}")
    _need(0 <= cfg.student.drop_path_rate < 1 and 0 <= p.drop_path_rate < 1, "drop_path_rate must be in [0, 1)")


def _check_distill(cfg: Config) -> None:
    """The distillation losses and the student's attention."""
    k = cfg.distill
    _need(all(0 <= b < 1 for b in k.betas), f"distill.betas must be in [0, 1), got {k.betas}")
    _need(k.w_cls >= 0 and k.w_attn >= 0 and k.w_patch >= 0 and k.w_cls + k.w_attn + k.w_patch > 0,
          "distill.w_cls, distill.w_attn and distill.w_patch must be >= 0 and not all 0")
    _need(k.patch_loss in ("cosine", "smooth_l1"), f"distill.patch_loss must be cosine or smooth_l1, got '{k.patch_loss}'")
    _need(k.temperature > 0, "distill.temperature must be positive")
    _need(k.cls_target in ("raw", "standardized"), f"distill.cls_target must be raw or standardized, got '{k.cls_target}'")
    _need(k.mixup_alpha >= 0 and k.cutmix_alpha >= 0,
          f"distill.mixup_alpha and distill.cutmix_alpha must be >= 0, got {k.mixup_alpha} and {k.cutmix_alpha}")
    _need(0 <= k.mix_prob <= 1, f"distill.mix_prob must be in [0, 1], got {k.mix_prob}")
    _need(k.projector_init in ("random", "least_squares"),
          f"distill.projector_init must be random or least_squares, got '{k.projector_init}'")
    _need(k.target_stats_images >= 2, f"distill.target_stats_images must be >= 2, got {k.target_stats_images}")
    _need(k.aggregate_heads in ("auto", "always", "never"), f"distill.aggregate_heads must be auto, always or never, got '{k.aggregate_heads}'")
    _need(k.projector_depth >= 0, "distill.projector_depth must be >= 0")
    _need(k.attention in ("auto", "fused", "explicit"), f"distill.attention must be auto, fused or explicit, got '{k.attention}'")


def _check_eval_and_export(cfg: Config) -> None:
    from edgedistill.config import INT8_HINTS  # at call time: the package is loaded by then

    _need(all(b_ > 0 for b_ in cfg.eval.k), "eval.k values must be positive")
    _need(cfg.export.int8_recovery_attempts >= 0, "export.int8_recovery_attempts must be >= 0")
    _need(float(cfg.export.int8_recovery_seconds) > 0, "export.int8_recovery_seconds must be > 0 (.inf: no bound)")
    _need(cfg.eval.temperature > 0, f"eval.temperature must be > 0, got {cfg.eval.temperature}")
    _need(cfg.eval.batch_size >= 1 and cfg.eval.chunk_size >= 1, "eval.batch_size and eval.chunk_size must be >= 1")
    e = cfg.export
    _need(e.calib_size >= 1, f"export.calib_size must be >= 1, got {e.calib_size}")
    _need(0 < e.parity_min_cosine <= 1, f"export.parity_min_cosine must be in (0, 1], got {e.parity_min_cosine}")
    _need(e.max_knn_drop >= 0, f"export.max_knn_drop must be >= 0 (points), got {e.max_knn_drop}")
    _need(cfg.export.opset >= 17, f"export.opset must be >= 17, got {cfg.export.opset}")
    formats = registry.formats()
    _need(set(cfg.export.formats) <= set(formats),
          f"export.formats must be a subset of {','.join(formats)}, got {cfg.export.formats}")
    _need(cfg.export.int8_precision_hint in INT8_HINTS, f"export.int8_precision_hint must be one of {', '.join(INT8_HINTS)}, got '{cfg.export.int8_precision_hint}'")


def _check_pipeline_and_bench(cfg: Config) -> None:
    _need(cfg.pipeline.edge in ("auto", "on", "off"), f"pipeline.edge must be auto, on or off, got '{cfg.pipeline.edge}'")
    unknown = [x for x in cfg.pipeline.stages if x not in STAGES]
    _need(not unknown, f"pipeline.stages has unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    _need(all(t >= 1 for t in cfg.bench.threads) and all(b >= 1 for b in cfg.bench.batch), "bench.threads and bench.batch must be >= 1")
    _need(cfg.bench.runs >= 1 and cfg.bench.warmup >= 0, "bench.runs must be >= 1 and bench.warmup >= 0")
    _check_bench_devices(cfg.bench.devices)
    backends = ("torch", *registry.backends())
    _need(set(cfg.bench.backends) <= set(backends),
          f"bench.backends must be a subset of {','.join(backends)}, got {cfg.bench.backends}")



def _check_bench_devices(devices: tuple[str, ...]) -> None:
    """``bench.devices``: cpu at most once, and ssh:// devices (each parsed when the pipeline
    starts, before any stage: ``bench.runner.split_devices``)."""
    names = [d.strip().lower() for d in devices]
    _need(bool(names) and all(d == "cpu" or d.startswith("ssh://") for d in names) and names.count("cpu") <= 1,
          f"bench.devices must be cpu and/or ssh://[user@]host[:port] devices, got {list(devices)}")
