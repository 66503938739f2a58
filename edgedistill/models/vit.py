"""timm ViT construction and the AttnDistill forward pass (design.md §3).

Two timm model classes are supported, as teacher or student:

- ``VisionTransformer`` (ViT, DeiT, DINO, MAE, iBOT, DINOv2 with or without registers): a CLS
  token, optional register tokens after it, pre-norm ``Block``s with standard ``Attention``.
- ``Eva`` with pre-norm ``EvaBlock``s (DINOv3 and other RoPE ViTs): a CLS token, optional
  registers, rotary position embeddings applied inside attention, LayerScale ``gamma_1/2``.

``forward_with_cls_attention`` runs such a model stage by stage and returns, beside the final
tokens, the post-softmax attention of the last block for the CLS query. It neither registers
hooks nor changes any module: every block but the last runs as timm built it (fused
``scaled_dot_product_attention``), and the last block is re-run from its own submodules with
fused attention for its output plus an explicit O(N) softmax row for CLS (``cls_attention``).
By default the row covers CLS + patches: register columns are removed and the row renormalized.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from edgedistill.errors import EdgeDistillError
from edgedistill.models.cls_attention import drop_register_columns, eva_block, vit_block

__all__ = [
    "create_vit",
    "vit_kwargs",
    "default_patch_size",
    "fitted_patch_size",
    "check_supported",
    "forward_with_cls_attention",
    "forward_cls",
    "register_count",
    "is_rope_model",
    "vit_archs",
]

# timm entrypoint modules whose models are ``VisionTransformer``s (DeiT lives in `deit`) or
# ``Eva``s (DINOv3 and the other RoPE ViTs).
_VIT_MODULES = ("vision_transformer", "deit")
_EVA_MODULES = ("eva",)


def vit_archs() -> list[str]:
    """timm architecture names this package can build (``VisionTransformer`` and ``Eva``)."""
    import timm

    return sorted(set(timm.list_models(module=list(_VIT_MODULES + _EVA_MODULES))))


def _is_eva_arch(arch: str) -> bool:
    import timm

    return arch in set(timm.list_models(module=list(_EVA_MODULES)))


def _suggest(name: str, choices: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def default_patch_size(arch: str) -> int:
    """The patch size an architecture uses when none is given, e.g. 16 for ``vit_tiny_patch16_224``."""
    from edgedistill.config import patch_size_in_name

    if named := patch_size_in_name(arch):
        return named
    # No size in the name: build it once on the meta device (no memory, no init cost).
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    return int(model.patch_embed.patch_size[0])


MIN_GRID = 4  # patches per side an automatic patch size leaves a small image (32 px: 4x4)


def fitted_patch_size(arch: str, img_size: int) -> int:
    """The patch size for ``arch`` at ``img_size`` when the config sets none: the architecture's
    own where it divides the image into at least ``MIN_GRID`` patches per side (224 px: 16,
    14x14), else the largest size below it that does (32 px: 8, a 4x4 grid, where the
    architecture's 16 would give 2x2)."""
    own = default_patch_size(arch)
    if img_size % own == 0 and img_size // own >= MIN_GRID:
        return own
    for patch in range(min(own, img_size // MIN_GRID), 0, -1):
        if img_size % patch == 0:
            return patch
    return own


def vit_kwargs(arch: str, img_size: int, patch_size: int = 0, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments ``create_vit`` passes to ``timm.create_model`` (besides
    ``pretrained`` and ``num_classes=0``); what a backbone's JSON records as ``kwargs``.

    ``Eva`` architectures get ``global_pool="token"`` unless given another: timm's default for
    DINOv3 is average pooling, while the feature here (and upstream DINOv3's) is the CLS token,
    so ``model(x)`` in plain timm then returns the same feature."""
    import timm

    if "." in arch and timm.is_model(arch):
        raise EdgeDistillError(
            f"{arch!r} names pretrained weights, not an architecture: use {arch.split('.')[0]!r} as the "
            f"architecture (pass {arch!r} as the teacher source to download those weights)"
        )
    if not timm.is_model(arch):
        raise EdgeDistillError(f"unknown timm architecture {arch!r}{_suggest(arch, timm.list_models('vit_*'))}")
    if arch not in set(vit_archs()):
        raise EdgeDistillError(
            f"{arch!r} is not a timm VisionTransformer or Eva (DINOv3-style) ViT; edgedistill needs a ViT "
            f"teacher/student (e.g. vit_small_patch16_224, vit_small_patch14_reg4_dinov2, vit_small_patch16_dinov3)"
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
    used = {"img_size": img_size, "patch_size": patch, **kwargs}
    if _is_eva_arch(arch):
        used.setdefault("global_pool", "token")
    return used


def register_count(model: nn.Module) -> int:
    """Register (storage) tokens between the CLS token and the patches: 4 for DINOv2-reg4 and DINOv3."""
    return int(model.num_prefix_tokens) - 1


def is_rope_model(model: nn.Module) -> bool:
    """True for timm ``Eva`` models (rotary position embeddings inside attention)."""
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def _check_vit(model: nn.Module, name: str) -> None:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    if not model.has_class_token:
        raise EdgeDistillError(f"{name} has no class token; edgedistill's feature is the CLS token after the final norm")
    last = model.blocks[-1]
    # Only Block.forward/Attention.forward are re-implemented; a subclass that
    # overrides either would be silently mis-computed, so refuse it.
    if not isinstance(last, Block) or type(last).forward is not Block.forward:
        raise EdgeDistillError(f"{name}: unsupported block type {type(last).__name__} (need timm's pre-norm Block)")
    if not isinstance(last.attn, Attention) or type(last.attn).forward is not Attention.forward:
        raise EdgeDistillError(f"{name}: unsupported attention type {type(last.attn).__name__} (need timm's Attention)")


def _check_eva(model: nn.Module, name: str) -> None:
    from timm.models.eva import EvaAttention, EvaBlock

    if model.cls_token is None:
        raise EdgeDistillError(f"{name} has no class token; edgedistill's feature is the CLS token after the final norm")
    if getattr(model, "rope_mixed", False):
        raise EdgeDistillError(f"{name} uses mixed (per-block, learned) RoPE, which edgedistill does not support; "
                               "use a DINOv3-style model (rope_type='dinov3' or 'cat')")
    last = model.blocks[-1]
    if not isinstance(last, EvaBlock) or type(last).forward is not EvaBlock.forward:
        raise EdgeDistillError(f"{name}: unsupported block type {type(last).__name__} (need timm's pre-norm EvaBlock)")
    if not isinstance(last.attn, EvaAttention) or type(last.attn).forward is not EvaAttention.forward:
        raise EdgeDistillError(f"{name}: unsupported attention type {type(last.attn).__name__} (need timm's EvaAttention)")


def check_supported(model: nn.Module, arch: str = "") -> None:
    """Raise EdgeDistillError unless ``model`` is a ViT this package can run: a timm
    ``VisionTransformer`` (pre-norm ``Block``s, ``Attention``) or ``Eva`` (pre-norm ``EvaBlock``s,
    ``EvaAttention``, RoPE other than 'mixed'), with one CLS token first (register tokens may
    follow it) and a final norm on the tokens."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    name = arch or type(model).__name__
    if isinstance(model, VisionTransformer):
        _check_vit(model, name)
    elif isinstance(model, Eva):
        _check_eva(model, name)
    else:
        raise EdgeDistillError(f"{name} is not a timm VisionTransformer or Eva ({type(model).__name__})")
    if isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity):
        raise EdgeDistillError(
            f"{name} normalizes after average pooling (fc_norm); edgedistill's feature is the CLS token "
            "after the final norm: pass global_pool='token'"
        )


def create_vit(arch: str, img_size: int, patch_size: int = 0, **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build a randomly initialised timm ViT backbone (``num_classes=0``).

    Returns ``(model, kwargs_used)``; ``timm.create_model(arch, num_classes=0, **kwargs_used)``
    rebuilds the same architecture (it is what ``save_backbone`` writes into the JSON).
    """
    import timm

    used = vit_kwargs(arch, img_size, patch_size, **kwargs)
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **used)
    except (TypeError, AssertionError) as exc:  # an option the model class does not take or allow
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "class token" in reason.lower():  # Eva refuses token pooling without one
            raise EdgeDistillError(f"{arch} has no class token; edgedistill's feature is the CLS token "
                                   "after the final norm") from None
        raise EdgeDistillError(f"invalid model option for {arch}: {reason}") from None
    check_supported(model, arch)
    return model, used


def _run_blocks(model: nn.Module, x: Tensor, rope: Tensor | None, explicit: bool) -> Tensor:
    """Every block but the last, as timm runs them (fused attention, gradient checkpointing
    when the model has it on); ``explicit`` re-runs them with full attention matrices instead."""
    blocks = model.blocks
    last = len(blocks) - 1
    eva = is_rope_model(model)
    # index the blocks rather than slice: slicing an nn.Sequential builds a new module each call
    if explicit:
        for i in range(last):
            x = (eva_block(blocks[i], x, rope, True) if eva else vit_block(blocks[i], x, True))[0]
        return x
    checkpointing = getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled() \
        and not torch.jit.is_scripting()
    if checkpointing and eva:
        from timm.models._manipulate import checkpoint

        for i in range(last):
            x = checkpoint(blocks[i], x, rope=rope)
    elif checkpointing:
        from timm.models._manipulate import checkpoint_seq

        if last:
            x = checkpoint_seq([blocks[i] for i in range(last)], x)
    else:
        for i in range(last):
            x = blocks[i](x, rope=rope) if eva else blocks[i](x)
    return x


def forward_with_cls_attention(model: nn.Module, x: Tensor, *, explicit_all_blocks: bool = False,
                               keep_registers: bool = False) -> tuple[Tensor, Tensor]:
    """Tokens after the final norm, as timm's ``forward_features`` returns them ``(B, 1+R+N, D)``
    (CLS, R register tokens, N patches), and the last block's post-softmax attention for the
    CLS query. Gradients flow through both.

    The row is ``(B, H, 1+N)`` over CLS + patches, register columns removed and the row
    renormalized; ``keep_registers=True`` returns the full row ``(B, H, 1+R+N)``. Without
    registers both are the same. ``explicit_all_blocks=True`` computes every block with a full
    explicit attention matrix (the naive baseline the benchmark compares against).
    """
    rope = None
    x = model.patch_embed(x)
    if is_rope_model(model):
        x, rope = model._pos_embed(x)
    else:
        x = model._pos_embed(x)
        x = model.patch_drop(x)
    x = model.norm_pre(x)
    x = _run_blocks(model, x, rope, explicit_all_blocks)
    last = model.blocks[-1]
    if is_rope_model(model):
        x, row = eva_block(last, x, rope, explicit_all_blocks)
    else:
        x, row = vit_block(last, x, explicit_all_blocks)
    if not keep_registers:
        row = drop_register_columns(row, register_count(model))
    return model.norm(x), row


def forward_cls(model: nn.Module, x: Tensor) -> Tensor:
    """The evaluated/exported feature: CLS token after the final norm, ``(B, D)``."""
    return model.forward_features(x)[:, 0]
