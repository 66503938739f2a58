"""Saved backbones: ``<name>.safetensors`` + ``<name>.json``.

The JSON names the timm architecture and the kwargs that rebuild it, so plain timm loads the
pair without edgedistill installed::

    meta = json.load(open("student.json"))
    model = timm.create_model(meta["arch"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file="student.safetensors"), **meta["kwargs"])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from edgedistill.errors import EdgeDistillError

__all__ = ["save_backbone", "load_backbone", "find_backbone_json", "FEATURE", "FORMAT"]

FEATURE = "cls after final norm"
FORMAT = "edgedistill-backbone/1"
ROLES = ("student", "teacher")


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP (.module) and torch.compile (._orig_mod) wrappers would prefix every key.
    for _ in range(3):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ in ("DistributedDataParallel", "DataParallel") and hasattr(model, "module"):
            model = model.module
    return model


def save_backbone(model: nn.Module, out_dir: str | Path, name: str, arch: str, kwargs: dict[str, Any], role: str,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/<name>.safetensors`` and ``out_dir/<name>.json`` atomically (weights
    first, so a JSON always describes complete weights). Returns the safetensors path."""
    import timm
    from safetensors.torch import save_file

    import edgedistill
    from edgedistill.utils import atomic_path, atomic_write_json, sha256_file

    model = _unwrap(model)
    if getattr(model, "num_classes", 0) != 0:
        raise ValueError("save_backbone expects a backbone built with num_classes=0")
    out_dir = Path(out_dir)
    weights = out_dir / f"{name}.safetensors"
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": arch, "kwargs": json.dumps(kwargs)})
    patch = model.patch_embed.patch_size
    img = model.patch_embed.img_size
    meta: dict[str, Any] = {
        "format": FORMAT,
        "arch": arch,
        "kwargs": dict(kwargs),
        "role": role,
        "feature": FEATURE,
        "embed_dim": int(model.embed_dim),
        "num_heads": int(model.blocks[-1].attn.num_heads),
        "depth": len(model.blocks),
        "img_size": int(img[0]) if img is not None else int(kwargs.get("img_size", 0)),
        "patch_size": int(patch[0]),
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "edgedistill_version": edgedistill.__version__,
        "timm_version": timm.__version__,
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"extra key {key!r} would overwrite a backbone field")
        meta[key] = value
    atomic_write_json(out_dir / f"{name}.json", meta)
    return weights


def find_backbone_json(path: str | Path, role: str | None = None) -> Path:
    """The JSON of a saved backbone given a run directory, a ``.json`` or a ``.safetensors``.
    In a directory, ``role`` picks ``<role>.json``; without it ``student`` then ``teacher``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EdgeDistillError(f"backbone not found: {path}")
    if path.is_dir():
        roles = (role,) if role else ROLES
        for r in roles:
            if (path / f"{r}.json").is_file() and (path / f"{r}.safetensors").is_file():
                return path / f"{r}.json"
        want = " or ".join(f"{r}.json + {r}.safetensors" for r in roles)
        hint = " (is the run finished? checkpoint.pt alone is a resumable training state)" \
            if (path / "checkpoint.pt").exists() else ""
        raise EdgeDistillError(f"{path} holds no saved backbone: expected {want}{hint}")
    if path.suffix == ".json":
        return path
    if path.suffix == ".safetensors":
        sibling = path.with_suffix(".json")
        if not sibling.is_file():
            raise EdgeDistillError(
                f"{path} has no {sibling.name} beside it (the architecture and kwargs); pass the file as a "
                "checkpoint together with its architecture instead"
            )
        return sibling
    raise EdgeDistillError(f"{path} is not a saved backbone (expected a run directory, .json or .safetensors)")


def load_backbone(path: str | Path, role: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and strictly load a backbone written by ``save_backbone``; eval mode.

    Returns ``(model, meta)`` where ``meta`` is the JSON plus ``json_path`` and ``weights_path``.
    """
    from edgedistill.models.checkpoints import load_backbone_strict, read_checkpoint
    from edgedistill.models.vit import create_vit
    from edgedistill.utils import read_json, sha256_file

    json_path = find_backbone_json(path, role)
    meta = read_json(json_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str) or not isinstance(meta.get("kwargs"), dict):
        raise EdgeDistillError(f"{json_path} is not a backbone description (needs 'arch' and 'kwargs')")
    weights = json_path.parent / str(meta.get("weights") or json_path.with_suffix(".safetensors").name)
    if not weights.is_file():
        raise EdgeDistillError(f"{json_path} names weights {weights.name}, which do not exist in {json_path.parent}")
    digest = sha256_file(weights)
    if meta.get("sha256") and meta["sha256"] != digest:
        raise EdgeDistillError(f"{weights} does not match the sha256 in {json_path.name} (changed or corrupted since it was saved)")
    kwargs = dict(meta["kwargs"])
    img_size = kwargs.pop("img_size", meta.get("img_size"))
    if not img_size:
        raise EdgeDistillError(f"{json_path} records no img_size")
    patch_size = kwargs.pop("patch_size", 0)
    model, _ = create_vit(meta["arch"], img_size, patch_size, **kwargs)
    load_backbone_strict(model, read_checkpoint(weights), f"{weights}")
    model.eval()
    meta = dict(meta, json_path=str(json_path), weights_path=str(weights), sha256=digest)
    return model, meta
