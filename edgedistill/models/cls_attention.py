"""One transformer block re-run from its own submodules, returning the CLS query's attention row.

AttnDistill needs the post-softmax attention of the last block for the CLS query only. Both
block kinds below are computed exactly as timm computes them (same submodules, same order of
operations), with the block output through fused ``scaled_dot_product_attention`` and the CLS
row as an O(N) softmax of one query against all keys; nothing is hooked or modified.

- ``vit_block``: timm's pre-norm ``Block`` with ``Attention`` (ViT, DeiT, DINO, DINOv2).
- ``eva_block``: timm's ``EvaBlock`` with ``EvaAttention`` (DINOv3 and other RoPE ViTs): the
  rotary embedding is applied to the patch part of q and k as ``EvaAttention`` does, with
  timm's own ``apply_rot_embed_cat``; prefix tokens (CLS, registers) are not rotated.

``explicit=True`` materializes the full ``(B, H, N, N)`` attention matrix instead (the naive
baseline the distill-step benchmark compares against); the results are the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["vit_block", "eva_block", "drop_register_columns"]


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout: nn.Dropout, training: bool,
            explicit: bool) -> tuple[Tensor, Tensor]:
    """Attention output ``(B, H, N, hd)`` and the CLS query's post-softmax row ``(B, H, N)``."""
    if explicit:
        full = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        return dropout(full) @ v, full[:, :, 0]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout.p if training else 0.0, scale=scale)
    # Only the CLS query's row: (B, H, 1, hd) @ (B, H, hd, N) -> (B, H, N).
    row = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(dim=-1).squeeze(2)
    return out, row


def vit_block(blk: nn.Module, x: Tensor, explicit: bool) -> tuple[Tensor, Tensor]:
    """timm ``Block`` (pre-norm, ``Attention``): block output ``(B, N, D)`` and CLS row ``(B, H, N)``."""
    attn = blk.attn
    h = blk.norm1(x)
    B, N, _ = h.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    attn_dim = getattr(attn, "attn_dim", heads * head_dim)
    gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(h).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out, row = _attend(q, k, v, attn.scale, attn.attn_drop, attn.training, explicit)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, attn_dim))
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    x = x + blk.drop_path1(blk.ls1(out))
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, row


def _eva_qkv(attn: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v ``(B, H, N, hd)`` as ``EvaAttention`` projects them (fused or separate, k bias 0)."""
    B, N, _ = h.shape
    heads = attn.num_heads
    if attn.qkv is not None:
        if attn.q_bias is None:
            qkv = attn.qkv(h)
        else:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            if attn.qkv_bias_separate:
                qkv = attn.qkv(h) + bias
            else:
                qkv = F.linear(h, weight=attn.qkv.weight, bias=bias)
        return qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    q = attn.q_proj(h).reshape(B, N, heads, -1).transpose(1, 2)
    k = attn.k_proj(h).reshape(B, N, heads, -1).transpose(1, 2)
    v = attn.v_proj(h).reshape(B, N, heads, -1).transpose(1, 2)
    return q, k, v


def _rotate(t: Tensor, rope: Tensor, prefix: int, half: bool, like: Tensor) -> Tensor:
    """Rotary embedding on the patch tokens of ``t``; the ``prefix`` tokens are left as they are."""
    from timm.layers import apply_rot_embed_cat

    return torch.cat([t[:, :, :prefix, :], apply_rot_embed_cat(t[:, :, prefix:, :], rope, half=half)],
                     dim=2).type_as(like)


def eva_block(blk: nn.Module, x: Tensor, rope: Tensor | None, explicit: bool) -> tuple[Tensor, Tensor]:
    """timm ``EvaBlock`` (pre-norm, ``EvaAttention``, optional RoPE and LayerScale ``gamma_1/2``):
    block output ``(B, N, D)`` and CLS row ``(B, H, N)``."""
    attn = blk.attn
    h = blk.norm1(x)
    B, N, C = h.shape
    gate = attn.gate(h).sigmoid() if attn.gate is not None else None
    q, k, v = _eva_qkv(attn, h)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        half = bool(getattr(attn, "rotate_half", False))
        q = _rotate(q, rope, attn.num_prefix_tokens, half, v)
        k = _rotate(k, rope, attn.num_prefix_tokens, half, v)
    out, row = _attend(q, k, v, attn.scale, attn.attn_drop, attn.training, explicit)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, C))
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    if blk.gamma_1 is not None:
        out = blk.gamma_1 * out
    x = x + blk.drop_path1(out)
    mlp = blk.mlp(blk.norm2(x))
    if blk.gamma_2 is not None:
        mlp = blk.gamma_2 * mlp
    return x + blk.drop_path2(mlp), row


def drop_register_columns(row: Tensor, registers: int) -> Tensor:
    """The CLS row over CLS + patches: register columns ``1 .. registers`` removed, the row
    renormalized to sum to 1. ``(B, H, 1 + R + N) -> (B, H, 1 + N)``; unchanged when R is 0."""
    if registers <= 0:
        return row
    kept = torch.cat([row[..., :1], row[..., 1 + registers:]], dim=-1)
    return kept / kept.sum(dim=-1, keepdim=True)
