"""DINOv2/DINOv3 release layouts against the original research code (not a test: it needs
checkouts of the original repositories, which this project neither ships nor installs).

For each family, the original ``DinoVisionTransformer`` is built with seeded random weights
(perturbed so that LayerScale, norms and biases are far from their initial values), its
``state_dict()`` is saved as the release files are, and the file is loaded with
``load_teacher(file, timm_arch)``. The CLS feature of the original model (``x_norm_clstoken``)
is compared with ours (``forward_cls``) on the same images, at the model's native grid.

Usage:
  python benchmarks/official_parity.py --dinov2 /path/to/dinov2 --dinov3 /path/to/dinov3 [--depth 2]
(each path is a checkout whose root holds the ``dinov2`` / ``dinov3`` package)
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from edgedistill.models.teacher import load_teacher
from edgedistill.models.vit import forward_cls


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * r)
            elif "gamma" in name:
                p.copy_(0.5 + 0.2 * r)
            elif p.ndim == 2 and "mask_token" not in name:
                p.copy_(r * 1.5 / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.2 * r if p.ndim == 1 else r)
    return model.eval()


def compare(official: torch.nn.Module, arch: str, img: int, depth: int, tmp: Path, name: str,
            **kwargs: object) -> float:
    path = tmp / f"{name}.pth"
    torch.save(official.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, info = load_teacher(str(path), arch, img, depth=depth, **kwargs)
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = official.forward_features(x)["x_norm_clstoken"]
        diff = (forward_cls(ours, x) - reference).abs().max().item()
    print(f"{name:34s} -> {arch:34s} layout={info['load'].get('layout')}: CLS max abs diff {diff:.2e}")
    return diff


def dinov2_models(root: Path, depth: int) -> list[tuple[str, torch.nn.Module, str, int, dict]]:
    sys.path.insert(0, str(root))
    from dinov2.models import vision_transformer as v2

    common = dict(img_size=56, patch_size=14, init_values=1.0, block_chunks=0, depth=depth)
    small = dict(common, embed_dim=384, num_heads=6)
    torch.manual_seed(0)
    out = [("dinov2 ViT-S/14", v2.DinoVisionTransformer(**small), "vit_small_patch14_dinov2", 56, {}),
           ("dinov2 ViT-S/14 reg4", v2.DinoVisionTransformer(num_register_tokens=4, **small),
            "vit_small_patch14_reg4_dinov2", 56, {}),
           ("dinov2 ViT-S/14 reg4, 2 chunks", v2.DinoVisionTransformer(num_register_tokens=4, **dict(small, block_chunks=2)),
            "vit_small_patch14_reg4_dinov2", 56, {}),
           ("dinov2 giant-style SwiGLU (w12/w3)",
            v2.DinoVisionTransformer(embed_dim=96, num_heads=2, ffn_layer="swiglufused", **common),
            "vit_giant_patch14_dinov2", 56, {"embed_dim": 96, "num_heads": 2})]
    return [(n, perturb(m, i), a, s, k) for i, (n, m, a, s, k) in enumerate(out)]


def dinov3_models(root: Path, depth: int) -> list[tuple[str, torch.nn.Module, str, int, dict]]:
    sys.path.insert(0, str(root))
    from dinov3.models.vision_transformer import DinoVisionTransformer

    release = dict(img_size=64, patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
                   pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", qkv_bias=True, layerscale_init=1e-5,
                   norm_layer="layernormbf16", n_storage_tokens=4, mask_k_bias=True, depth=depth)
    specs = [("dinov3 ViT-S/16", dict(embed_dim=384, num_heads=6, ffn_ratio=4, ffn_layer="mlp"), "vit_small_patch16_dinov3_qkvb"),
             ("dinov3 ViT-S+/16", dict(embed_dim=384, num_heads=6, ffn_ratio=6, ffn_layer="swiglu"),
              "vit_small_plus_patch16_dinov3_qkvb"),
             ("dinov3 ViT-B/16", dict(embed_dim=768, num_heads=12, ffn_ratio=4, ffn_layer="mlp"), "vit_base_patch16_dinov3_qkvb")]
    out = []
    for i, (name, spec, arch) in enumerate(specs):
        torch.manual_seed(i)
        model = DinoVisionTransformer(**release, **spec)
        model.init_weights()
        out.append((name, perturb(model, 10 + i), arch, 64, {}))
    # the non-qkvb timm architecture takes a release file whose q/v biases are zero
    zero_bias = DinoVisionTransformer(**release, **specs[0][1])
    zero_bias.init_weights()
    perturb(zero_bias, 20)
    with torch.no_grad():
        for blk in zero_bias.blocks:
            blk.attn.qkv.bias.zero_()
    out.append(("dinov3 ViT-S/16, zero q/v bias", zero_bias, "vit_small_patch16_dinov3", 64, {}))
    # periods stored in bf16, as the released files hold them (timm computes them in fp32)
    rounded = DinoVisionTransformer(**release, **specs[0][1])
    rounded.init_weights()
    perturb(rounded, 21)
    rounded.rope_embed.periods.copy_(rounded.rope_embed.periods.bfloat16().float())
    out.append(("dinov3 ViT-S/16, bf16 RoPE periods", rounded, "vit_small_patch16_dinov3_qkvb", 64, {}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dinov2", type=Path, help="checkout of facebookresearch/dinov2")
    parser.add_argument("--dinov3", type=Path, help="checkout of facebookresearch/dinov3")
    parser.add_argument("--depth", type=int, default=2)
    args = parser.parse_args()
    models = []
    if args.dinov2:
        models += dinov2_models(args.dinov2, args.depth)
    if args.dinov3:
        models += dinov3_models(args.dinov3, args.depth)
    if not models:
        parser.error("pass --dinov2 and/or --dinov3")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, arch, img, kwargs in models:
            compare(model, arch, img, args.depth, Path(tmp), name.replace(" ", "_").replace("/", "").replace(",", ""),
                    **kwargs)


if __name__ == "__main__":
    main()
