"""The torch baseline's bench engine (``runtime.worker``'s engine for the torch rows): the
student rebuilt from its safetensors, eager, ``torch.inference_mode``, fp32 or bf16 autocast.
Unlike the runtimes' engines it needs edgedistill (to load the student) and torch."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

__all__ = ["import_runtime", "load"]


def import_runtime() -> None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"torch cannot be imported ({exc})") from None


def load(spec: dict[str, Any], image: np.ndarray) -> tuple[Callable[[np.ndarray], Callable[[], Any]], dict[str, Any]]:
    import torch

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (cannot happen in a fresh process, but harmless)
        pass
    try:
        from edgedistill.models.backbone_io import load_backbone
    except ImportError as exc:
        raise ImportError(f"the torch baseline needs timm and safetensors ({exc})") from None

    started = time.perf_counter()
    try:
        model, meta = load_backbone(spec["model"], role="student")
    except Exception as exc:  # EdgeDistillError (missing, changed) or a broken file
        raise FileNotFoundError(f"cannot load the student from {spec['model']}: {exc}") from None
    expected = spec.get("weights_sha256")
    if expected and meta.get("sha256") != expected:
        raise FileNotFoundError(f"{meta.get('weights_path')} changed since the bundle was exported (sha256 differs)")
    size = tuple(int(v) for v in spec.get("img_size") or image.shape[1:])
    if tuple(model.patch_embed.img_size) != size:
        model.set_input_size(img_size=size)  # as export did for a bundle at another size
    model.eval()
    info: dict[str, Any] = {"load_seconds": time.perf_counter() - started}

    bf16 = spec.get("inference_precision") == "bf16"
    info["settings"] = {"torch.set_num_threads": threads, "torch.set_num_interop_threads": 1,
                        "mode": "eager, torch.inference_mode", "autocast": "cpu bfloat16" if bf16 else None,
                        "num_threads_read_back": torch.get_num_threads(),
                        "fused_attention": bool(getattr(model.blocks[0].attn, "fused_attn", False))}

    def prepare(x: np.ndarray) -> Callable[[], Any]:
        tensor = torch.from_numpy(x)

        def run() -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model.forward_features(tensor)[:, 0].float().numpy()

        return run

    return prepare, info
