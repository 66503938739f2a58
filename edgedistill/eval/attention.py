"""Last-layer CLS attention maps of teacher and student, side by side, as a PNG.

Per input image, two rows: the teacher, then the student. Columns: the preprocessed image
(eval transform: resize 256/224, center crop; shown before normalization), the heads fused
the way AttnDistill fuses them (``softmax(sum_h log A_h / T)``, overlaid on the image), then
every head. Maps are the CLS query's attention over the patch tokens (the CLS key dropped,
renormalized), each scaled to its own min..max for display.
"""

from __future__ import annotations

import io

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from edgedistill.errors import EdgeDistillError

if TYPE_CHECKING:
    from edgedistill.runtime.preprocessing import PreprocessSpec

__all__ = ["cls_attention_maps", "attention_figure", "plot_attention"]


def cls_attention_maps(model: torch.nn.Module, images: torch.Tensor,
                       temperature: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-head and fused patch attention of the last block's CLS query.

    Args:
        model: a timm ViT (one CLS token), any mode (eval is used and restored).
        images: (B, 3, S, S) preprocessed.
        temperature: T of the head fusion (``distill.temperature``).
    Returns:
        (heads (B, H, gh, gw), fused (B, gh, gw)) float32 numpy; each map sums to 1.
    """
    from edgedistill.losses.attndistill import aggregate_heads
    from edgedistill.models.vit import forward_with_cls_attention

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _, row = forward_with_cls_attention(model, images.to(device))  # (B, H, 1 + N)
    finally:
        model.train(was_training)
    row = row.float().cpu()
    fused = aggregate_heads(row, temperature)  # (B, 1, 1 + N)
    gh, gw = model.patch_embed.grid_size

    def patches(a: torch.Tensor) -> np.ndarray:
        p = a[..., 1:]
        p = p / p.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        return p.reshape(*a.shape[:2], gh, gw).numpy()

    return patches(row), patches(fused)[:, 0]


def _load_images(paths: Sequence[str | Path]) -> list[Any]:
    from edgedistill.data.folders import load_rgb

    if not paths:
        raise EdgeDistillError("no images: pass one or more --images files")
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise EdgeDistillError(f"image not found: {path}")
        try:
            out.append(load_rgb(path))
        except Exception as exc:  # PIL raises many types for unreadable files
            raise EdgeDistillError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return out


def _display(img: Any, spec: PreprocessSpec) -> np.ndarray:
    """The crop the model sees, in [0, 1] (H, W, 3)."""
    from edgedistill.eval.models import spec_transform

    plain = dict(spec, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], layout="NCHW", channel_order="RGB")
    x = spec_transform(plain)(img)
    return np.asarray(x, dtype=np.float32).transpose(1, 2, 0).clip(0, 1)


def _scaled(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def plot_attention(rows: Sequence[dict[str, Any]], out: str | Path, dpi: int = 100,
                   cell: float = 1.6) -> tuple[int, int]:
    """Draw rows ``{"label", "image" (H, W, 3), "fused" (gh, gw), "heads" (H, gh, gw)}`` into a
    PNG at ``out`` (``utils.write_output``: ``-`` is stdout). Returns its (width, height) in pixels."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display needed, and never a GUI backend
    import matplotlib.pyplot as plt

    from edgedistill.utils import write_output

    cols = 2 + max(r["heads"].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * cell, len(rows) * cell), dpi=dpi, squeeze=False)
    try:
        for i, r in enumerate(rows):
            h, w = r["image"].shape[:2]
            extent = (0, w, h, 0)
            ax = axes[i, 0]
            ax.imshow(r["image"], extent=extent)
            ax.set_ylabel(r["label"], fontsize=7)
            ax.set_title("input" if i < 2 else "", fontsize=7)
            ax = axes[i, 1]
            ax.imshow(r["image"], extent=extent)
            ax.imshow(_scaled(r["fused"]), cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
            ax.set_title("fused heads" if i < 2 else "", fontsize=7)
            for j in range(cols - 2):
                ax = axes[i, 2 + j]
                if j < r["heads"].shape[0]:
                    ax.imshow(_scaled(r["heads"][j]), cmap="inferno", extent=extent, interpolation="nearest")
                    ax.set_title(f"head {j + 1}", fontsize=7)
                else:
                    ax.axis("off")
            for ax in axes[i, :2]:
                ax.set_xticks([])
                ax.set_yticks([])
            for ax in axes[i, 2:]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout(pad=0.3)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        write_output(out, buffer.getvalue())
        width, height = fig.canvas.get_width_height()
    finally:
        plt.close(fig)
    return int(width), int(height)


def _arch_label(role: str, model: torch.nn.Module, arch: str) -> str:
    depth = len(model.blocks)
    heads = model.blocks[-1].attn.num_heads
    patch = model.patch_embed.patch_size[0]
    return f"{role}\n{arch.replace('_patch16_224', '')}/{patch} d{depth} h{heads}"


def attention_figure(
    student: Any,
    teacher: torch.nn.Module,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    teacher_spec: PreprocessSpec | None = None,
    teacher_arch: str = "teacher",
    temperature: float = 10.0,
) -> dict[str, Any]:
    """Teacher and student attention for each image of ``images``, drawn to ``out``.

    Args:
        student: an :class:`~edgedistill.eval.models.EvalModel` with a torch module.
        teacher: a timm ViT; its input is the eval transform at its own image size with the
            student's mean/std (``teacher_spec`` overrides).
    Returns:
        ``{"out", "size": [w, h], "images", "teacher_heads", "student_heads", "grids"}``.
    """
    from edgedistill.eval.models import spec_transform
    from edgedistill.models.vit import check_supported

    if student.module is None:
        raise EdgeDistillError(f"eval attention needs a torch model (run directory or .safetensors); "
                               f"{student.source} is a {student.backend} model, which does not expose attention")
    check_supported(student.module)
    check_supported(teacher)
    if temperature <= 0:
        raise EdgeDistillError(f"--temperature must be > 0, got {temperature}")
    if len(images) > 32:
        raise EdgeDistillError(f"{len(images)} images would make an unreadable figure: pass at most 32")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise EdgeDistillError(f"--out must be a .png file, got {out.name}")
    pil = _load_images(images)
    s_spec = student.preprocessing
    if teacher_spec is None:
        size = teacher.patch_embed.img_size
        t_size = int(size[0]) if size is not None else student.img_size
        from edgedistill.eval.models import standard_spec

        teacher_spec = standard_spec(t_size, s_spec["mean"], s_spec["std"])
    s_tf, t_tf = spec_transform(s_spec), spec_transform(teacher_spec)
    s_batch = torch.stack([torch.as_tensor(s_tf(im)) for im in pil])
    t_batch = torch.stack([torch.as_tensor(t_tf(im)) for im in pil])
    s_heads, s_fused = cls_attention_maps(student.module, s_batch, temperature)
    t_heads, t_fused = cls_attention_maps(teacher, t_batch, temperature)
    t_label = _arch_label("teacher", teacher, teacher_arch)
    s_label = _arch_label("student", student.module, str(student.info.get("arch", "student")))
    rows = []
    for i, im in enumerate(pil):
        name = Path(images[i]).name
        rows.append({"label": f"{name}\n{t_label}", "image": _display(im, teacher_spec),
                     "fused": t_fused[i], "heads": t_heads[i]})
        rows.append({"label": f"{name}\n{s_label}", "image": _display(im, s_spec),
                     "fused": s_fused[i], "heads": s_heads[i]})
    width, height = plot_attention(rows, out)
    return {"out": str(out), "size": [width, height], "images": [str(p) for p in images],
            "teacher_heads": int(t_heads.shape[1]), "student_heads": int(s_heads.shape[1]),
            "grids": {"teacher": list(t_heads.shape[2:]), "student": list(s_heads.shape[2:])},
            "temperature": float(temperature)}
