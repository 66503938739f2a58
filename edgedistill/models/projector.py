"""Projection heads: the AttnDistill student projector (design.md §4) and the DINO head (design.md §5)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.parametrizations import weight_norm

from edgedistill.errors import EdgeDistillError

__all__ = ["Projector", "DINOHead", "cancel_last_layer_gradients", "save_projector", "load_projector",
           "fit_projector"]

# timm's ViT norms use eps=1e-6; so did the AttnDistill projector.
_LN_EPS = 1e-6


def _init_linear(module: nn.Module) -> None:
    # timm-style init: truncated normal weights, zero bias
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Projector(nn.Module):
    """Maps student tokens ``(B, N, Ds)`` to the teacher's width ``(B, N, Dt)``.

    ``depth`` hidden layers with widths alternating ``2Ds, Ds, 2Ds, ...``; the default
    (``depth=3``) is AttnDistill's::

        LayerNorm(Ds), Linear(Ds, 2Ds), GELU, Linear(2Ds, Ds), GELU, Linear(Ds, 2Ds), GELU,
        Linear(2Ds, Dt), LayerNorm(Dt)

    ``depth=0`` is a single ``Linear(Ds, Dt)`` (``Identity`` when ``Ds == Dt``), with no leading
    LayerNorm. The final ``LayerNorm(Dt)`` is kept at every depth: the target (teacher CLS after
    its final norm) is layer-normalized too, so the output always has matching statistics, and
    the CLS-only ablations at depth 0 stay comparable with the default.
    """

    def __init__(self, student_dim: int, teacher_dim: int, depth: int = 3) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"projector depth must be >= 0, got {depth}")
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.depth = depth
        layers: list[nn.Module] = []
        if depth == 0:
            if student_dim == teacher_dim:
                layers.append(nn.Identity())
            else:
                layers.append(nn.Linear(student_dim, teacher_dim))
        else:
            layers.append(nn.LayerNorm(student_dim, eps=_LN_EPS))
            width = student_dim
            for i in range(depth):
                hidden = 2 * student_dim if i % 2 == 0 else student_dim
                layers += [nn.Linear(width, hidden), nn.GELU()]
                width = hidden
            layers.append(nn.Linear(width, teacher_dim))
        layers.append(nn.LayerNorm(teacher_dim, eps=_LN_EPS))
        self.layers = nn.Sequential(*layers)
        self.apply(_init_linear)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., Ds) -> (..., Dt)``, e.g. ``(B, N, Ds) -> (B, N, Dt)``."""
        return self.layers(x)

    def last_linear(self) -> int | None:
        """Index in ``layers`` of the final ``Linear`` (None for the identity projector)."""
        found = [i for i, m in enumerate(self.layers) if isinstance(m, nn.Linear)]
        return found[-1] if found else None

    def hidden(self, x: Tensor) -> Tensor:
        """What the final ``Linear`` sees: ``(..., Ds) -> (..., H)``."""
        return self.layers[: self.last_linear()](x)


def fit_projector(projector: Projector, hidden: Tensor, targets: Tensor, ridge: float = 1e-2) -> float:
    """Set the projector's final ``Linear`` to the ridge-regression fit of ``targets`` on
    ``hidden`` and its final ``LayerNorm`` to the targets' typical per-sample mean and spread,
    so that the projector starts as the best linear read-out of the student's initial features
    instead of a random map.

    Args:
        hidden: ``(N, H)`` the final ``Linear``'s inputs (:meth:`Projector.hidden`) on N images.
        targets: ``(N, Dt)`` the CLS targets of the same images.
        ridge: Tikhonov weight, relative to the mean per-feature energy of ``hidden``.
    Returns:
        R^2 of the fit on ``(hidden, targets)``, around the targets' mean.
    """
    index = projector.last_linear()
    if index is None:
        return float("nan")
    h, y = hidden.double(), targets.double()
    h_mean, y_mean = h.mean(0), y.mean(0)
    hc, yc = h - h_mean, y - y_mean
    gram = hc.T @ hc
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weight = torch.linalg.solve(gram, hc.T @ yc)  # (H, Dt)
    linear, norm = projector.layers[index], projector.layers[-1]
    with torch.no_grad():
        linear.weight.copy_(weight.T)
        linear.bias.copy_(y_mean - h_mean @ weight)
        # LayerNorm(fit) * gamma + beta ~ fit when gamma, beta are the fit's per-sample spread and mean
        norm.weight.fill_(float(y.std(1, unbiased=False).mean()))
        norm.bias.fill_(float(y.mean(1).mean()))
    residual = ((yc - hc @ weight) ** 2).sum() / (yc**2).sum().clamp_min(1e-30)
    return float(1 - residual)


class DINOHead(nn.Module):
    """DINO projection head: MLP -> L2 normalize -> weight-normalized linear to ``out_dim``.

    ``in_dim -> hidden_dim -> ... -> bottleneck_dim`` (``nlayers`` Linear layers, GELU between),
    then ``F.normalize`` and a bias-free weight-normed ``Linear(bottleneck_dim, out_dim)``.
    The weight-norm magnitude (``last_layer.parametrizations.weight.original0``) starts at 1 and
    is frozen when ``norm_last_layer`` (DINO's default), so the last layer's rows stay unit norm.
    ``use_bn`` puts BatchNorm after each hidden Linear (DINO's ``use_bn_in_head``).

    Shapes: ``(B, in_dim) -> (B, out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)

        def hidden(width_in: int) -> list[nn.Module]:
            return [nn.Linear(width_in, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if use_bn else []), nn.GELU()]

        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        # created after apply(): DINO keeps nn.Linear's default init for the direction v
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        magnitude.data.fill_(1.0)
        if norm_last_layer:
            magnitude.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def cancel_last_layer_gradients(head: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradients of every ``last_layer`` parameter while ``epoch < freeze_last_layer``.

    DINO keeps the output layer fixed for the first epoch(s), which stabilizes early training.
    ``head`` may be a ``DINOHead`` or any module containing one. Call after ``backward()``
    and before ``optimizer.step()``.
    """
    if epoch >= freeze_last_layer:
        return
    for name, param in head.named_parameters():
        if "last_layer" in name:
            param.grad = None


def save_projector(projector: Projector, path: str | Path) -> None:
    """Write the distillation projector (safetensors, atomically) with the metadata that
    rebuilds it: ``depth``, ``student_dim``, ``teacher_dim``."""
    from safetensors.torch import save_file

    from edgedistill.utils import atomic_path, disk_errors

    with atomic_path(Path(path)) as tmp, disk_errors(path, "cannot save the projector"):
        state = {k: v.detach().contiguous().cpu() for k, v in projector.state_dict().items()}
        save_file(state, str(tmp), metadata={"depth": str(projector.depth), "student_dim": str(projector.student_dim),
                                             "teacher_dim": str(projector.teacher_dim)})


def load_projector(path: str | Path, student_dim: int) -> tuple[nn.Module, dict[str, int]]:
    """A projector written by :func:`save_projector` (its metadata records depth, student_dim
    and teacher_dim); eval mode, strictly loaded."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise EdgeDistillError(f"--projection needs {path.name} in {path.parent} (written by `edgedistill distill`); "
                               "this run has none")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        info = {key: int(meta[key]) for key in ("depth", "student_dim", "teacher_dim")}
    except KeyError as exc:
        raise EdgeDistillError(f"{path} lacks the {exc.args[0]!r} metadata (depth, student_dim, teacher_dim)") from None
    except Exception as exc:  # safetensors raises its own error types on a corrupt header
        raise EdgeDistillError(f"cannot read {path}: {exc}") from None
    if info["student_dim"] != student_dim:
        raise EdgeDistillError(f"{path} was trained for a {info['student_dim']}-d student, but the student "
                               f"is {student_dim}-d")
    projector = Projector(info["student_dim"], info["teacher_dim"], depth=info["depth"])
    missing, unexpected = projector.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise EdgeDistillError(f"{path} does not match a depth-{info['depth']} projector (missing: "
                               f"{', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})")
    return projector.eval(), info


