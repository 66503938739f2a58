"""The dense term of distillation (design.md §4): projected student patch tokens regress onto
the teacher's patch tokens, as pure tensor functions.

Shapes: ``B`` batch, ``N`` tokens, ``D`` width, patch grids ``(gh, gw)`` in row-major order
(timm's). Teacher tokens come after the teacher's final norm; student tokens after the
student's final norm and the projector (the one the CLS term uses), so both are ``Dt`` wide.

Prefix tokens (CLS and any register tokens) come first in timm's token order, so the patch
tokens are the *last* ``gh * gw``: :func:`patch_tokens` takes those, never ``[:, 1:]``, and a
teacher with registers (DINOv2/v3 "reg" models) needs nothing special.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["PATCH_LOSSES", "patch_tokens", "resize_patch_tokens", "patch_loss"]

PATCH_LOSSES = ("cosine", "smooth_l1")


def patch_tokens(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """The patch part of a ViT's tokens: the last ``gh * gw`` of ``(B, N, D)`` -> ``(B, gh*gw, D)``."""
    count = int(grid[0]) * int(grid[1])
    if tokens.dim() != 3 or tokens.shape[1] < count:
        raise ValueError(f"patch_tokens: {tuple(tokens.shape)} has fewer than {count} tokens for grid {tuple(grid)}")
    return tokens[:, tokens.shape[1] - count:]


def resize_patch_tokens(tokens: Tensor, grid: tuple[int, int], to: tuple[int, int]) -> Tensor:
    """Resize patch tokens ``(B, gh*gw, D)`` on grid ``grid`` to grid ``to``: ``(B, th*tw, D)``.

    Each channel is resized as an image. To a coarser (or equal) grid: ``mode="area"``, so a
    student patch that covers several teacher patches regresses onto their mean; to a finer
    grid: ``mode="bilinear", align_corners=False``, which never overshoots the range of the
    neighbouring tokens (bicubic would). Float32 out; the same grid is returned unchanged.
    """
    gh, gw = int(grid[0]), int(grid[1])
    th, tw = int(to[0]), int(to[1])
    if tokens.dim() != 3 or tokens.shape[1] != gh * gw:
        raise ValueError(f"resize_patch_tokens: {tuple(tokens.shape)} is not (B, {gh}*{gw}, D)")
    tokens = tokens.float()
    if (gh, gw) == (th, tw):
        return tokens
    b, _, d = tokens.shape
    image = tokens.transpose(1, 2).reshape(b, d, gh, gw)
    if th <= gh and tw <= gw:
        image = F.interpolate(image, size=(th, tw), mode="area")
    else:
        image = F.interpolate(image, size=(th, tw), mode="bilinear", align_corners=False)
    return image.reshape(b, d, th * tw).transpose(1, 2)


def patch_loss(student_patches: Tensor, teacher_patches: Tensor, *, kind: str = "cosine",
               beta: float = 1.0) -> Tensor:
    """Dense regression of student patch tokens onto teacher patch tokens on the same grid.

    ``cosine``: ``mean over batch and tokens of 1 - cos(s, t)``; ``smooth_l1``: Huber
    (``beta``) averaged over batch, tokens and channels. The teacher side is detached.

    Args:
        student_patches: ``(B, N, Dt)`` projected student patch tokens.
        teacher_patches: ``(B, N, Dt)`` teacher patch tokens, already on the student's grid.
        kind: ``"cosine"`` or ``"smooth_l1"``.
    Returns:
        Scalar tensor (float32).
    """
    if kind not in PATCH_LOSSES:
        raise ValueError(f"patch loss must be one of {PATCH_LOSSES}, got {kind!r}")
    if student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"patch_loss: student {tuple(student_patches.shape)} and teacher {tuple(teacher_patches.shape)} "
            "shapes differ (resize the teacher to the student's grid first)"
        )
    s, t = student_patches.float(), teacher_patches.detach().float()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()
    return F.smooth_l1_loss(s, t, beta=beta)
