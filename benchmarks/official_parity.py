"""DINOv2/DINOv3 release files against the original research code, at several input sizes (not a
test by default: it needs checkouts of the original repositories, which this project neither
ships nor installs; ``tests/test_official_parity.py`` runs it, reduced, when they are given).

Each original model is built by its own hub constructor (``dinov2.hub.backbones.dinov2_vits14``,
``dinov3.hub.backbones.dinov3_vitb16``, ... with ``pretrained=False``), so it carries exactly
the settings of the released model: DINOv2's ``interpolate_offset``/``interpolate_antialias``,
DINOv3's RoPE base, coordinate normalization and fp32 RoPE dtype. Its weights are seeded and
perturbed (norms, LayerScale, biases, tokens and position embeddings far from their initial
values); a DINOv3 model gets the RoPE periods its training computes (``pos_embed_rope_dtype``
bf16, stored in bf16 as the released files hold them). Its ``state_dict()`` is saved as the
release files are and loaded with ``load_teacher(file, timm_arch, size)``. Compared on the
same images, at the native size and at other sizes:

- CLS: the original ``forward_features(x)["x_norm_clstoken"]`` against our ``forward_cls``;
- attention: the last block's post-softmax CLS-query row over all tokens (CLS, registers,
  patches), computed from the original last block's own ``qkv`` on its ``norm1`` output (with
  its RoPE applied, ``SelfAttention.apply_rope``, for DINOv3), against our
  ``forward_with_cls_attention(..., keep_registers=True)``.

Usage:
  python benchmarks/official_parity.py --dinov2 /path/to/dinov2 --dinov3 /path/to/dinov3 \\
      [--depth 12] [--json out.json]
(each path is a checkout whose root holds the ``dinov2`` / ``dinov3`` package; the default
depth is the released models' own, 12 blocks)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from edgedistill.models.teacher import load_teacher
from edgedistill.models.vit import forward_cls, forward_with_cls_attention

DINOV2_SIZES = (518, 224, 196)  # native (37x37 grid), then two resampled grids
DINOV3_SIZES = (224, 256, 160)  # native 224, then a larger and a smaller grid (RoPE follows)
TOKENS = ("pos_embed", "cls_token", "register_tokens", "storage_tokens")


@dataclass
class Case:
    name: str
    official: torch.nn.Module
    arch: str  # the timm architecture the release file is loaded into
    sizes: tuple[int, ...]
    row: Callable[[torch.nn.Module, Tensor, Tensor], Tensor]  # (last block, norm1 output, image) -> CLS row
    extra: dict[str, Tensor] = field(default_factory=dict)  # what the release file stores beyond state_dict()
    kwargs: dict = field(default_factory=dict)  # architecture options for load_teacher (a reduced width)


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights far from the init: tokens and position embeddings N(0, 1), matrices and
    kernels scaled by fan-in (peaked attention), norms around 1, LayerScale around 0.5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name in TOKENS:
                p.copy_(r)
            elif p.ndim >= 2 and "mask_token" not in name:
                p.copy_(r * 1.5 / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * r)
            elif "gamma" in name:
                p.copy_(0.5 + 0.2 * r)
            else:
                p.copy_(0.2 * r)
    return model.eval()


def _dinov2_row(blk: torch.nn.Module, h: Tensor, x: Tensor) -> Tensor:
    """DINOv2's ``Attention.forward`` up to the softmax, CLS query only."""
    attn = blk.attn
    B, N, C = h.shape
    qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0] * attn.scale, qkv[1]
    return (q[:, :, :1] @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]


def _dinov3_row(model: torch.nn.Module) -> Callable[[torch.nn.Module, Tensor, Tensor], Tensor]:
    """DINOv3's ``SelfAttention.compute_attention`` up to the softmax (RoPE applied), CLS query only."""
    def row(blk: torch.nn.Module, h: Tensor, x: Tensor) -> Tensor:
        attn = blk.attn
        B, N, C = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads)
        q, k, _ = [t.transpose(1, 2) for t in torch.unbind(qkv, 2)]
        patch = model.patch_size
        rope = model.rope_embed(H=x.shape[-2] // patch, W=x.shape[-1] // patch)
        q, k = attn.apply_rope(q, k, rope)
        return ((q[:, :, :1] @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)[:, :, 0]
    return row


def _trimmed(model: torch.nn.Module, depth: int) -> torch.nn.Module:
    """The hub model with its first ``depth`` blocks (the hub constructors fix the depth)."""
    if depth < len(model.blocks):
        model.blocks = model.blocks[:depth]
        model.n_blocks = depth
    return model


def dinov2_cases(root: Path, depth: int) -> list[Case]:
    sys.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "xFormers is not available": the plain PyTorch path is the reference
        from dinov2.hub import backbones
        from dinov2.models.vision_transformer import DinoVisionTransformer

    specs = [("DINOv2 S/14", backbones.dinov2_vits14, "vit_small_patch14_dinov2"),
             ("DINOv2 S/14 reg4", backbones.dinov2_vits14_reg, "vit_small_patch14_reg4_dinov2")]
    cases = []
    for i, (name, build, arch) in enumerate(specs):
        torch.manual_seed(i)
        model = perturb(_trimmed(build(pretrained=False), depth), i)
        cases.append(Case(name, model, arch, DINOV2_SIZES, _dinov2_row))
    # release layouts beyond the plain one, with the hub models' interpolation settings, at the
    # native size and one other: FSDP-chunked blocks, and the giant's fused SwiGLU (w12/w3) at a
    # reduced width
    reg, plain = cases[1].official, cases[0].official
    common = dict(img_size=518, patch_size=14, depth=depth, init_values=1.0)
    chunked = DinoVisionTransformer(embed_dim=384, num_heads=6, block_chunks=2, num_register_tokens=4,
                                    interpolate_offset=reg.interpolate_offset,
                                    interpolate_antialias=reg.interpolate_antialias, **common)
    cases.append(Case("DINOv2 S/14 reg4, FSDP chunks", perturb(chunked, 2), "vit_small_patch14_reg4_dinov2",
                      DINOV2_SIZES[:2], _dinov2_row))
    giant = DinoVisionTransformer(embed_dim=96, num_heads=2, ffn_layer="swiglufused", interpolate_offset=plain.interpolate_offset,
                                  interpolate_antialias=plain.interpolate_antialias, **common)
    cases.append(Case("DINOv2 giant-style SwiGLU, width 96", perturb(giant, 3), "vit_giant_patch14_dinov2",
                      DINOV2_SIZES[:2], _dinov2_row, kwargs={"embed_dim": 96, "num_heads": 2}))
    return cases


def dinov3_cases(root: Path, depth: int) -> list[Case]:
    sys.path.insert(0, str(root))
    from dinov3.hub import backbones
    from dinov3.layers import RopePositionEmbedding

    specs = [("DINOv3 S/16", backbones.dinov3_vits16, "vit_small_patch16_dinov3_qkvb"),
             ("DINOv3 S+/16", backbones.dinov3_vits16plus, "vit_small_plus_patch16_dinov3_qkvb"),
             ("DINOv3 B/16", backbones.dinov3_vitb16, "vit_base_patch16_dinov3_qkvb")]
    cases = []
    for i, (name, build, arch) in enumerate(specs):
        torch.manual_seed(10 + i)
        model = perturb(_trimmed(build(pretrained=False), depth), 10 + i)
        # the periods DINOv3's training computes (its configs' pos_embed_rope_dtype: bf16), which
        # the released files store; the released model loads them into its fp32 buffer
        trained = RopePositionEmbedding(model.embed_dim, num_heads=model.num_heads, base=model.rope_embed.base,
                                        dtype=torch.bfloat16).periods
        model.rope_embed.periods.copy_(trained)
        cases.append(Case(name, model, arch, DINOV3_SIZES, _dinov3_row(model), {"rope_embed.periods": trained}))
        if i == 0:  # the architecture without q/v biases takes a release file whose q/v biases are zero
            zero = copy.deepcopy(model)
            for blk in zero.blocks:
                blk.attn.qkv.bias.data.zero_()
            cases.append(Case(name + ", zero q/v bias", zero, "vit_small_patch16_dinov3", DINOV3_SIZES[:2],
                              _dinov3_row(zero), {"rope_embed.periods": trained}))
    return cases


def official_outputs(case: Case, x: Tensor) -> tuple[Tensor, Tensor]:
    """The original model's CLS feature and last-block CLS row on ``x``."""
    last = case.official.blocks[-1]
    if isinstance(last, torch.nn.ModuleList):  # DINOv2's FSDP chunk: the last block ends the last chunk
        last = last[-1]
    captured: list[Tensor] = []
    handle = last.norm1.register_forward_hook(lambda m, inp, out: captured.append(out))
    try:
        cls = case.official.forward_features(x)["x_norm_clstoken"]
    finally:
        handle.remove()
    assert len(captured) == 1, "the last block ran more than once"
    return cls, case.row(last, captured[0], x)


def compare(case: Case, tmp: Path, depth: int) -> list[dict]:
    path = tmp / (case.name.replace(" ", "_").replace("/", "") + ".pth")
    torch.save({**case.official.state_dict(), **case.extra}, path)
    rows = []
    for size in case.sizes:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, _ = load_teacher(str(path), case.arch, size, depth=depth, **case.kwargs)
        with torch.no_grad():
            cls, row = official_outputs(case, x)
            our_cls = forward_cls(ours, x)
            _, our_row = forward_with_cls_attention(ours, x, keep_registers=True)
        rows.append({"model": case.name, "arch": case.arch, "size": size, "depth": depth,
                     "cls_max_abs_diff": (our_cls - cls).abs().max().item(),
                     "attn_max_abs_diff": (our_row - row).abs().max().item(),
                     "attn_row_max": row.max().item()})
        r = rows[-1]
        print(f"| {case.name} | {size} | {r['cls_max_abs_diff']:.2e} | {r['attn_max_abs_diff']:.2e} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dinov2", type=Path, help="checkout of facebookresearch/dinov2")
    parser.add_argument("--dinov3", type=Path, help="checkout of facebookresearch/dinov3")
    parser.add_argument("--depth", type=int, default=12, help="blocks per model (12: the released depth)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if not (args.dinov2 or args.dinov3):
        parser.error("pass --dinov2 and/or --dinov3")
    cases = (dinov2_cases(args.dinov2, args.depth) if args.dinov2 else []) + \
        (dinov3_cases(args.dinov3, args.depth) if args.dinov3 else [])
    print(f"depth {args.depth}; max |ours - original| over 2 images\n")
    print("| model | size | CLS | last-block CLS attention |\n| --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            rows += compare(case, Path(tmp), args.depth)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
