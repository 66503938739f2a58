"""The frozen teacher behind ``--teacher`` (design.md §3): "random", a run directory, a checkpoint file plus
architecture, or a timm hub name. Always loaded strictly; a teacher never silently stays random
(only ``random`` is random, and it says so).

Teacher families: timm ``VisionTransformer``s (DINO, MAE, MSN, iBOT, Mugs, DINOv2 with or
without registers) and ``Eva`` DINOv3 models, by hub name (``vit_small_patch14_reg4_dinov2.lvd142m``,
``vit_small_patch16_dinov3.lvd1689m``) or as a release file plus the timm architecture
(``checkpoints`` and ``release_layouts`` map the original layouts; ``pos_embed`` keeps each
family's position-embedding semantics: DINOv2's interpolation, DINOv3's stored RoPE periods)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch.nn as nn

from edgedistill.errors import EdgeDistillError

__all__ = ["load_teacher", "build_teacher", "check_teacher_source", "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt", ".tar")


def _looks_like_path(source: str) -> bool:
    return (
        "/" in source or "\\" in source or source.startswith((".", "~"))
        or Path(source).suffix.lower() in CHECKPOINT_SUFFIXES + (".json",)
    )


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


SOURCES = "a run directory, a checkpoint file (.pth/.pt/.safetensors), a timm hub name or 'random'"


def load_teacher(source: str, arch: str, img_size: int, patch_size: int = 0,
                 **kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build the teacher (eval mode, ``requires_grad=False``) and describe it for provenance.

    ``arch``/``img_size``/``patch_size``/``kwargs`` (e.g. ``depth``) apply to ``random`` and
    checkpoint files; a run directory brings its own architecture; a hub name is its own
    architecture (at ``img_size``, the position embedding resampled the family's way:
    ``pos_embed``).
    The returned dict has ``kind`` (random|run_dir|backbone|file|hub), ``source``, ``arch``,
    ``kwargs``, and where it applies ``path``, ``sha256``, ``notes`` and loading details.
    """
    source = str(source).strip()
    if not source:
        raise EdgeDistillError(f"teacher source is empty (use {SOURCES})")
    if source.lower() == "random":
        return _random(arch, img_size, patch_size, kwargs)
    path = Path(source).expanduser()
    if path.is_dir():
        return _saved(path, arch, img_size, patch_size, source, kind="run_dir")
    if path.is_file():
        if path.suffix == ".json" or (path.suffix == ".safetensors" and path.with_suffix(".json").is_file()):
            return _saved(path, arch, img_size, patch_size, source, kind="backbone")
        return _file(path, arch, img_size, patch_size, kwargs, source)
    if _looks_like_path(source) and not source.startswith(("hf-hub:", "hf_hub:")):
        raise EdgeDistillError(f"teacher not found: {source} (no such file or directory)")
    return _hub(source, arch, img_size, patch_size, kwargs)


def _random(arch: str, img_size: int, patch_size: int, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    from edgedistill.models.vit import create_vit, fitted_patch_size

    model, used = create_vit(arch, img_size, patch_size or fitted_patch_size(arch, img_size), **kwargs)
    warnings.warn(
        f"teacher {arch} is randomly initialized (teacher source 'random'): fine for a smoke test, "
        "meaningless for distillation; pass --teacher to use a real self-supervised teacher",
        UserWarning, stacklevel=3,
    )
    return _freeze(model), {"kind": "random", "source": "random", "arch": arch, "kwargs": used}


def _saved(path: Path, arch: str, img_size: int, patch_size: int, source: str,
           kind: str) -> tuple[nn.Module, dict[str, Any]]:
    from edgedistill.models.backbone_io import find_backbone_json, load_backbone
    from edgedistill.rundir import RunDir

    if path.is_dir() and RunDir.of(path).backbone_role() is None:
        try:  # says which files either role needs
            find_backbone_json(path)
        except EdgeDistillError as exc:
            raise EdgeDistillError(f"teacher {exc}; a teacher source is {SOURCES}") from None
    role = None
    if path.is_dir():
        # pretrain writes teacher.*, distill writes student.*: a teacher source prefers the former
        role = "teacher" if (path / "teacher.json").is_file() else "student"
    model, meta = load_backbone(path, role)
    notes = []
    if arch and arch != meta["arch"]:
        notes.append(f"teacher.arch={arch} ignored: {Path(meta['json_path']).name} says {meta['arch']}")
    saved_img = int(meta["kwargs"].get("img_size", meta.get("img_size", 0)))
    if img_size and saved_img and int(img_size) != saved_img:
        notes.append(f"teacher img_size {img_size} ignored: the saved teacher takes {saved_img}-px images")
    if patch_size and int(patch_size) != int(meta.get("patch_size", patch_size)):
        notes.append(f"teacher patch_size {patch_size} ignored: the saved teacher uses {meta['patch_size']}")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    info = {
        "kind": kind, "source": source, "arch": meta["arch"], "kwargs": meta["kwargs"],
        "path": meta["weights_path"], "json": meta["json_path"], "sha256": meta["sha256"],
        "role": meta.get("role"), "notes": notes,
    }
    return _freeze(model), info


def _file(path: Path, arch: str, img_size: int, patch_size: int, kwargs: dict[str, Any],
          source: str) -> tuple[nn.Module, dict[str, Any]]:
    from edgedistill.models.checkpoints import load_checkpoint_into
    from edgedistill.models.vit import create_vit
    from edgedistill.utils import sha256_file

    model, used = create_vit(arch, img_size, patch_size, **kwargs)
    details = load_checkpoint_into(model, path, source=f"teacher checkpoint {path} (as {arch})")
    info = {
        "kind": "file", "source": source, "arch": arch, "kwargs": used, "path": str(path.resolve()),
        "sha256": sha256_file(path), "load": details,
    }
    return _freeze(model), info


def _hub_local_file(cfg: Any) -> str | None:
    """A copy of the hub weights already on this machine (HF cache or torch hub cache)."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = hub_id.partition("@")
            names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else []
            from edgedistill.network import hf_cache_dir

            cache_dir = str(hf_cache_dir())
            for name in names + ["model.safetensors", "pytorch_model.bin"]:
                found = try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=revision or None)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = getattr(cfg, "url", None)
    if url:
        import torch.hub

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def _hub_weights(name: str) -> tuple[str, Any, str | None]:
    """A hub name checked: (its architecture, timm's pretrained config, a copy of the weights
    already on this machine or None)."""
    import timm

    from edgedistill.models.vit import vit_archs

    if name.startswith(("hf-hub:", "hf_hub:")):
        raise EdgeDistillError(
            f"{name}: hf-hub: sources are not supported; use a timm pretrained name "
            "(e.g. vit_small_patch16_224.dino) or a local checkpoint file"
        )
    base = name.split(".")[0]
    if not timm.is_model(base):
        close = _close(name, timm.list_pretrained("vit_*") + timm.list_pretrained("deit_*"))
        raise EdgeDistillError(
            f"unknown teacher source {name!r}: not a file or directory, and not a timm model name{close}"
        )
    if base not in vit_archs():
        raise EdgeDistillError(f"{name!r} is not a timm VisionTransformer or Eva (DINOv3); edgedistill needs a ViT teacher")
    available = [a for a in timm.list_pretrained(f"{base}*") if a.split(".")[0] == base]
    if ("." in name and name not in available) or not available:
        listed = ", ".join(available[:8]) if available else "none"
        raise EdgeDistillError(f"timm has no pretrained weights named {name!r} (available for {base}: {listed})")
    cfg = timm.models.get_pretrained_cfg(name)  # without a tag: timm's default weights for base
    return base, cfg, (_hub_local_file(cfg) if cfg is not None else None)


def _check_hub_reachable(name: str, base: str, cfg: Any) -> None:
    """Fail in seconds, in one line, when the weights must be downloaded and the hub cannot be
    reached (offline mode set, no DNS, no route): the hub client would retry for a minute."""
    from edgedistill.network import HUB_ENDPOINT, hf_offline, unreachable

    if hf_offline():
        raise EdgeDistillError(_download_message(name, base, cfg, "offline mode is set (HF_HUB_OFFLINE) and the weights are not cached"))
    url = (os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT) if getattr(cfg, "hf_hub_id", None) else getattr(cfg, "url", None)
    reason = unreachable(url or HUB_ENDPOINT)
    if reason:
        raise EdgeDistillError(_download_message(name, base, cfg, reason))


def check_teacher_source(teacher: Any) -> None:
    """What can be checked of a ``teacher.*`` section before a run starts, in seconds: a hub
    name is known and its weights are cached or downloadable (so an offline machine fails
    before a run directory exists). Other sources are checked when loaded."""
    source = str(teacher.source).strip()
    if not source or source.lower() == "random" or Path(source).expanduser().exists() or _looks_like_path(source):
        return
    base, cfg, local = _hub_weights(source)
    if local is None:
        _check_hub_reachable(source, base, cfg)


def _hub(name: str, arch: str, img_size: int, patch_size: int, kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    from edgedistill.models.vit import check_supported, default_patch_size, vit_kwargs

    base, cfg, local = _hub_weights(name)
    arch_patch = default_patch_size(base)
    if patch_size and int(patch_size) != arch_patch:
        raise EdgeDistillError(
            f"{name} has patch size {arch_patch}; teacher patch_size {patch_size} does not fit its weights "
            "(leave patch_size at 0 for a hub teacher)"
        )
    used = vit_kwargs(base, img_size, arch_patch, **kwargs)
    notes = []
    if arch and arch != base:
        notes.append(f"teacher.arch={arch} ignored: the hub name {name} fixes the architecture {base}")
        warnings.warn(notes[-1], UserWarning, stacklevel=3)

    create_kwargs: dict[str, Any] = dict(used)
    native = _native_size_for_own_interpolation(base, cfg, used["img_size"])
    if native:
        create_kwargs["img_size"] = native  # the weights as released; resized below, the family's way
    if local is not None:
        create_kwargs["pretrained_cfg_overlay"] = dict(file=local)
    else:
        _check_hub_reachable(name, base, cfg)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, **create_kwargs)
    except RuntimeError as exc:
        if "state_dict" in str(exc) or "size mismatch" in str(exc):
            raise EdgeDistillError(
                f"the pretrained weights of {name} do not fit the requested options {kwargs or {}} "
                f"({str(exc).splitlines()[0][:150]})"
            ) from None
        raise EdgeDistillError(_download_message(name, base, cfg, str(exc).splitlines()[0][:150])) from None
    except Exception as exc:  # network/hub errors: LocalEntryNotFoundError, HTTP errors, OSError, ...
        reason = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else type(exc).__name__
        raise EdgeDistillError(_download_message(name, base, cfg, reason)) from None
    if native:
        from edgedistill.models.pos_embed import set_input_size

        set_input_size(model, used["img_size"])
    check_supported(model, name)
    info = {
        "kind": "hub", "source": name, "arch": base, "kwargs": used, "notes": notes,
        "hf_hub_id": getattr(cfg, "hf_hub_id", None), "url": getattr(cfg, "url", None),
        "path": local,
    }
    if local is not None:
        from edgedistill.utils import sha256_file

        info["sha256"] = sha256_file(local)
    return _freeze(model), info


def _native_size_for_own_interpolation(arch: str, cfg: Any, img_size: int) -> int:
    """The hub weights' own image size where the family resamples its position embedding
    otherwise than timm's loader would (DINOv2, ``pos_embed.dinov2_interpolation``) and the
    teacher runs at another size; 0 where timm's loader does the right thing."""
    from edgedistill.models.pos_embed import dinov2_interpolation

    size = getattr(cfg, "input_size", None)
    native = int(size[-1]) if size else 0
    return native if dinov2_interpolation(arch) is not None and native and native != int(img_size) else 0


def _close(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _download_message(name: str, base: str, cfg: Any, reason: str) -> str:
    url = getattr(cfg, "url", None) or ""
    filename = os.path.basename(url) if url.endswith((".pth", ".pt", ".bin", ".safetensors")) else "checkpoint.pth"
    where = f" (the original file: {url})" if url else ""
    return (
        f"could not download the pretrained weights of {name} from the hub ({reason}). Without network access, "
        f"download the checkpoint elsewhere{where} and pass the local file instead: "
        f"--teacher path/to/{filename} --set teacher.arch={base}"
    )


def build_teacher(teacher: Any, img_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The frozen teacher a ``teacher.*`` config section (``config.TeacherConfig``) describes,
    at ``img_size`` (for a run: ``Config.teacher_img_size``); the one place a config becomes a
    teacher, for training, evaluation, attention maps and the pipeline alike."""
    return load_teacher(teacher.source, teacher.arch, img_size, teacher.patch_size,
                        **({"depth": teacher.depth} if teacher.depth else {}))
