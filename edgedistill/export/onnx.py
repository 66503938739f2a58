"""The exported graph and its ONNX export (design.md §7).

The graph maps ``pixel_values`` (B, 3, H, W) float32 to ``embedding`` (B, D): the student's
CLS token after its final norm, the feature the k-NN judged. With a projector, a second
output ``projection`` (B, Dt) maps that embedding into the teacher's feature space (the
distillation target), so an app can query a gallery the teacher embedded.

Every ``torch.onnx.export`` option that changed default across torch versions is passed
explicitly: the TorchScript exporter (``dynamo=False``; torch >= 2.9 defaults to the dynamo
one), weights inside the file (``external_data=False``; torch >= 2.9 defaults to a side
file), a dynamic batch axis, eval mode, constant folding.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgedistill.errors import EdgeDistillError

__all__ = [
    "INPUT_NAME",
    "EMBEDDING",
    "PROJECTION",
    "MIN_OPSET",
    "MAX_OPSET",
    "EmbeddingModel",
    "export_onnx",
    "exporter_settings",
]

INPUT_NAME = "pixel_values"
EMBEDDING = "embedding"
PROJECTION = "projection"
MIN_OPSET = 17  # LayerNormalization is a standard op from 17 on (no decomposition)
MAX_OPSET = 20  # the TorchScript exporter's newest


class EmbeddingModel(nn.Module):
    """``(B, 3, H, W) -> embedding (B, D)`` or ``(embedding (B, D), projection (B, Dt))``.

    ``embedding`` is ``backbone.forward_features(x)[:, 0]`` (CLS after the final norm), the
    same tensor ``eval.features.TorchEmbedder`` returns; the projector is applied to it exactly as
    distillation applied it to the CLS token.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    @property
    def output_names(self) -> list[str]:
        return [EMBEDDING] if self.projector is None else [EMBEDDING, PROJECTION]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        cls = self.backbone.forward_features(pixel_values)[:, 0]
        if self.projector is None:
            return cls
        return cls, self.projector(cls)

    @torch.inference_mode()
    def outputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output by name, float32 (the reference the gates compare against)."""
        out = self(pixel_values)
        out = (out,) if isinstance(out, torch.Tensor) else out
        return {name: t.float() for name, t in zip(self.output_names, out)}


def exporter_settings(opset: int, output_names: list[str]) -> dict[str, Any]:
    """The ``torch.onnx.export`` keyword arguments, all explicit (also recorded in the manifest)."""
    return {
        "dynamo": False,
        "opset_version": int(opset),
        "external_data": False,
        "export_params": True,
        "keep_initializers_as_inputs": False,
        "do_constant_folding": True,
        "training": "eval",
        "input_names": [INPUT_NAME],
        "output_names": list(output_names),
        "dynamic_axes": {name: {0: "batch"} for name in [INPUT_NAME, *output_names]},
    }


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgeDistillError(f"--opset must be an integer from {MIN_OPSET} to {MAX_OPSET} "
                               f"(the TorchScript exporter's range), got {opset!r}")
    return opset


def export_onnx(model: nn.Module, path: str | Path, img_size: int, opset: int,
                custom_opsets: dict[str, int] | None = None) -> dict[str, Any]:
    """Export ``model`` (an :class:`EmbeddingModel`, or a copy of one with operators of its
    own) to ``path``, one self-contained .onnx, and validate it with ``onnx.checker``
    (``full_check=True``, whose shape inference does not know ``custom_opsets`` operators).
    Returns the exporter settings used."""
    import onnx

    check_opset(opset)
    path = Path(path)
    settings = exporter_settings(opset, model.output_names)
    kwargs = dict(settings, training=torch.onnx.TrainingMode.EVAL)
    if custom_opsets:
        settings["custom_opsets"] = kwargs["custom_opsets"] = dict(custom_opsets)
    model.eval()
    # batch 2 rather than 1: nothing in the trace can specialize on a singleton batch
    dummy = torch.zeros(2, 3, img_size, img_size)
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated upstream (chosen on purpose, see module doc);
        # timm's input-size assert becomes a constant under tracing (the size is fixed anyway)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        with torch.no_grad():
            torch.onnx.export(model, (dummy,), str(path), verbose=False, **kwargs)
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=not custom_opsets)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"the exported ONNX model fails onnx.checker: {exc}") from exc
    external = [init.name for init in proto.graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL]
    if external:  # external_data=False must hold: an app gets one file
        raise RuntimeError(f"ONNX export wrote {len(external)} initializers as external data")
    return settings
