"""Projection heads: the AttnDistill student projector and the DINO head."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["Projector", "DINOHead", "cancel_last_layer_gradients"]

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
