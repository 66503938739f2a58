"""The ONNX Runtime graph with each block's attention exported as one fused
``com.microsoft.Attention`` node (``onnx_fused_fp32``; its INT8 twin ``onnx_fused_int8``).

ONNX Runtime's fusions (its session optimizer and ``onnxruntime.transformers.optimizer``)
recognise BERT-style attention subgraphs, not the one timm's packed ``qkv`` projection
exports to: on our plain graph they fused 0 attention nodes, only skip-LayerNorm and bias-GELU.
So this export writes the fused node itself. A copy of the student has each block's
attention replaced by :class:`_FusedAttention`, which computes exactly timm's attention in
torch (parity is checked like any variant) and exports as ``Attention(x, qkv.weight^T,
qkv.bias, num_heads)``, the ``proj`` linear after it. ONNX Runtime then also applies its own
skip-LayerNorm and bias-GELU fusions at load time, and its dynamic quantizer turns the node
into ``QAttention``.

The graph needs ONNX Runtime's contrib operators: ONNX Runtime (CPU, mobile, the
``onnxruntime`` wheel) loads it; the other runtimes that read ONNX do not, so the bundle keeps
the plain graph (``onnx_fp32``) for them.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["fusable", "export_fused_onnx", "FUSED_OPS"]

FUSED_OPS = ("Attention",)  # com.microsoft, one per block


class _AttentionOp(torch.autograd.Function):
    """timm's multi-head self-attention after the ``qkv`` linear, before ``proj``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_heads: int) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, weight, bias).reshape(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, num_heads: int) -> Any:
        # Attention takes the weights as (input hidden, 3 x hidden): q, k, v side by side, as
        # timm's qkv.weight (3C, C) transposed; its default scale is timm's, head_dim ** -0.5
        packed = g.op("Transpose", weight, perm_i=[1, 0])
        out = g.op("com.microsoft::Attention", x, packed, bias, num_heads_i=int(num_heads))
        return out.setType(x.type())


class _FusedAttention(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.qkv, self.proj, self.num_heads = attn.qkv, attn.proj, attn.num_heads

    def forward(self, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
        return self.proj(_AttentionOp.apply(x, self.qkv.weight, self.qkv.bias, self.num_heads))


def fusable(backbone: nn.Module) -> str | None:
    """None when every block's attention is plain timm attention the fused node computes
    exactly, else why not (q/k norms, gates, rotary embeddings, no qkv bias...)."""
    from timm.layers import Attention

    for i, block in enumerate(getattr(backbone, "blocks", [])):
        attn = getattr(block, "attn", None)
        if type(attn) is not Attention:
            return f"block {i} attention is {type(attn).__name__}, not timm's Attention"
        if attn.qkv.bias is None:
            return f"block {i} attention has no qkv bias"
        extras = [name for name in ("q_norm", "k_norm", "norm") if not isinstance(getattr(attn, name), nn.Identity)]
        if extras or getattr(attn, "gate", None) is not None:
            return f"block {i} attention has {', '.join(extras) or 'a gate'}"
    return None


def export_fused_onnx(graph: nn.Module, path: str | Path, export_onnx: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Export a copy of ``graph`` (``export.onnx.EmbeddingModel``) with fused attention to
    ``path`` through ``export_onnx`` (the export's ONNX exporter, ``runtime.base.Build``);
    ``graph`` itself is not touched. Returns the exporter settings."""
    import onnx

    fused = copy.deepcopy(graph).eval()
    for block in fused.backbone.blocks:
        block.attn = _FusedAttention(block.attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes, as for the plain graph
        settings = export_onnx(fused, Path(path), {"custom_opsets": {"com.microsoft": 1}})
    proto = onnx.load(str(path))
    count = sum(node.op_type == "Attention" and node.domain == "com.microsoft" for node in proto.graph.node)
    if count != len(graph.backbone.blocks):
        raise RuntimeError(f"fused export wrote {count} Attention nodes for {len(graph.backbone.blocks)} blocks")
    return dict(settings, fused_attention_nodes=count)
