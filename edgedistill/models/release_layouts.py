"""The official DINOv2 and DINOv3 release layouts, mapped explicitly to timm's parameter names.

DINOv2 (``facebookresearch/dinov2``, ``DinoVisionTransformer``) -> timm ``VisionTransformer``:

- ``register_tokens`` -> ``reg_token``. DINOv2 adds its position embedding to CLS + patches and
  inserts the registers after it, unembedded; timm's ``*_reg4_dinov2`` models
  (``no_embed_class=True``) embed neither CLS nor registers, so the CLS position embedding is
  folded into ``cls_token`` and ``pos_embed`` keeps the patch part only. Same function.
- FSDP-chunked blocks (``block_chunks > 0``) ``blocks.<chunk>.<i>.*`` -> ``blocks.<i>.*``.
- the giant's fused SwiGLU ``mlp.w12`` / ``mlp.w3`` -> ``mlp.fc1`` / ``mlp.fc2`` (timm packs it
  the same way, gate first); ``ls1.gamma``/``ls2.gamma`` and the rest already match.

DINOv3 (``facebookresearch/dinov3``) -> timm ``Eva`` (``vit_*_patch16_dinov3[_qkvb]``):

- ``storage_tokens`` -> ``reg_token``; ``ls1.gamma``/``ls2.gamma`` -> ``gamma_1``/``gamma_2``;
  SwiGLU ``mlp.w1``/``w2``/``w3`` -> ``mlp.fc1_g``/``fc1_x``/``fc2``.
- ``attn.qkv.bias`` -> ``attn.q_bias`` + ``attn.v_bias``: the k third is masked to zero by
  ``attn.qkv.bias_mask`` (checked to be that mask); timm's k bias is a fixed zero. An
  architecture without q/v biases takes the file only if those biases are all zero.
- ``rope_embed.periods`` (a persistent buffer there; timm computes its own and saves none) is
  checked against the model's RoPE periods (to bf16 precision, the dtype the releases store),
  then used in their place (``pos_embed.use_rope_periods``), as DINOv3's released models use
  the stored values.
- ``local_cls_norm.*`` (used for local crops in training only) is left for the loader to ignore;
  an untied ``cls_norm.*`` (CLS normalized apart from patches) has no timm counterpart: refused.

Every conversion is strict about what it reads: a misshapen bias or a wrong rotary embedding is
an error naming the key. ``release_names`` gives, for messages, the file's name of a model key.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from edgedistill.errors import EdgeDistillError
from edgedistill.models.pos_embed import use_rope_periods

__all__ = ["convert_release_layout", "release_names"]

_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_DINOV3_RENAMES = (("storage_tokens", "reg_token"), (".ls1.gamma", ".gamma_1"), (".ls2.gamma", ".gamma_2"),
                   (".mlp.w1.", ".mlp.fc1_g."), (".mlp.w2.", ".mlp.fc1_x."), (".mlp.w3.", ".mlp.fc2."))
_PERIODS_RTOL = 2 ** -7  # bf16 keeps 8 significant bits; released periods are stored rounded to them


def _is_eva(model: nn.Module) -> bool:
    from timm.models.eva import Eva

    return isinstance(model, Eva)


def layout_of(state: dict[str, Tensor], model: nn.Module) -> str:
    """``"dinov3"``, ``"dinov2"`` or ``"timm"`` (already timm's names)."""
    keys = state.keys()
    if _is_eva(model):
        official = ("storage_tokens", "rope_embed.periods")
        if any(k in keys for k in official) or any(k.endswith((".ls1.gamma", ".attn.qkv.bias")) for k in keys):
            return "dinov3"
        return "timm"
    if "register_tokens" in keys or any(_CHUNKED.match(k) or ".mlp.w12." in k for k in keys):
        return "dinov2"
    return "timm"


def convert_release_layout(state: dict[str, Tensor], model: nn.Module, source: str,
                           info: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """``state`` in timm's names for ``model``; unchanged when it already uses them.
    ``info`` (if given) receives ``layout``, and ``rope_periods: "file"`` where the file's
    DINOv3 RoPE periods replaced timm's (a side effect on ``model``)."""
    layout = layout_of(state, model)
    if info is not None:
        info["layout"] = layout
    if layout == "dinov2":
        return _from_dinov2(state, model, source)
    if layout == "dinov3":
        if info is not None and "rope_embed.periods" in state:
            info["rope_periods"] = "file"
        return _from_dinov3(state, model, source)
    return state


def _from_dinov2(state: dict[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _CHUNKED.match(key)
        if match:
            key = f"blocks.{match.group(2)}.{match.group(3)}"
            if key in out:
                raise EdgeDistillError(f"{source} holds block {match.group(2)} in two chunks ({key})")
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", key)
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", key)
        out[key] = value
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        if not getattr(model, "no_embed_class", False):
            raise EdgeDistillError(
                f"{source} is a DINOv2 checkpoint with registers, which needs a model without position "
                "embeddings on CLS/registers (no_embed_class=True): use a timm *_reg4_dinov2 architecture"
            )
        if "pos_embed" in out and "cls_token" in out:
            pos = out.pop("pos_embed")
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]
    return out


def _split_qkv_bias(out: dict[str, Tensor], key: str, bias: Tensor, mask: Tensor | None,
                    model_keys: set[str], width: int, source: str) -> None:
    """``blocks.i.attn.qkv.bias`` -> ``q_bias`` and ``v_bias`` (the k third is masked off)."""
    if tuple(bias.shape) != (width,):
        raise EdgeDistillError(f"{source}: {key} expected ({width},) found {tuple(bias.shape)}")
    q, k, v = bias.chunk(3)
    if mask is not None:
        expected = torch.cat([torch.ones_like(q), torch.zeros_like(k), torch.ones_like(v)])
        if tuple(mask.shape) != (width,) or not torch.equal(mask.float(), expected.float()):
            raise EdgeDistillError(f"{source}: {key}_mask is not DINOv3's k-bias mask (1 for q and v, 0 for k)")
    elif k.abs().max() > 0:
        raise EdgeDistillError(f"{source}: {key} has a non-zero k bias, which timm's EvaAttention fixes at zero")
    base = key[: -len("qkv.bias")]
    if base + "q_bias" in model_keys:
        out[base + "q_bias"], out[base + "v_bias"] = q, v
    elif q.abs().max() > 0 or v.abs().max() > 0:
        raise EdgeDistillError(f"{source}: {key} has non-zero q/v biases but the architecture has none "
                               "(use the *_dinov3_qkvb variant)")


def _check_periods(periods: Tensor, model: nn.Module, source: str) -> None:
    rope = getattr(model, "rope", None)
    ours = getattr(rope, "periods", None)
    if ours is None:
        raise EdgeDistillError(f"{source} has rope_embed.periods but the model has no DINOv3 rotary embedding")
    if periods.shape != ours.shape:
        raise EdgeDistillError(f"{source}: rope_embed.periods expected {tuple(ours.shape)} found {tuple(periods.shape)} "
                               "(a different head width)")
    rel = ((periods.float() - ours.float()).abs() / ours.float().abs()).max().item()
    if rel > _PERIODS_RTOL:
        raise EdgeDistillError(f"{source}: rope_embed.periods differ from the architecture's RoPE by up to "
                               f"{rel:.1%} (another rope base or period range)")


def _from_dinov3(state: dict[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    untied = sorted(k for k in state if k.startswith("cls_norm."))
    if untied:
        raise EdgeDistillError(f"{source} normalizes CLS apart from the patches ({', '.join(untied)}), "
                               "which timm's Eva does not support")
    model_keys = set(model.state_dict().keys())
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "rope_embed.periods":
            _check_periods(value, model, source)
            use_rope_periods(model, value)
        elif key.endswith(".attn.qkv.bias"):
            width = int(state.get(key[: -len("bias")] + "weight", value).shape[0])
            _split_qkv_bias(out, key, value, state.get(key + "_mask"), model_keys, width, source)
        elif not key.endswith(".attn.qkv.bias_mask"):
            for old, new in _DINOV3_RENAMES:
                key = key.replace(old, new)
            out[key] = value
    return out


def release_names(model: nn.Module, layout: str) -> dict[str, str]:
    """Model key -> the key a ``layout`` file holds it under, for keys whose names differ."""
    names: dict[str, str] = {}
    swiglu = any(k.endswith(".mlp.fc1_g.weight") for k in model.state_dict())
    for key in model.state_dict():
        name = key
        if layout == "dinov3":
            name = name.replace("reg_token", "storage_tokens").replace(".gamma_1", ".ls1.gamma")
            name = name.replace(".gamma_2", ".ls2.gamma").replace(".fc1_g.", ".w1.").replace(".fc1_x.", ".w2.")
            if swiglu:
                name = name.replace(".mlp.fc2.", ".mlp.w3.")
            name = re.sub(r"\.attn\.[qv]_bias$", ".attn.qkv.bias", name)
        elif layout == "dinov2":
            name = name.replace("reg_token", "register_tokens")
        if name != key:
            names[key] = name
    return names
