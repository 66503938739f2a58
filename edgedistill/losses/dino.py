"""DINO self-distillation loss, centering and teacher-temperature schedule.

Pure functions that reproduce the DINO repository's ``DINOLoss`` (Caron et al., 2021): the
center is state the caller keeps (e.g. a buffer of the training module) and passes in.
The projection head (``DINOHead``) lives in ``edgedistill.models.projector``.

Shapes: ``B`` images per batch, ``K`` head output dim, crops stacked crop-major (all images of
crop 0, then crop 1, ...), global crops first, as DINO's multi-crop wrapper produces them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dino_loss", "update_center", "teacher_temperature"]


def dino_loss(
    student_out: Tensor,
    teacher_out: Tensor,
    center: Tensor,
    *,
    n_global: int = 2,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """Cross-entropy between sharpened, centered teacher and student crop outputs.

    ``mean over pairs (iq, v), v != iq`` of ``mean_b sum_k -softmax((t_iq - c) / tt) *
    log_softmax(s_v / ts)``; teacher probabilities are detached.

    Args:
        student_out: ``(S * B, K)`` for ``S`` crops (global crops first).
        teacher_out: ``(n_global * B, K)`` for the global crops.
        center: ``(1, K)``.
    Returns:
        Scalar tensor (float32).
    """
    if teacher_out.shape[0] % n_global:
        raise ValueError(f"teacher_out has {teacher_out.shape[0]} rows, not a multiple of {n_global}")
    batch = teacher_out.shape[0] // n_global
    if batch == 0 or student_out.shape[0] % batch:
        raise ValueError(
            f"student_out has {student_out.shape[0]} rows, not a multiple of the batch {batch}"
        )
    n_crops = student_out.shape[0] // batch
    if n_crops < 2:
        raise ValueError("dino_loss needs at least 2 student crops")

    s_logp = F.log_softmax(student_out.float() / student_temp, dim=-1).chunk(n_crops)
    t_prob = F.softmax((teacher_out.float() - center.float()) / teacher_temp, dim=-1)
    t_prob = t_prob.detach().chunk(n_global)

    total = student_out.new_zeros((), dtype=torch.float32)
    n_terms = 0
    for iq, q in enumerate(t_prob):
        for v, logp in enumerate(s_logp):
            if v == iq:  # a crop is not its own target
                continue
            total = total + torch.sum(-q * logp, dim=-1).mean()
            n_terms += 1
    return total / n_terms


@torch.no_grad()
def update_center(center: Tensor, teacher_out: Tensor, momentum: float = 0.9) -> Tensor:
    """EMA of the teacher's mean output; returns a new ``(1, K)`` tensor.

    Under an initialized ``torch.distributed`` process group the batch sum is all-reduced and
    divided by ``world_size * rows`` so every rank keeps the same center.

    Args:
        center: ``(1, K)``.
        teacher_out: ``(n_global * B, K)``.
    """
    batch_center = teacher_out.detach().float().sum(dim=0, keepdim=True)
    count = teacher_out.shape[0]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_center)
        count *= dist.get_world_size()
    batch_center = batch_center / count
    return center * momentum + batch_center.to(center.dtype) * (1.0 - momentum)


def teacher_temperature(
    epoch: float, warmup_temp: float, temp: float, warmup_epochs: int
) -> float:
    """Teacher temperature: linear from ``warmup_temp`` to ``temp`` over ``warmup_epochs``.

    Matches DINO's ``np.linspace(warmup_temp, temp, warmup_epochs)`` (which reaches ``temp`` at
    epoch ``warmup_epochs - 1``), constant ``temp`` afterwards.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch >= warmup_epochs:
        return float(temp)
    if warmup_epochs == 1:
        return float(warmup_temp)
    frac = epoch / (warmup_epochs - 1)
    return float(warmup_temp + (temp - warmup_temp) * frac)
