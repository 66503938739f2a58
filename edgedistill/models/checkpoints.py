"""Reading ViT checkpoints in the layouts users actually have, safely and strictly (design.md §3, §10).

- Files are read with safetensors or ``torch.load(weights_only=True)``: no code in a pickle
  from outside ever runs. Plain data that training scripts store beside the weights
  (``argparse.Namespace`` args, paths, numpy scalars) is allowed; anything else is refused.
- ``extract_backbone`` finds the ViT inside DINO, iBOT and Mugs (backbone-only and full
  ``teacher``/``student`` training checkpoints with ``module.``/``backbone.`` prefixes), MAE
  (``model``), iBOT's extracted backbones (``state_dict``), MSN/I-JEPA (``target_encoder``/
  ``encoder``), DINOv2 (released backbones, ``{"teacher": ...}`` evaluation checkpoints),
  DINOv3 released backbones and plain timm state dicts, by choosing the sub-dict and key prefix
  that best match the target model's keys.
- ``adapt_to_model`` maps the DINOv2/DINOv3 release names to timm's (``release_layouts``) and
  resamples position embeddings to the model's grid with the family's interpolation
  (``pos_embed``: DINOv2's own for DINOv2 architectures, timm's otherwise).
- ``load_backbone_strict`` refuses missing, misshapen or unexpected backbone weights: a wrong
  checkpoint or architecture is an error, never a silently random teacher.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from edgedistill.errors import EdgeDistillError

__all__ = [
    "read_checkpoint",
    "read_state_dict",
    "flatten_tensors",
    "extract_backbone",
    "adapt_to_model",
    "load_backbone_strict",
    "load_checkpoint_into",
]

# Keys of heads and training-only parts that a backbone may leave behind in a checkpoint:
# classifier heads, DINO/iBOT heads (head.mlp.*, head.last_layer.*), projectors, MSN's
# fc head and prototypes, MAE decoders and mask tokens (DINOv2/DINOv3 mask_token, iBOT's
# student masked_embed), Mugs's relation_blocks (its local-group branch: Mugs's own k-NN skips
# them) and DINOv3's local_cls_norm (local crops in training). Anything else unexpected means
# a wrong architecture.
_IGNORABLE_PREFIXES = (
    "head.", "head_dist.", "heads.", "fc.", "fc_norm.", "last_layer.", "projector.", "projection_head.",
    "prototypes", "predictor", "decoder", "mask_token", "pre_logits.", "masked_embed", "relation_blocks.",
    "local_cls_norm.",
)

# Sub-dict preference when two candidates match the model equally well (e.g. DINO's
# teacher and student): EMA/teacher weights first, the online student last.
_PREFERRED = ("teacher", "target_encoder", "model_ema", "state_dict_ema", "ema")
_LAST = ("student", "encoder", "online")


def _safe_globals() -> list[Any]:
    """Plain-data classes that training scripts pickle beside their weights (DINO and MAE
    store ``args`` as an ``argparse.Namespace``; others store paths and numpy scalars).
    Reconstructing them runs no user code."""
    import numpy as np

    allowed: list[Any] = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath,
                          pathlib.WindowsPath, pathlib.PureWindowsPath, np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or np.core
    for fn_name in ("scalar", "_reconstruct"):
        fn = getattr(core.multiarray, fn_name, None)
        if fn is not None:
            allowed.append(fn)
            # checkpoints written with numpy 1.x name the old module
            allowed.append((fn, f"numpy.core.multiarray.{fn_name}"))
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed.extend(v for v in vars(dtypes).values() if isinstance(v, type) and issubclass(v, np.dtype))
    return allowed


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object
    return len(head) >= 9 and head[8:9] == b"{"


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a checkpoint file (a possibly nested dict), read without
    executing code. ``.safetensors`` via safetensors, anything else via
    ``torch.load(map_location="cpu", weights_only=True)``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeDistillError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise EdgeDistillError(f"checkpoint is not a file: {path}")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise EdgeDistillError(f"checkpoint {path} is empty")
    if _looks_like_safetensors(head) or path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError and friends: a corrupt or foreign file
            raise EdgeDistillError(f"{path} is not a readable safetensors file ({_short(exc)})") from None
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
        if names:
            raise EdgeDistillError(
                f"refusing to unpickle code from {path} (it needs {', '.join(names)}); edgedistill only "
                "loads tensors and plain data. Convert it where you trust it: "
                "safetensors.torch.save_file(model.state_dict(), 'backbone.safetensors')"
            ) from None
        raise EdgeDistillError(f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another format)") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise EdgeDistillError(f"{path} is not a readable PyTorch checkpoint ({_short(exc)})") from None


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Every tensor in nested mappings, keyed by its dotted path
    (``{"teacher": {"backbone.x": t}}`` -> ``{"teacher.backbone.x": t}``)."""
    out: dict[str, Tensor] = {}
    if isinstance(obj, Tensor):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            out.update(flatten_tensors(value, f"{prefix}{key}."))
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint file as one flat dict (nested entries joined with dots)."""
    return flatten_tensors(read_checkpoint(path))


def _rank(prefix: str) -> int:
    parts = prefix.rstrip(".").split(".")
    if any(p in _PREFERRED for p in parts):
        return 0
    if any(p in _LAST for p in parts):
        return 2
    return 1


def extract_backbone(obj: Any, model_keys: Iterable[str], info: dict[str, Any] | None = None,
                     source: str = "the checkpoint") -> dict[str, Tensor]:
    """The backbone's tensors from a checkpoint object, keyed like the model.

    Picks the key prefix (``teacher.module.backbone.``, ``model.``, ``target_encoder.module.``,
    ``""``, ...) under which most of ``model_keys`` are found; ties prefer teacher/EMA entries.
    Keys outside that prefix (other networks, heads outside the backbone, optimizer state) are
    dropped; heads inside it are left for ``load_backbone_strict`` to judge. ``info`` (if given)
    receives ``prefix``, ``matched`` and ``dropped`` for provenance.
    """
    flat = flatten_tensors(obj)
    wanted = set(model_keys)
    if not flat:
        raise EdgeDistillError(f"{source} holds no tensors")
    hits: dict[str, set[str]] = {}
    for key in flat:
        # every dotted suffix of the key that is a model key proposes the rest as a prefix
        start = 0
        while True:
            if key[start:] in wanted:
                hits.setdefault(key[:start], set()).add(key[start:])
            start = key.find(".", start) + 1
            if start == 0:
                break
    if not hits:
        held = (f"one tensor of shape {tuple(flat[''].shape)}, not named weights" if list(flat) == [""]
                else f"first keys: {', '.join(list(flat)[:5])}")
        raise EdgeDistillError(f"no ViT backbone weights found in {source} ({held}); is it a ViT checkpoint?")
    prefix = max(hits, key=lambda p: (len(hits[p]), -_rank(p), -len(p)))
    state = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    if info is not None:
        info.update(prefix=prefix, matched=len(hits[prefix]), dropped=len(flat) - len(state))
    return state


def _check_patch_size(state: dict[str, Tensor], model: nn.Module, source: str) -> None:
    proj = state.get("patch_embed.proj.weight")
    want = getattr(getattr(getattr(model, "patch_embed", None), "proj", None), "weight", None)
    if proj is not None and want is not None and proj.ndim == 4 and tuple(proj.shape[-2:]) != tuple(want.shape[-2:]):
        raise EdgeDistillError(
            f"{source} has patch size {proj.shape[-1]} but the model patch size {want.shape[-1]}: "
            f"set patch_size={proj.shape[-1]} (or the matching architecture)"
        )


def _resample_pos_embed(state: dict[str, Tensor], model: nn.Module, info: dict[str, Any] | None) -> None:
    """A square-grid ``pos_embed`` of another size resampled to the model's grid with its family's
    interpolation (``pos_embed.resample_pos_embed``: DINOv2's own, else timm's); prefix rows kept."""
    from edgedistill.models.pos_embed import resample_pos_embed

    pos = state.get("pos_embed")
    resampled = resample_pos_embed(pos, model) if pos is not None else None
    if resampled is None or resampled is pos:
        return
    state["pos_embed"] = resampled
    if info is not None:
        info["pos_embed_resampled"] = [list(pos.shape), list(resampled.shape)]


def adapt_to_model(state: dict[str, Tensor], model: nn.Module, info: dict[str, Any] | None = None,
                   source: str = "checkpoint") -> dict[str, Tensor]:
    """``state`` in the model's names and shapes: DINOv2/DINOv3 release names mapped to timm's
    (``release_layouts``), older ViT conventions (a linear patch embedding, DeiT/iBOT
    ``gamma_1`` LayerScale naming) converted, and the position embedding resampled to the
    model's grid (a 224-px checkpoint used at another resolution). A different patch size is
    refused: it would be a different model, not a conversion."""
    from edgedistill.models.release_layouts import convert_release_layout
    from edgedistill.models.vit import is_rope_model

    _check_patch_size(state, model, source)
    state = convert_release_layout(state, model, source, info)
    want = getattr(getattr(getattr(model, "patch_embed", None), "proj", None), "weight", None)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key == "patch_embed.proj.weight" and value.ndim == 2 and want is not None and value.numel() == want.numel():
            value = value.reshape(want.shape)  # patchify + linear projection, as a convolution
        elif not is_rope_model(model) and re.fullmatch(r"blocks\.\d+\.gamma_[12]", key):
            key = re.sub(r"gamma_([12])$", r"ls\1.gamma", key)
        out[key] = value
    _resample_pos_embed(out, model, info)
    return out


def _ignorable(key: str) -> bool:
    return key.startswith(_IGNORABLE_PREFIXES)


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_backbone_strict(model: nn.Module, state_dict: dict[str, Tensor], source: str,
                         file_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Copy ``state_dict`` into ``model``; every model weight must be set with its exact shape.

    Missing, misshapen and unexpected (non-head) keys raise EdgeDistillError naming them and
    ``source``; ``file_names`` (model key -> the file's name for it, where a release layout
    names it differently) adds the file's name. Returns ``{"loaded": n, "ignored": [...]}``
    (heads that were skipped).
    """
    names = file_names or {}

    def named(key: str) -> str:
        return f"{key} ({names[key]} in the file)" if key in names else key

    expected = model.state_dict()
    missing = [named(k) for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and not _ignorable(k)]
    ignored = [k for k in state_dict if k not in expected and _ignorable(k)]
    shapes = [
        f"{named(k)} expected {tuple(v.shape)} found {tuple(state_dict[k].shape)}"
        for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone weight(s) missing: {_listing(missing)}")
    if shapes:
        problems.append(f"{len(shapes)} weight(s) of the wrong shape: {_listing(shapes, 3)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weight(s): {_listing(unexpected)}")
    if problems:
        raise EdgeDistillError(
            f"{source} does not match the model: {'; '.join(problems)} "
            "(wrong architecture, depth, width or patch size, or not a backbone checkpoint?)"
        )
    model.load_state_dict({k: state_dict[k] for k in expected}, strict=True)
    return {"loaded": len(expected), "ignored": ignored}


def load_checkpoint_into(model: nn.Module, path: str | Path, source: str | None = None) -> dict[str, Any]:
    """Read ``path`` (any supported layout), adapt it to ``model`` and load it strictly.
    Returns provenance: the prefix used, counts, head keys ignored, resampling done."""
    source = source or f"checkpoint {path}"
    info: dict[str, Any] = {}
    obj = read_checkpoint(path)
    state = extract_backbone(obj, model.state_dict().keys(), info, source)
    state = adapt_to_model(state, model, info, source)
    from edgedistill.models.release_layouts import release_names

    names = release_names(model, info.get("layout", "timm"))
    info.update(load_backbone_strict(model, state, source, names))
    return info
