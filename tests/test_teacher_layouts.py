"""DINOv2 and DINOv3 files in their original release layouts, and the timm hub names.

The release files are written here from a timm twin in the original repositories' key layout
(``facebookresearch/dinov2`` and ``facebookresearch/dinov3`` ``DinoVisionTransformer``): DINOv2's
``register_tokens`` with the CLS position embedding inside ``pos_embed``, FSDP-chunked blocks and
fused SwiGLU ``w12``/``w3``; DINOv3's ``storage_tokens``, ``ls1.gamma``, one ``qkv.bias`` whose k
third is masked by ``bias_mask``, SwiGLU ``w1``/``w2``/``w3`` and the persistent RoPE ``periods``.
Each must load to exactly the features of its twin; a damaged one must fail naming the key.
(``benchmarks/official_parity.py`` checks the same mapping against the original code itself.)
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from edgedistill.errors import EdgeDistillError
from edgedistill.models.teacher import load_teacher
from edgedistill.models.vit import forward_cls

from test_teachers_modern import build, images


def twin(arch: str, seed: int = 0, **kwargs):
    model, _ = build(arch, seed=seed) if not kwargs else _build_custom(arch, seed, **kwargs)
    return model


def _build_custom(arch: str, seed: int, **kwargs):
    from edgedistill.models.vit import create_vit
    from test_teachers_modern import FAMILIES, perturb

    torch.manual_seed(seed)
    model, used = create_vit(arch, FAMILIES.get(arch, (56, 0))[0], depth=2, **kwargs)
    return perturb(model, seed + 1), used


def dinov2_release(model: torch.nn.Module, chunks: int = 0, seed: int = 5) -> dict[str, torch.Tensor]:
    """A DINOv2 ``DinoVisionTransformer.state_dict()`` with the twin's weights."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {"mask_token": torch.zeros(1, model.embed_dim)}
    if "reg_token" in sd:  # DINOv2 embeds CLS with the patches; timm folds that into cls_token
        cls_pos = torch.randn(1, 1, model.embed_dim, generator=torch.Generator().manual_seed(seed))
        out["register_tokens"] = sd.pop("reg_token")
        out["cls_token"] = sd.pop("cls_token") - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, sd.pop("pos_embed")], dim=1)
    depth = len(model.blocks)
    for key, value in sd.items():
        if key.startswith("blocks."):
            index, rest = key.split(".", 2)[1:]
            rest = rest.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.") if _swiglu_packed(model) else rest
            key = f"blocks.{int(index) // (depth // chunks)}.{index}.{rest}" if chunks else f"blocks.{index}.{rest}"
        out[key] = value
    return out


def _swiglu_packed(model: torch.nn.Module) -> bool:
    from timm.layers import GluMlp

    return isinstance(model.blocks[0].mlp, GluMlp)


def dinov3_periods(head_dim: int, base: float = 100.0) -> torch.Tensor:
    """DINOv3's RoPE periods, stored in bf16 as the released files hold them."""
    return (base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))).bfloat16()


def dinov3_release(model: torch.nn.Module, seed: int = 6) -> dict[str, torch.Tensor]:
    """A DINOv3 ``DinoVisionTransformer.state_dict()`` (``mask_k_bias=True``) with the twin's weights;
    the k bias is random: DINOv3 masks it to zero."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    dim, head_dim = model.embed_dim, model.blocks[0].attn.head_dim
    out = {"storage_tokens": sd.pop("reg_token"), "mask_token": torch.zeros(1, dim),
           "rope_embed.periods": dinov3_periods(head_dim)}
    for i in range(len(model.blocks)):
        p = f"blocks.{i}."
        q = sd.pop(p + "attn.q_bias", torch.zeros(dim))
        v = sd.pop(p + "attn.v_bias", torch.zeros(dim))
        out[p + "attn.qkv.bias"] = torch.cat([q, torch.randn(dim, generator=g), v])
        out[p + "attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    for key, value in sd.items():
        key = key.replace(".gamma_1", ".ls1.gamma").replace(".gamma_2", ".ls2.gamma")
        key = key.replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2.")
        if "mlp.w1." in " ".join(out) or any(".mlp.fc1_g." in k for k in sd):
            key = key.replace(".mlp.fc2.", ".mlp.w3.")
        out[key] = value
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float rounding (DINOv2-reg's CLS position embedding is added to the CLS token
    once at load instead of at every forward): max abs diff <= 1e-5."""
    return (a - b).abs().max().item() <= 1e-5


def features(model: torch.nn.Module, size: int) -> torch.Tensor:
    with torch.no_grad():
        return forward_cls(model, images(size))


def load(path, arch: str, size: int, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a release file loads without any warning
        return load_teacher(str(path), arch, size, depth=2, **kwargs)


DINOV2_CASES = {
    "S/14": ("vit_small_patch14_dinov2", {}, 0),
    "S/14 reg4": ("vit_small_patch14_reg4_dinov2", {}, 0),
    "S/14 reg4, FSDP chunks": ("vit_small_patch14_reg4_dinov2", {}, 2),
    "giant-style SwiGLU": ("vit_giant_patch14_dinov2", {"embed_dim": 96, "num_heads": 2}, 0),
}


@pytest.mark.parametrize("case", sorted(DINOV2_CASES))
def test_dinov2_release_file_loads_like_its_timm_twin(case, tmp_path):
    import timm

    arch, kwargs, chunks = DINOV2_CASES[case]
    model = twin(arch, **kwargs)
    release = write(tmp_path / "dinov2.pth", dinov2_release(model, chunks))
    teacher, info = load(release, arch, 56, **kwargs)
    assert info["load"]["layout"] == ("timm" if arch == "vit_small_patch14_dinov2" else "dinov2")
    assert info["load"]["ignored"] == ["mask_token"]
    assert same(features(teacher, 56), features(model, 56))
    # At another resolution, the position embedding is resampled as DINOv2 interpolates: with
    # registers to the size, antialiased (timm's resampling); without, by the scale factor
    # (2 + 0.1) / 4, not antialiased (dinov2's hub: interpolate_offset 0.1).
    twin_file = write(tmp_path / "twin.safetensors", model.state_dict())
    reference = timm.create_model(arch, pretrained=True, num_classes=0, img_size=28, depth=2,
                                  pretrained_cfg_overlay=dict(file=str(twin_file)), **kwargs).eval()
    if "reg4" not in arch:
        grid = model.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(grid, scale_factor=(2.1 / 4, 2.1 / 4), mode="bicubic", antialias=False)
        with torch.no_grad():
            reference.pos_embed.copy_(torch.cat([model.pos_embed[:, :1], patches.flatten(2).transpose(1, 2)], dim=1))
    small, info = load(release, arch, 28, **kwargs)
    assert info["load"]["pos_embed_resampled"][1][1] == 4 + (0 if "reg4" in arch else 1)
    assert same(features(small, 28), features(reference, 28))


def test_dinov2_teacher_checkpoint_from_training(tmp_path):
    """``do_test`` in DINOv2's train.py: ``{"teacher": teacher.state_dict()}``: backbone + DINO/iBOT heads."""
    arch = "vit_small_patch14_reg4_dinov2"
    model = twin(arch)
    teacher_sd = {f"backbone.{k}": v for k, v in dinov2_release(model).items()}
    teacher_sd.update({"dino_head.mlp.0.weight": torch.randn(64, 384), "dino_head.last_layer.weight_g": torch.randn(100, 1),
                       "ibot_head.mlp.0.weight": torch.randn(64, 384)})
    path = write(tmp_path / "teacher_checkpoint.pth", {"teacher": teacher_sd})
    teacher, info = load(path, arch, 56)
    assert info["load"]["prefix"] == "teacher.backbone." and info["load"]["layout"] == "dinov2"
    assert same(features(teacher, 56), features(model, 56))


DINOV3_ARCHS = ["vit_small_patch16_dinov3", "vit_small_patch16_dinov3_qkvb", "vit_small_plus_patch16_dinov3",
                "vit_base_patch16_dinov3"]


@pytest.mark.parametrize("arch", DINOV3_ARCHS)
def test_dinov3_release_file_loads_like_its_timm_twin(arch, tmp_path):
    model = twin(arch)
    release = dinov3_release(model)
    release["local_cls_norm.weight"] = torch.ones(model.embed_dim)  # training-only (local crops)
    path = write(tmp_path / "dinov3.pth", release)
    teacher, info = load(path, arch, 64)
    assert info["load"]["layout"] == "dinov3"
    assert sorted(info["load"]["ignored"]) == ["local_cls_norm.weight", "mask_token"]
    reference = with_periods(model, release["rope_embed.periods"])  # the file's periods, not timm's
    assert torch.equal(features(teacher, 64), features(reference, 64))
    assert torch.equal(features(teacher, 48), features(reference, 48))  # another grid: RoPE for 3x3


def with_periods(model: torch.nn.Module, periods: torch.Tensor) -> torch.nn.Module:
    """A copy of the timm twin whose RoPE uses ``periods`` (as DINOv3's released models do)."""
    out = copy.deepcopy(model)
    out.rope.periods.copy_(periods.float())
    return out


def test_dinov3_release_into_the_timm_hub_name_and_file_agree(tmp_path, monkeypatch):
    """The same weights by hub name (timm's file in the local HF cache) and as a release file.
    timm's hub files hold no RoPE periods (timm recomputes them in fp32): the hub teacher is the
    release file's without its stored periods."""
    model = twin("vit_small_patch16_dinov3")
    name = "vit_small_patch16_dinov3.lvd1689m"
    cache_hub_file(tmp_path, monkeypatch, name, model.state_dict())
    with pytest.warns(UserWarning, match="teacher.arch=ignored_arch ignored: the hub name"):
        hub, info = load_teacher(name, "ignored_arch", 64, depth=2)
    assert info["kind"] == "hub" and info["arch"] == "vit_small_patch16_dinov3"
    assert info["kwargs"]["global_pool"] == "token"
    assert torch.equal(features(hub, 64), features(model, 64))
    sd = dinov3_release(model)
    stored = sd.pop("rope_embed.periods")
    without, _ = load(write(tmp_path / "no_periods.pth", sd), "vit_small_patch16_dinov3", 64)
    assert torch.equal(features(without, 64), features(hub, 64))
    release, _ = load(write(tmp_path / "dinov3.pth", {**sd, "rope_embed.periods": stored}), "vit_small_patch16_dinov3", 64)
    assert torch.equal(features(release, 64), features(with_periods(hub, stored), 64))


@pytest.mark.parametrize("arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_dinov2_hub_name_at_the_teacher_resolution(arch, tmp_path, monkeypatch):
    """timm's file holds the released 37x37 (518 px) position embedding; at another size the hub
    teacher resamples it as DINOv2 does, the same as the release file of the same weights."""
    from edgedistill.models.vit import create_vit
    from test_teachers_modern import perturb

    torch.manual_seed(0)
    model = perturb(create_vit(arch, 518, depth=2)[0], 1)
    cache_hub_file(tmp_path, monkeypatch, f"{arch}.lvd142m", model.state_dict())
    hub, info = load_teacher(f"{arch}.lvd142m", arch, 518, depth=2)
    assert info["kind"] == "hub" and hub.patch_embed.grid_size == (37, 37)
    assert torch.equal(features(hub, 518), features(model, 518))
    release = write(tmp_path / "dinov2.pth", dinov2_release(model))
    for size in (56, 224):
        small, info = load_teacher(f"{arch}.lvd142m", arch, size, depth=2)
        assert small.patch_embed.grid_size == (size // 14,) * 2 and info["kwargs"]["img_size"] == size
        from_file, _ = load(release, arch, size)
        assert same(small.pos_embed, from_file.pos_embed) and same(features(small, size), features(from_file, size))


def cache_hub_file(tmp_path, monkeypatch, name: str, state: dict) -> None:
    """timm's weights for ``name`` laid out as huggingface_hub caches them, offline."""
    repo = tmp_path / "hf" / f"models--timm--{name}"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file({k: v.contiguous() for k, v in state.items()}, str(repo / "snapshots" / "abc" / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


def write(path, obj):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def _damaged(kind: str):
    """(arch, release dict, expected message) for one kind of damage."""
    if kind.startswith("dinov2"):
        arch = "vit_small_patch14_reg4_dinov2"
        sd = dinov2_release(twin(arch))
    else:
        arch = "vit_small_patch16_dinov3_qkvb"
        sd = dinov3_release(twin(arch))
    dim = 384
    if kind == "dinov2 missing":
        del sd["blocks.1.ls2.gamma"]
        return arch, sd, r"missing: blocks\.1\.ls2\.gamma"
    if kind == "dinov2 misshapen":
        sd["blocks.0.mlp.fc1.weight"] = torch.zeros(10, dim)
        return arch, sd, r"blocks\.0\.mlp\.fc1\.weight expected \(1536, 384\) found \(10, 384\)"
    if kind == "dinov2 registers into a model without":
        return "vit_small_patch14_dinov2", sd, r"without position embeddings on CLS/registers.*reg4_dinov2"
    if kind == "dinov3 missing":
        del sd["blocks.1.ls1.gamma"]
        return arch, sd, r"missing: blocks\.1\.gamma_1 \(blocks\.1\.ls1\.gamma in the file\)"
    if kind == "dinov3 missing registers":
        del sd["storage_tokens"]
        return arch, sd, r"missing: reg_token \(storage_tokens in the file\)"
    if kind == "dinov3 misshapen":
        sd["blocks.0.ls2.gamma"] = torch.ones(dim + 1)
        return arch, sd, r"blocks\.0\.gamma_2 \(blocks\.0\.ls2\.gamma in the file\) expected \(384,\) found \(385,\)"
    if kind == "dinov3 misshapen qkv bias":
        sd["blocks.1.attn.qkv.bias"] = torch.zeros(3 * dim - 3)
        return arch, sd, r"blocks\.1\.attn\.qkv\.bias expected \(1152,\) found \(1149,\)"
    if kind == "dinov3 not the k mask":
        sd["blocks.0.attn.qkv.bias_mask"] = torch.ones(3 * dim)
        return arch, sd, r"blocks\.0\.attn\.qkv\.bias_mask is not DINOv3's k-bias mask"
    if kind == "dinov3 other rope":
        sd["rope_embed.periods"] = dinov3_periods(64, base=10000.0)
        return arch, sd, r"rope_embed\.periods differ from the architecture's RoPE"
    if kind == "dinov3 biases into a model without":
        return "vit_small_patch16_dinov3", sd, r"non-zero q/v biases but the architecture has none.*_qkvb"
    if kind == "dinov3 untied cls norm":
        sd["cls_norm.weight"] = torch.ones(dim)
        return arch, sd, r"normalizes CLS apart from the patches \(cls_norm\.weight\)"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "dinov2 missing", "dinov2 misshapen", "dinov2 registers into a model without", "dinov3 missing",
    "dinov3 missing registers", "dinov3 misshapen", "dinov3 misshapen qkv bias", "dinov3 not the k mask",
    "dinov3 other rope", "dinov3 biases into a model without", "dinov3 untied cls norm",
])
def test_damaged_release_files_are_refused_naming_the_key(kind, tmp_path):
    arch, sd, message = _damaged(kind)
    path = write(tmp_path / "damaged.pth", sd)
    with pytest.raises(EdgeDistillError, match=message) as err:
        load_teacher(str(path), arch, 64 if "dinov3" in arch else 56, depth=2)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
