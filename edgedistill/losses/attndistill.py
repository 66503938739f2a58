"""AttnDistill losses (design.md §4): CLS regression plus attention-map KL (plus the dense term of
``losses.patch`` when it is on), as pure tensor functions.

Shapes: ``B`` batch, ``H`` heads, ``N`` tokens including CLS (``N = 1 + grid_h * grid_w``),
``D`` embedding width. Attention maps are the CLS-query rows of the last block's post-softmax
attention, ``(B, H, P + N_patches)``, keys in timm order: ``P`` prefix columns first (the CLS
key, then any register keys kept with ``keep_registers``; ``P = 1`` by default), then patches.

Unlike the released AttnDistill code, the bicubically resized teacher map is clamped to
``>= eps`` before anything takes its log: bicubic resizing of a peaky map overshoots below
zero, and ``log`` of a negative value made the ViT-S/8 -> ViT-T/16 pairing (both resizing and
head aggregation) produce NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from edgedistill.losses.patch import patch_loss

__all__ = [
    "cls_loss",
    "resize_attention",
    "aggregate_heads",
    "attention_kl",
    "attndistill_loss",
    "AGGREGATE_MODES",
]

AGGREGATE_MODES = ("auto", "always", "never")


def _square_side(num_patches: int, what: str) -> int:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"{what} has {num_patches} patch tokens, not a square grid; "
            "attention resizing needs square patch grids"
        )
    return side


def cls_loss(student_cls: Tensor, teacher_cls: Tensor) -> Tensor:
    """Mean squared error over batch and dims.

    Args:
        student_cls: ``(B, Dt)`` projected student CLS token.
        teacher_cls: ``(B, Dt)`` teacher CLS token after the teacher's final norm.
    Returns:
        Scalar tensor (float32).
    """
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(
            f"cls_loss: student {tuple(student_cls.shape)} and teacher "
            f"{tuple(teacher_cls.shape)} shapes differ (is the projector's output dim the teacher's?)"
        )
    # float32 so the loss is exact under autocast
    return F.mse_loss(student_cls.float(), teacher_cls.detach().float())


def resize_attention(attn: Tensor, grid: tuple[int, int], eps: float = 1e-5, prefix: int = 1) -> Tensor:
    """Bicubically resize the patch part of CLS-query attention rows to another grid.

    The patch part is reshaped to the (square) source grid, resized with
    ``F.interpolate(mode="bicubic", align_corners=False)``, clamped to ``>= eps`` (bicubic
    overshoots below zero near peaks), then rescaled to sum to ``1 - sum(prefix columns)`` so
    the CLS (and kept register) weights are kept and each row still sums to 1. The rescaling
    can push clamped entries slightly below ``eps`` when the map is upsampled;
    ``attention_kl`` clamps again.

    Args:
        attn: ``(B, H, prefix + Nt)`` with ``Nt`` a perfect square.
        grid: target patch grid ``(gh, gw)``.
        prefix: leading non-patch columns (CLS, then kept registers).
    Returns:
        ``(B, H, prefix + gh * gw)`` in float32.
    """
    if attn.dim() != 3:
        raise ValueError(f"resize_attention expects (B, H, prefix+N), got {tuple(attn.shape)}")
    b, h, n = attn.shape
    side = _square_side(n - prefix, "attention map")
    attn = attn.float()
    head = attn[..., :prefix]  # (B, H, prefix)
    patch = attn[..., prefix:].reshape(b, h, side, side)
    patch = F.interpolate(patch, size=tuple(grid), mode="bicubic", align_corners=False)
    patch = patch.reshape(b, h, -1).clamp(min=eps)
    patch = patch * ((1.0 - head.sum(dim=-1, keepdim=True)) / patch.sum(dim=-1, keepdim=True))
    return torch.cat([head, patch], dim=-1)


def aggregate_heads(attn: Tensor, temperature: float = 10.0, eps: float = 1e-5) -> Tensor:
    """Fuse heads into one map: ``softmax(sum_h log(clamp(A_h, min=eps)) / T)`` over keys.

    Args:
        attn: ``(B, H, N)`` attention rows.
    Returns:
        ``(B, 1, N)``, each row summing to 1.
    """
    log_sum = attn.float().clamp(min=eps).log().sum(dim=1, keepdim=True)
    return F.softmax(log_sum / temperature, dim=-1)


def attention_kl(
    teacher_attn: Tensor,
    student_attn: Tensor,
    *,
    aggregate: str = "auto",
    temperature: float = 10.0,
    eps: float = 1e-5,
    max_p: float = 0.996,
    prefix_tokens: int = 1,
) -> Tensor:
    """KL(teacher || student) between last-block CLS-query attention rows.

    Order (design.md §4): resize the teacher to the student's grid if token counts differ; aggregate
    heads of both maps when ``aggregate == "always"`` or (``"auto"`` and head counts differ);
    clamp both to ``[eps, max_p]`` and renormalize rows to sum 1; then
    ``sum_{heads, keys} t * (log t - log s) / B`` (``batchmean``, not divided by heads).
    The teacher side is detached.

    Args:
        teacher_attn: ``(B, Ht, P + Nt)``.
        student_attn: ``(B, Hs, P + Ns)``; ``Ns`` must be a perfect square when ``Nt != Ns``.
        aggregate: ``"auto"``, ``"always"`` or ``"never"``.
        prefix_tokens: ``P``, the leading non-patch columns of both maps (1: CLS only).
    Returns:
        Scalar tensor (float32).
    """
    if aggregate not in AGGREGATE_MODES:
        raise ValueError(f"aggregate must be one of {AGGREGATE_MODES}, got {aggregate!r}")
    if teacher_attn.dim() != 3 or student_attn.dim() != 3:
        raise ValueError(
            "attention maps must be (B, H, 1+N); got teacher "
            f"{tuple(teacher_attn.shape)}, student {tuple(student_attn.shape)}"
        )
    if teacher_attn.shape[0] != student_attn.shape[0]:
        raise ValueError(
            f"batch sizes differ: teacher {teacher_attn.shape[0]}, student {student_attn.shape[0]}"
        )
    t = teacher_attn.detach().float()
    s = student_attn.float()
    batch, t_heads, t_tokens = t.shape
    s_heads, s_tokens = s.shape[1], s.shape[2]

    if t_tokens != s_tokens:
        side = _square_side(s_tokens - prefix_tokens, "student attention map")
        t = resize_attention(t, (side, side), eps=eps, prefix=prefix_tokens)

    heads_differ = t_heads != s_heads
    if aggregate == "never" and heads_differ:
        raise ValueError(
            f"teacher has {t_heads} heads and student {s_heads}: head-by-head attention "
            "distillation needs equal head counts (use aggregate='auto' or 'always')"
        )
    if aggregate == "always" or heads_differ:
        t = aggregate_heads(t, temperature, eps)
        s = aggregate_heads(s, temperature, eps)

    t = t.clamp(min=eps, max=max_p)
    t = t / t.sum(dim=-1, keepdim=True)
    s = s.clamp(min=eps, max=max_p)
    s = s / s.sum(dim=-1, keepdim=True)
    return (t * (t.log() - s.log())).sum() / batch


def attndistill_loss(
    student_cls_proj: Tensor,
    teacher_cls: Tensor,
    student_attn: Tensor,
    teacher_attn: Tensor,
    *,
    w_cls: float = 1.0,
    w_attn: float = 0.1,
    aggregate: str = "auto",
    temperature: float = 10.0,
    prefix_tokens: int = 1,
    student_patches: Tensor | None = None,
    teacher_patches: Tensor | None = None,
    w_patch: float = 0.0,
    patch_kind: str = "cosine",
) -> dict[str, Tensor]:
    """``w_cls * cls_loss + w_attn * attention_kl (+ w_patch * patch_loss)``.

    Args:
        student_cls_proj: ``(B, Dt)`` projector output at the student's CLS token.
        teacher_cls: ``(B, Dt)``.
        student_attn: ``(B, Hs, 1 + Ns)``.
        teacher_attn: ``(B, Ht, 1 + Nt)``.
        prefix_tokens: leading non-patch columns of both maps (``1 + registers`` when kept).
        student_patches: ``(B, Ns, Dt)`` projected student patch tokens (only with ``w_patch > 0``).
        teacher_patches: ``(B, Ns, Dt)`` teacher patch tokens on the student's grid
            (``losses.patch.resize_patch_tokens``).
    Returns:
        ``{"loss", "cls", "attn"}`` (plus ``"patch"`` when ``w_patch > 0``), scalar tensors;
        the parts unweighted. With ``w_attn == 0`` the attention term is not computed and
        ``"attn"`` is 0; with ``w_patch == 0`` nothing of the dense term is computed.
    """
    l_cls = cls_loss(student_cls_proj, teacher_cls)
    if w_attn == 0:
        l_attn = torch.zeros((), device=l_cls.device, dtype=l_cls.dtype)
    else:
        l_attn = attention_kl(
            teacher_attn, student_attn, aggregate=aggregate, temperature=temperature,
            prefix_tokens=prefix_tokens,
        )
    loss = w_cls * l_cls + w_attn * l_attn
    parts = {"loss": loss, "cls": l_cls, "attn": l_attn}
    if w_patch:
        if student_patches is None or teacher_patches is None:
            raise ValueError("w_patch > 0 needs student_patches and teacher_patches")
        parts["patch"] = patch_loss(student_patches, teacher_patches, kind=patch_kind)
        parts["loss"] = loss + w_patch * parts["patch"]
    return parts
