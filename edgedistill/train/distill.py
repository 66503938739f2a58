"""AttnDistill (Wang et al., BMVC 2022): a frozen self-supervised teacher, a ViT-Tiny student.

Loss per batch (design.md §4): ``w_cls * MSE(projector(student CLS), teacher CLS)
+ w_attn * KL(teacher || student)`` over the last block's CLS-query attention, both
networks seeing the same augmented view; with ``distill.w_patch > 0`` also the dense term,
``w_patch * patch_loss(projector(student patch tokens), teacher patch tokens)``, the teacher's
tokens resized to the student's grid.

Design choice on the final norm: the projector reads the student's tokens *after* its final
LayerNorm, so the feature we evaluate and export (CLS after the final norm) is exactly the
one the loss trained. The released code fed pre-norm tokens, which left that norm untrained.

Registers (DINOv2-reg, DINOv3): the attention target is the CLS row over CLS + patches, the
register columns removed and the row renormalized, for teacher and student alike;
``distill.keep_registers`` keeps them when the student has as many registers as the teacher.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.config import Config
from edgedistill.errors import EdgeDistillError
from edgedistill.losses.attndistill import attndistill_loss
from edgedistill.losses.patch import patch_tokens, resize_patch_tokens
from edgedistill.models.backbone_io import save_backbone
from edgedistill.models.projector import Projector, fit_projector, save_projector
from edgedistill.models.vit import create_vit, fitted_patch_size, forward_with_cls_attention, register_count
from edgedistill.rundir import RunDir
from edgedistill.train.clock import cpu_seconds
from edgedistill.train.loop import LoopSettings, Task


class StudentWithProjector(nn.Module):
    """The trainable part: student backbone + projector into the teacher's feature space.

    With ``with_patches`` the projector also maps the patch tokens (the dense term); without,
    it maps the CLS token alone, so a run without the dense term computes nothing extra.
    """

    def __init__(self, student: nn.Module, projector: nn.Module, explicit: bool = False,
                 keep_registers: bool = False, with_patches: bool = False):
        super().__init__()
        self.student = student
        self.projector = projector
        self.explicit = explicit
        self.keep_registers = keep_registers
        self.with_patches = with_patches

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """images (B,3,H,W) -> (projected CLS (B,Dt), last-block CLS attention (B,Hs,P+Ns),
        projected patch tokens (B,Ns,Dt) or None without ``with_patches``)."""
        tokens, attention = forward_with_cls_attention(self.student, images, explicit_all_blocks=self.explicit,
                                                       keep_registers=self.keep_registers)
        if not self.with_patches:
            return self.projector(tokens[:, :1])[:, 0], attention, None
        # One projector pass over every token: the CLS term and the dense term share it.
        projected = self.projector(tokens)
        grid = tuple(self.student.patch_embed.grid_size)
        return projected[:, 0], attention, patch_tokens(projected, grid)


class DistillTask(Task):
    name = "distill"

    def __init__(self, cfg: Config, teacher: nn.Module, student: nn.Module, student_kwargs: dict[str, Any],
                 teacher_info: dict[str, Any], device: torch.device, *, teacher_explicit: bool = False):
        d = cfg.distill
        self.cfg = cfg
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student_kwargs = student_kwargs
        self.teacher_info = teacher_info
        self.teacher_explicit = teacher_explicit  # only the naive benchmark baseline sets it
        student_explicit = d.attention == "explicit" or (d.attention == "auto" and device.type != "cuda")
        self.keep_registers = d.keep_registers
        registers = register_count(teacher)
        if d.keep_registers and register_count(student) != registers:
            raise EdgeDistillError(
                f"distill.keep_registers needs a student with as many register tokens as the teacher "
                f"(teacher {registers}, student {register_count(student)}): set student.reg_tokens={registers} "
                "or leave distill.keep_registers off"
            )
        self.prefix_tokens = 1 + registers if d.keep_registers else 1
        projector = Projector(student.embed_dim, teacher.embed_dim, depth=d.projector_depth)
        self.trainable = StudentWithProjector(student, projector, student_explicit, d.keep_registers,
                                              with_patches=d.w_patch > 0)
        self.teacher_size = cfg.teacher_img_size
        self.teacher_grid = tuple(teacher.patch_embed.grid_size)
        self.student_grid = tuple(student.patch_embed.grid_size)
        # With w_cls = 0 and no dense term the projector gets no gradient, which DDP must be told about.
        self.find_unused_parameters = d.w_cls == 0 and d.w_patch == 0

        # Per-dimension mean and std of the teacher's CLS (``cls_target=standardized``), set by
        # ``measure_target_statistics`` before training and kept in the checkpoint.
        self.target_mean: torch.Tensor | None = None
        self.target_std: torch.Tensor | None = None

    def prepare_targets(self, loader: Any) -> dict[str, float]:
        """Before training, one pass over ``loader`` (training images, eval transform): the
        teacher CLS's per-dimension mean and std (``cls_target=standardized``), then the
        projector's least-squares start (``projector_init=least_squares``) on the student's
        initial features. Returns what it measured: ``prepare_seconds`` (in ``budget_clock`` seconds;
        the run's ``max_seconds`` budget counts them) and ``projector_r2`` (the fit's R^2 on those
        images)."""
        d = self.cfg.distill
        fit = d.projector_init == "least_squares" and self.trainable.projector.last_linear() is not None
        if d.cls_target != "standardized" and not fit:
            return {}
        clock = cpu_seconds if d.budget_clock == "cpu" else time.perf_counter
        started = clock()
        device = next(self.teacher.parameters()).device
        teacher_cls, hidden = [], []
        was_training = self.trainable.training
        self.trainable.to(device).eval()  # on the teacher's device, where training puts it too
        with torch.inference_mode():
            for images, _ in loader:
                images = images.to(device)
                teacher_cls.append(self._teacher(images)[0][:, 0].double())
                if fit:
                    tokens, _ = forward_with_cls_attention(self.trainable.student, images,
                                                           keep_registers=self.keep_registers)
                    hidden.append(self.trainable.projector.hidden(tokens[:, 0]).double())
        self.trainable.train(was_training)
        cls = torch.cat(teacher_cls)
        if d.cls_target == "standardized":
            self.target_mean, self.target_std = cls.mean(0).float(), cls.std(0).float().clamp_min(1e-6)
        measured = {}
        if fit:
            measured["projector_r2"] = fit_projector(self.trainable.projector, torch.cat(hidden),
                                                     self.teacher_target(cls.float()))
        self.setup_seconds = measured["prepare_seconds"] = clock() - started
        return measured

    def _teacher(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        teacher_in = images
        if teacher_in.shape[-1] != self.teacher_size:
            teacher_in = F.interpolate(images, size=self.teacher_size, mode="bicubic", align_corners=False)
        return forward_with_cls_attention(self.teacher, teacher_in, explicit_all_blocks=self.teacher_explicit,
                                          keep_registers=self.keep_registers)

    def extra_state(self) -> dict[str, Any]:
        if self.target_mean is None:
            return {}
        return {"target_mean": self.target_mean.cpu(), "target_std": self.target_std.cpu()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "target_mean" in state:
            device = next(self.teacher.parameters()).device
            self.target_mean, self.target_std = state["target_mean"].to(device), state["target_std"].to(device)

    def teacher_target(self, teacher_cls: torch.Tensor) -> torch.Tensor:
        """The CLS target the projector regresses onto."""
        if self.target_mean is None:
            return teacher_cls
        return (teacher_cls - self.target_mean) / self.target_std

    def loss(self, model: nn.Module, images: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        d = self.cfg.distill
        with torch.inference_mode():
            teacher_tokens, teacher_attention = self._teacher(images)
            teacher_patches = None
            if d.w_patch:
                # The last grid_h * grid_w tokens: register tokens (if any) sit before them.
                teacher_patches = resize_patch_tokens(patch_tokens(teacher_tokens, self.teacher_grid),
                                                      self.teacher_grid, self.student_grid)
        # Inference tensors cannot enter autograd; a clone (outside inference mode) makes them
        # ordinary constants.
        teacher_tokens, teacher_attention = teacher_tokens.clone(), teacher_attention.clone()
        if teacher_patches is not None:
            teacher_patches = teacher_patches.clone()
        student_cls, student_attention, student_patches = model(images)
        return attndistill_loss(
            student_cls.float(), self.teacher_target(teacher_tokens[:, 0].float()), student_attention.float(), teacher_attention.float(),
            w_cls=d.w_cls, w_attn=d.w_attn, aggregate=d.aggregate_heads, temperature=d.temperature,
            prefix_tokens=self.prefix_tokens, student_patches=student_patches, teacher_patches=teacher_patches,
            w_patch=d.w_patch, patch_kind=d.patch_loss,
        )

    def backbone(self) -> nn.Module:
        return self.trainable.student

    def save_outputs(self, run_dir: Path) -> None:
        s = self.cfg.student
        save_backbone(self.trainable.student, run_dir, "student", s.arch, self.student_kwargs, "student",
                      extra={"teacher": self.teacher_info, "run": self.cfg.run.name})
        # The projector maps the student's CLS into the teacher's space: an app can then query
        # a gallery embedded by the teacher. Saved beside the student for `export --projection`.
        save_projector(self.trainable.projector, RunDir.of(run_dir).projector)


def loop_settings(cfg: Config, section: str = "distill") -> LoopSettings:
    sec = getattr(cfg, section)
    return LoopSettings(
        epochs=sec.epochs, batch_size=cfg.data.batch_size, effective_batch=sec.effective_batch,
        blr=sec.blr, min_lr=sec.min_lr, warmup_epochs=sec.warmup_epochs, weight_decay=sec.weight_decay,
        betas=getattr(sec, "betas", (0.9, 0.999)), weight_decay_end=getattr(sec, "weight_decay_end", None),
        clip_grad=sec.clip_grad, amp=sec.amp, compile=sec.compile, checkpoint_every=sec.checkpoint_every,
        log_every=sec.log_every, max_steps=sec.max_steps, knn_every=sec.knn_every, seed=cfg.run.seed,
        num_workers=cfg.data.num_workers, total_steps=sec.total_steps, max_seconds=sec.max_seconds,
        budget_clock=sec.budget_clock,
    )


def build_student(cfg: Config) -> tuple[nn.Module, dict[str, Any]]:
    s = cfg.student
    img_size = s.img_size or cfg.data.img_size
    # unset, the patch size follows the image size (32 px: 8, not ViT-T/16's 2x2 grid)
    kwargs: dict[str, Any] = {"img_size": img_size, "patch_size": s.patch_size or fitted_patch_size(s.arch, img_size)}
    if s.depth:
        kwargs["depth"] = s.depth
    if s.drop_path_rate:
        kwargs["drop_path_rate"] = s.drop_path_rate
    if s.reg_tokens:
        kwargs["reg_tokens"] = s.reg_tokens
    return create_vit(s.arch, **kwargs)
