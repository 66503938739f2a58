"""Each teacher family's own position-embedding semantics, where timm's differ from the original
code (design.md §3).

- DINOv2 (``facebookresearch/dinov2``) interpolates its 37x37 position embedding in every
  forward (``interpolate_pos_encoding``, bicubic) with settings its hub fixes per model: the
  models without registers by the scale factor ``(grid + 0.1) / 37`` (``interpolate_offset``
  0.1), not antialiased; those with registers to the grid size (offset 0), antialiased. timm's
  ``resample_abs_pos_embed`` is the latter for every model. A timm ``VisionTransformer`` runs
  at the one grid it is built for, so the same interpolation, with the same arguments, is done
  once when the weights are loaded: the model stays plain timm (savable, exportable) and holds
  the very tensor DINOv2 computes at that grid.
- Other absolute position embeddings are resampled as timm does (bicubic, antialiased, by size).
- DINOv3 (``facebookresearch/dinov3``) keeps its RoPE periods in a persistent buffer; its
  released files hold them as its training computed them (bf16), and its released models use
  those values in fp32. timm recomputes them in fp32 and keeps none: ``use_rope_periods``
  puts a file's periods into timm's RoPE module (where they stay through ``.to(device)`` and
  copies; a cast of the model to a 16-bit dtype makes timm recompute its own).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dinov2_interpolation", "resample_pos_embed", "set_input_size", "use_rope_periods"]

# facebookresearch/dinov2 hub/backbones.py: (interpolate_offset, interpolate_antialias) of the
# released models, without registers (dinov2_vit*14) and with them (dinov2_vit*14_reg)
_DINOV2_PLAIN = (0.1, False)
_DINOV2_REGISTERS = (0.0, True)


def dinov2_interpolation(arch: str) -> tuple[float, bool] | None:
    """DINOv2's ``(interpolate_offset, interpolate_antialias)`` for a timm DINOv2 architecture
    (``vit_*_patch14[_reg4]_dinov2``); None for any other (timm's resampling applies)."""
    if not arch.endswith("_dinov2"):
        return None
    return _DINOV2_REGISTERS if "_reg" in arch else _DINOV2_PLAIN


def _dinov2_interpolate(patches: Tensor, side: int, grid: tuple[int, int], offset: float,
                        antialias: bool) -> Tensor:
    """``interpolate_pos_encoding``'s call: ``(1, side*side, D)`` -> ``(1, gh*gw, D)``, in fp32."""
    dim = patches.shape[-1]
    if offset:  # a scale factor, as DINOv2 passes it; the output size is floor(side * scale) = grid
        how = {"scale_factor": ((grid[0] + offset) / side, (grid[1] + offset) / side)}
    else:
        how = {"size": grid}
    out = F.interpolate(patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2), mode="bicubic",
                        antialias=antialias, **how)
    return out.permute(0, 2, 3, 1).reshape(1, -1, dim)


def resample_pos_embed(pos: Tensor, model: nn.Module) -> Tensor | None:
    """``pos`` (prefix rows, then a square grid) at ``model``'s patch grid, with the model
    family's interpolation; unchanged when it already fits, None when it is not a square grid
    of the model's width (the strict loader then reports the shape)."""
    from timm.layers import resample_abs_pos_embed

    target = getattr(model, "pos_embed", None)
    if target is None or pos.ndim != 3:
        return None
    if pos.shape == target.shape:
        return pos
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    side = math.isqrt(max(pos.shape[1] - prefix, 0))
    if side * side != pos.shape[1] - prefix or pos.shape[-1] != target.shape[-1]:
        return None
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", "")
    semantics = dinov2_interpolation(arch)
    if semantics is None:
        return resample_abs_pos_embed(pos, new_size=list(grid), old_size=[side, side], num_prefix_tokens=prefix,
                                      interpolation="bicubic", antialias=True)
    patches = _dinov2_interpolate(pos[:, prefix:], side, grid, *semantics).to(pos.dtype)
    return torch.cat([pos[:, :prefix], patches], dim=1)


def set_input_size(model: nn.Module, img_size: int) -> None:
    """timm's ``set_input_size`` (``model`` built at its weights' size, now at ``img_size``) with
    the position embedding resampled from the loaded one by ``resample_pos_embed``."""
    loaded = model.pos_embed.detach().clone()
    model.set_input_size(img_size=(img_size, img_size))  # resamples the timm way; replaced below
    with torch.no_grad():
        model.pos_embed.copy_(resample_pos_embed(loaded, model))


def use_rope_periods(model: nn.Module, periods: Tensor) -> None:
    """``periods`` (a DINOv3 file's ``rope_embed.periods``) in place of the ones timm computed
    for ``model``'s RoPE, kept in fp32 as DINOv3's released models compute; a grid embedding
    that the module caches (a fixed-size model) is rebuilt from them."""
    rope = model.rope
    with torch.no_grad():
        rope.periods.copy_(periods.to(rope.periods.dtype))
        cached = getattr(rope, "pos_embed_cached", None)
        if cached is not None and getattr(rope, "feat_shape", None) is not None:
            training = rope.training
            rope.eval()  # the cache is the embedding without training-time coordinate augmentation
            cached.copy_(rope.get_embed(shape=list(rope.feat_shape)))
            rope.train(training)
