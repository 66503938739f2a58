"""timm ViT construction and the AttnDistill forward pass (design.md §3).

``forward_with_cls_attention`` runs a timm ``VisionTransformer`` stage by stage and returns,
beside the final tokens, the post-softmax attention of the last block for the CLS query.
It neither registers hooks nor changes any module: every block but the last runs as timm
built it (fused ``scaled_dot_product_attention``), and the last block is re-run from its own
submodules with fused attention for its output plus an explicit O(N) softmax row for CLS.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from edgedistill.errors import EdgeDistillError

__all__ = [
    "create_vit",
    "vit_kwargs",
    "default_patch_size",
    "check_supported",
    "forward_with_cls_attention",
    "forward_cls",
    "vit_archs",
]

# timm entrypoint modules whose models are plain ``VisionTransformer``s (DeiT lives in `deit`).
_VIT_MODULES = ("vision_transformer", "deit")


def vit_archs() -> list[str]:
    """timm architecture names built on ``VisionTransformer`` (without pretrained tags)."""
    import timm

    return sorted(set(timm.list_models(module=list(_VIT_MODULES))))


def _suggest(name: str, choices: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def default_patch_size(arch: str) -> int:
    """The patch size an architecture uses when none is given, e.g. 16 for ``vit_tiny_patch16_224``."""
    match = re.search(r"patch(\d+)", arch)
    if match:
        return int(match.group(1))
    # No size in the name: build it once on the meta device (no memory, no init cost).
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    return int(model.patch_embed.patch_size[0])


def vit_kwargs(arch: str, img_size: int, patch_size: int = 0, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``create_vit`` passes to ``timm.create_model`` (besides
    ``pretrained`` and ``num_classes=0``); what a backbone's JSON records as ``kwargs``."""
    import timm

    if "." in arch and timm.is_model(arch):
        raise EdgeDistillError(
            f"{arch!r} names pretrained weights, not an architecture: use {arch.split('.')[0]!r} as the "
            f"architecture (pass {arch!r} as the teacher source to download those weights)"
        )
    if not timm.is_model(arch):
        raise EdgeDistillError(f"unknown timm architecture {arch!r}{_suggest(arch, timm.list_models('vit_*'))}")
    if arch not in set(timm.list_models(module=list(_VIT_MODULES))):
        raise EdgeDistillError(
            f"{arch!r} is not a timm VisionTransformer; edgedistill needs a ViT teacher/student "
            f"(e.g. vit_small_patch16_224, vit_tiny_patch16_224)"
        )
    img_size = int(img_size)
    if img_size <= 0:
        raise EdgeDistillError(f"img_size must be positive, got {img_size}")
    patch = int(patch_size) or default_patch_size(arch)
    if patch <= 0:
        raise EdgeDistillError(f"patch_size must be positive, got {patch}")
    if img_size % patch:
        raise EdgeDistillError(
            f"patch size {patch} does not divide the image size {img_size} for {arch} "
            f"(choose an image size that is a multiple of {patch}, or set patch_size)"
        )
    return {"img_size": img_size, "patch_size": patch, **kwargs}


def check_supported(model: nn.Module, arch: str = "") -> None:
    """Raise EdgeDistillError unless ``model`` is a ViT this package can run: a
    ``VisionTransformer`` with exactly one prefix (CLS) token, pre-norm ``Block``s with
    standard ``Attention``, and a final norm on the tokens."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    name = arch or type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise EdgeDistillError(f"{name} is not a timm VisionTransformer ({type(model).__name__})")
    if not model.has_class_token or model.num_prefix_tokens != 1:
        raise EdgeDistillError(
            f"{name} has {model.num_prefix_tokens} prefix tokens (class token: {model.has_class_token}); "
            "edgedistill needs exactly one CLS token and no register tokens"
        )
    if isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity):
        raise EdgeDistillError(
            f"{name} normalizes after average pooling (fc_norm); edgedistill's feature is the CLS token "
            "after the final norm: pass global_pool='token'"
        )
    last = model.blocks[-1]
    # Only Block.forward/Attention.forward are re-implemented below; a subclass that
    # overrides either would be silently mis-computed, so refuse it.
    if not isinstance(last, Block) or type(last).forward is not Block.forward:
        raise EdgeDistillError(f"{name}: unsupported block type {type(last).__name__} (need timm's pre-norm Block)")
    if not isinstance(last.attn, Attention) or type(last.attn).forward is not Attention.forward:
        raise EdgeDistillError(f"{name}: unsupported attention type {type(last.attn).__name__} (need timm's Attention)")


def create_vit(arch: str, img_size: int, patch_size: int = 0, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build a randomly initialised timm ViT backbone (``num_classes=0``).

    Returns ``(model, kwargs_used)``; ``timm.create_model(arch, num_classes=0, **kwargs_used)``
    rebuilds the same architecture (it is what ``save_backbone`` writes into the JSON).
    """
    import timm

    used = vit_kwargs(arch, img_size, patch_size, **kwargs)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **used)
    except TypeError as exc:  # an option timm's VisionTransformer does not take
        raise EdgeDistillError(f"invalid model option for {arch}: {exc}") from None
    check_supported(model, arch)
    return model, used


def _attention_block(blk: nn.Module, x: Tensor, explicit: bool) -> tuple[Tensor, Tensor]:
    """One timm pre-norm ``Block`` computed from its submodules.

    Returns the block output ``(B, N, D)`` and the CLS-query attention row ``(B, H, N)``.
    ``explicit=False``: output through fused SDPA, CLS row as softmax(q_cls k^T * scale), O(N).
    ``explicit=True``: the full ``(B, H, N, N)`` attention matrix is materialized (naive baseline).
    """
    attn = blk.attn
    h = blk.norm1(x)
    B, N, _ = h.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    attn_dim = getattr(attn, "attn_dim", heads * head_dim)
    gate = getattr(attn, "gate", None)
    gate = gate(h).sigmoid() if gate is not None else None
    q, k, v = attn.qkv(h).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scale = attn.scale
    if explicit:
        full = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        row = full[:, :, 0]
        out = attn.attn_drop(full) @ v
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0, scale=scale
        )
        # Only the CLS query's row: (B, H, 1, hd) @ (B, H, hd, N) -> (B, H, N).
        row = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(dim=-1).squeeze(2)
    out = out.transpose(1, 2).reshape(B, N, attn_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    x = x + blk.drop_path1(blk.ls1(out))
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    return x, row


def forward_with_cls_attention(model: nn.Module, x: Tensor, *, explicit_all_blocks: bool = False) -> tuple[Tensor, Tensor]:
    """Tokens after the final norm ``(B, 1+N, D)`` and the last block's post-softmax attention
    for the CLS query ``(B, H, 1+N)`` (keys include CLS). Gradients flow through both.

    ``explicit_all_blocks=True`` computes every block with a full explicit attention matrix
    (the naive baseline the benchmark compares against); the results are the same.
    """
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    blocks = model.blocks
    last = len(blocks) - 1
    # index the blocks rather than slice: slicing an nn.Sequential builds a new module each call
    if explicit_all_blocks:
        for i in range(last):
            x, _ = _attention_block(blocks[i], x, explicit=True)
    elif getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled() and not torch.jit.is_scripting():
        from timm.models._manipulate import checkpoint_seq

        if last:
            x = checkpoint_seq([blocks[i] for i in range(last)], x)
    else:
        for i in range(last):
            x = blocks[i](x)
    x, row = _attention_block(blocks[-1], x, explicit=explicit_all_blocks)
    return model.norm(x), row


def forward_cls(model: nn.Module, x: Tensor) -> Tensor:
    """The evaluated/exported feature: CLS token after the final norm, ``(B, D)``."""
    return model.forward_features(x)[:, 0]
