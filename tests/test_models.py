"""ViT construction, attention capture and saved backbones (edgedistill.models.vit/backbone_io)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from edgedistill.errors import EdgeDistillError
from edgedistill.models.backbone_io import load_backbone, save_backbone
from edgedistill.models.vit import create_vit, forward_cls, forward_with_cls_attention, vit_kwargs

ARCH = "vit_tiny_patch16_224"
SMALL = dict(img_size=32, patch_size=8, depth=2)  # 16 patches + CLS, 3 heads, D=192


def tiny(**overrides):
    torch.manual_seed(0)
    model, kwargs = create_vit(ARCH, **{**SMALL, **overrides})
    return model.eval(), kwargs


def images(batch=2, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def reference_cls_attention(model, x):
    """Explicit attention of the last block, from a copy with unfused attention and a hook on
    attn_drop (whose input is the post-softmax matrix): only the test does this."""
    ref = copy.deepcopy(model)
    for blk in ref.blocks:
        blk.attn.fused_attn = False
    captured = {}
    ref.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, inp, out: captured.setdefault("attn", inp[0]))
    tokens = ref.forward_features(x)
    return tokens, captured["attn"][:, :, 0]


def module_snapshot(model):
    return {
        "keys": list(model.state_dict().keys()),
        "fused": [blk.attn.fused_attn for blk in model.blocks],
        "attrs": {name: sorted(vars(m).keys()) for name, m in model.named_modules()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "training": [m.training for m in model.modules()],
    }


# --- create_vit -----------------------------------------------------------------------------

def test_create_vit_records_kwargs_that_rebuild_the_model():
    model, kwargs = tiny()
    assert kwargs == {"img_size": 32, "patch_size": 8, "depth": 2}
    assert model.num_classes == 0 and model.num_prefix_tokens == 1
    assert model.patch_embed.grid_size == (4, 4) and len(model.blocks) == 2
    assert vit_kwargs(ARCH, 224) == {"img_size": 224, "patch_size": 16}  # the arch's own patch size


@pytest.mark.parametrize(
    "arch, kwargs, message",
    [
        ("vit_tiny_patch16_22", {}, "did you mean vit_tiny_patch16_224"),
        ("resnet18", {}, "not a timm VisionTransformer"),
        ("vit_medium_patch16_reg4_gap_256", {"patch_size": 8, "depth": 1}, "has no class token"),
        ("vit_small_patch16_rope_mixed_224", {"patch_size": 8, "depth": 1}, "mixed .*RoPE"),
        ("vit_base_patch16_rope_reg1_gap_256", {"patch_size": 8, "depth": 1}, "has no class token"),
        ("vit_small_patch16_224.dino", {}, "names pretrained weights"),
        (ARCH, {"patch_size": 5}, "patch size 5 does not divide the image size 32"),
        (ARCH, {"patch_size": 8, "no_such_option": 1}, "invalid model option"),
    ],
)
def test_create_vit_rejects_what_it_cannot_run(arch, kwargs, message):
    with pytest.raises(EdgeDistillError, match=message):
        create_vit(arch, 32, **kwargs)


# --- forward_with_cls_attention ------------------------------------------------------------

@pytest.mark.parametrize("variant", [{}, {"qk_norm": True, "init_values": 0.1}])
def test_tokens_and_cls_attention_match_timm(variant):
    model, _ = tiny(**variant)
    x = images()
    with torch.no_grad():
        tokens, attn = forward_with_cls_attention(model, x)
        ref_tokens, ref_attn = reference_cls_attention(model, x)
        features = model.forward_features(x)
    assert tokens.shape == (2, 17, 192) and attn.shape == (2, 3, 17)
    torch.testing.assert_close(tokens, features, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(attn, ref_attn, atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(forward_cls(model, x), features[:, 0])
    torch.testing.assert_close(forward_cls(model, x), model(x))  # num_classes=0: the CLS feature


def test_explicit_all_blocks_gives_the_same_results():
    model, _ = tiny(depth=3)
    x = images()
    with torch.no_grad():
        fused = forward_with_cls_attention(model, x)
        explicit = forward_with_cls_attention(model, x, explicit_all_blocks=True)
    torch.testing.assert_close(explicit[0], fused[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit[1], fused[1], atol=1e-6, rtol=0)


def test_gradients_flow_through_attention_row_and_tokens():
    model, _ = tiny()
    model.train()
    x = images()
    _, attn = forward_with_cls_attention(model, x)
    # the row sums to 1, so weight it to get a non-trivial gradient
    (attn * torch.linspace(0, 1, attn.shape[-1])).sum().backward()
    qkv = model.blocks[-1].attn.qkv.weight.grad
    assert qkv is not None and qkv.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # through the fused earlier blocks
    assert model.blocks[-1].mlp.fc1.weight.grad is None or model.blocks[-1].mlp.fc1.weight.grad.abs().sum() == 0

    # the token path (fused SDPA in the last block) gives timm's own gradients
    model.zero_grad(set_to_none=True)
    tokens, _ = forward_with_cls_attention(model, x)
    tokens.square().mean().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.forward_features(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_gradient_checkpointing_gives_the_same_results():
    model, _ = tiny(depth=3)
    model.train()
    x = images()
    tokens, attn = forward_with_cls_attention(model, x)
    (tokens.square().mean() + attn[..., 1:].square().sum()).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    tokens_ckpt, attn_ckpt = forward_with_cls_attention(model, x)
    (tokens_ckpt.square().mean() + attn_ckpt[..., 1:].square().sum()).backward()
    torch.testing.assert_close(tokens_ckpt, tokens, atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], atol=1e-6, rtol=1e-4, msg=name)


def test_capture_leaves_no_hooks_or_changed_modules():
    model, _ = tiny()
    before = module_snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    forward_with_cls_attention(model, x)
    forward_with_cls_attention(model, x, explicit_all_blocks=True)
    assert module_snapshot(model) == before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_autocast_bf16():
    model, _ = tiny()
    x = images()
    with torch.no_grad():
        tokens32, attn32 = forward_with_cls_attention(model, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens, attn = forward_with_cls_attention(model, x)
    assert tokens.shape == tokens32.shape and attn.shape == attn32.shape
    assert torch.isfinite(tokens.float()).all() and torch.isfinite(attn.float()).all()
    torch.testing.assert_close(attn.float().sum(-1), torch.ones(2, 3), atol=2e-2, rtol=0)
    torch.testing.assert_close(attn.float(), attn32, atol=2e-2, rtol=0)
    torch.testing.assert_close(tokens.float(), tokens32, atol=0.15, rtol=0.05)


# --- save_backbone / load_backbone ---------------------------------------------------------

def test_save_and_load_backbone_roundtrip(tmp_path):
    model, kwargs = tiny()
    weights = save_backbone(model, tmp_path, "student", ARCH, kwargs, "student", extra={"run": "t"})
    assert weights == tmp_path / "student.safetensors"
    meta = json.loads((tmp_path / "student.json").read_text())
    assert meta["arch"] == ARCH and meta["kwargs"] == kwargs and meta["role"] == "student"
    assert meta["feature"] == "cls after final norm" and meta["run"] == "t"
    assert (meta["embed_dim"], meta["num_heads"], meta["depth"], meta["img_size"], meta["patch_size"]) == (192, 3, 2, 32, 8)
    assert {"edgedistill_version", "timm_version", "sha256"} <= meta.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.json", "student.safetensors"]  # no temp files

    x = images()
    expected = model.forward_features(x)
    for path in (tmp_path, tmp_path / "student.json", tmp_path / "student.safetensors"):
        loaded, loaded_meta = load_backbone(path)
        assert not loaded.training and loaded_meta["arch"] == ARCH
        assert torch.equal(loaded.forward_features(x), expected)


def test_load_backbone_picks_role_and_reports_problems(tmp_path):
    student, kwargs = tiny()
    teacher, tkwargs = tiny(depth=3)
    save_backbone(student, tmp_path, "student", ARCH, kwargs, "student")
    save_backbone(teacher, tmp_path, "teacher", ARCH, tkwargs, "teacher")
    assert len(load_backbone(tmp_path)[0].blocks) == 2
    assert len(load_backbone(tmp_path, role="teacher")[0].blocks) == 3

    with pytest.raises(EdgeDistillError, match="holds no saved backbone"):
        load_backbone(tmp_path, role="nobody")
    (tmp_path / "lonely.safetensors").write_bytes((tmp_path / "student.safetensors").read_bytes())
    with pytest.raises(EdgeDistillError, match="no lonely.json beside it"):
        load_backbone(tmp_path / "lonely.safetensors")
    # weights swapped under the JSON: caught by the recorded sha256
    (tmp_path / "student.safetensors").write_bytes((tmp_path / "teacher.safetensors").read_bytes())
    with pytest.raises(EdgeDistillError, match="does not match the sha256"):
        load_backbone(tmp_path, role="student")


def test_plain_timm_loads_the_saved_pair_without_edgedistill(tmp_path):
    model, kwargs = tiny()
    save_backbone(model, tmp_path, "student", ARCH, kwargs, "student")
    x = images()
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(
        """
        import json, sys
        import timm, torch
        meta = json.load(open("student.json"))
        model = timm.create_model(meta["arch"], pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file="student.safetensors"), **meta["kwargs"]).eval()
        with torch.no_grad():
            torch.save(model.forward_features(torch.load("x.pt")), "y.pt")
        assert "edgedistill" not in sys.modules, "edgedistill was imported"
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "y.pt"), model.forward_features(x))
