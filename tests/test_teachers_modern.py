"""DINOv2 (with and without registers) and DINOv3 (RoPE, registers, LayerScale) as timm builds
them: the CLS feature and the last block's CLS attention row against timm's own modules.

Models are the acceptance architectures at reduced depth (2 blocks) and small images (4x4
patch grids), with seeded random weights perturbed so that norms, LayerScale, position
embeddings and attention are far from their near-trivial initial values.

Each family's position-embedding semantics, pinned by hand without the original code (which
``test_official_parity.py`` runs when given): DINOv2's interpolation scale factor and
antialiasing per model, and DINOv3's stored RoPE periods."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from edgedistill.errors import EdgeDistillError
from edgedistill.models.vit import check_supported, create_vit, forward_cls, forward_with_cls_attention, register_count

# arch -> (img_size for a 4x4 grid, register tokens)
FAMILIES = {
    "vit_small_patch14_dinov2": (56, 0),
    "vit_small_patch14_reg4_dinov2": (56, 4),
    "vit_small_patch16_dinov3": (64, 4),
    "vit_small_plus_patch16_dinov3": (64, 4),
    "vit_base_patch16_dinov3": (64, 4),
    "vit_small_patch16_dinov3_qkvb": (64, 4),
}


def perturb(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Seeded weights far from timm's init: norms, biases, LayerScale, tokens and position
    embeddings randomized; linear weights scaled so that attention is peaked, not uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * r)
            elif "gamma" in name:
                p.copy_(0.5 + 0.2 * r)
            elif name in ("pos_embed", "cls_token", "reg_token"):
                p.copy_(r)
            elif p.ndim == 2:
                p.copy_(r * 1.5 / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.2 * r if p.ndim == 1 else r)
    return model.eval()


def build(arch: str, depth: int = 2, seed: int = 0):
    img, _ = FAMILIES[arch]
    torch.manual_seed(seed)
    model, kwargs = create_vit(arch, img, depth=depth)
    return perturb(model, seed + 1), kwargs


def images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


def timm_attention_row(model: torch.nn.Module, x: torch.Tensor, all_blocks: bool) -> torch.Tensor:
    """The CLS row of the full softmax that timm's own attention module computes: a copy with
    unfused attention (the last block only, or every block) and a hook on ``attn_drop``,
    whose input is the post-softmax matrix. Only the test does this."""
    ref = copy.deepcopy(model)
    for blk in (ref.blocks if all_blocks else ref.blocks[-1:]):
        blk.attn.fused_attn = False
    captured = {}
    ref.blocks[-1].attn.attn_drop.register_forward_hook(lambda m, inp, out: captured.setdefault("attn", inp[0]))
    ref.forward_features(x)
    return captured["attn"][:, :, 0]


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_cls_feature_and_attention_row_match_timm(arch):
    model, kwargs = build(arch)
    img, registers = FAMILIES[arch]
    x = images(img)
    assert register_count(model) == registers
    with torch.no_grad():
        features = model.forward_features(x)
        for explicit in (False, True):
            tokens, row = forward_with_cls_attention(model, x, explicit_all_blocks=explicit, keep_registers=True)
            reference = timm_attention_row(model, x, all_blocks=explicit)
            assert tokens.shape == features.shape == (2, 1 + registers + 16, model.embed_dim)
            assert row.shape == (2, model.blocks[-1].attn.num_heads, 1 + registers + 16)
            cls_diff = (tokens[:, 0] - features[:, 0]).abs().max().item()
            row_diff = (row - reference).abs().max().item()
            assert cls_diff <= 1e-5, (arch, explicit, cls_diff)
            assert row_diff <= 1e-6, (arch, explicit, row_diff)
            assert row.max() > 5 / row.shape[-1]  # peaked: the comparison is not between uniform rows
    torch.testing.assert_close(forward_cls(model, x), features[:, 0], atol=0, rtol=0)
    if "dinov3" in arch:
        assert kwargs["global_pool"] == "token"  # plain timm's model(x) is then the same CLS feature
        torch.testing.assert_close(model(x), features[:, 0], atol=0, rtol=0)


@pytest.mark.parametrize("arch", ["vit_small_patch14_reg4_dinov2", "vit_small_patch16_dinov3"])
def test_register_columns_are_dropped_and_the_row_renormalized(arch):
    model, _ = build(arch)
    img, registers = FAMILIES[arch]
    x = images(img)
    with torch.no_grad():
        _, full = forward_with_cls_attention(model, x, keep_registers=True)
        _, dropped = forward_with_cls_attention(model, x)
    assert dropped.shape[-1] == full.shape[-1] - registers == 17
    kept = torch.cat([full[..., :1], full[..., 1 + registers:]], dim=-1)
    torch.testing.assert_close(dropped, kept / kept.sum(-1, keepdim=True), atol=1e-7, rtol=0)
    torch.testing.assert_close(dropped.sum(-1), torch.ones(2, dropped.shape[1]), atol=1e-6, rtol=0)
    assert full[..., 1:1 + registers].sum(-1).min() > 0  # the registers did hold attention mass


def test_rope_model_gradients_match_timm():
    """The token path of an Eva model (fused attention in the last block, RoPE) gives timm's gradients."""
    model, _ = build("vit_small_patch16_dinov3")
    model.train()
    x = images(64)
    tokens, row = forward_with_cls_attention(model, x)
    (tokens.square().mean() + row[..., 1:].square().sum()).backward()
    assert model.blocks[-1].attn.qkv.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    tokens, _ = forward_with_cls_attention(model, x)
    tokens.square().mean().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.forward_features(x).square().mean().backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_rope_model_other_image_size_and_checkpointing():
    """A DINOv3 teacher at another image size than it was built for (dynamic grid, RoPE for the
    new grid) and with gradient checkpointing gives the same as timm."""
    model, _ = build("vit_small_patch16_dinov3")
    x = images(48)  # 3x3 grid, the model was built at 4x4
    with torch.no_grad():
        tokens, row = forward_with_cls_attention(model, x)
        torch.testing.assert_close(tokens, model.forward_features(x), atol=1e-5, rtol=0)
    assert row.shape == (2, 6, 10)
    model.train()
    model.set_grad_checkpointing(True)
    tokens_ckpt, _ = forward_with_cls_attention(model, x)
    model.set_grad_checkpointing(False)
    tokens_plain, _ = forward_with_cls_attention(model, x)
    torch.testing.assert_close(tokens_ckpt, tokens_plain, atol=1e-6, rtol=0)


def test_check_supported_names_what_is_unsupported():
    model, _ = build("vit_small_patch16_dinov3")
    broken = copy.deepcopy(model)
    broken.rope_mixed = True
    with pytest.raises(EdgeDistillError, match="mixed .*RoPE"):
        check_supported(broken, "custom")
    with pytest.raises(EdgeDistillError, match="is not a timm VisionTransformer or Eva"):
        check_supported(torch.nn.Linear(2, 2))


def _keys_cubic(values: list[float], u: float, a: float = -0.75) -> float:
    """PyTorch's bicubic (Keys' cubic convolution, a = -0.75) of ``values`` at source coordinate ``u``."""
    def w(x: float) -> float:
        x = abs(x)
        return ((a + 2) * x - (a + 3)) * x * x + 1 if x <= 1 else ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    k0 = math.floor(u)
    return sum(values[k] * w(u - k) for k in range(k0 - 1, k0 + 3))


def _dinov2_file(tmp_path, arch: str, side: int) -> tuple[str, torch.Tensor]:
    """A DINOv2 file whose position embedding is a ``side`` x ``side`` grid holding its column index."""
    model, _ = create_vit(arch, 14 * side, depth=2)
    state = perturb(model).state_dict()
    prefix = state["pos_embed"].shape[1] - side * side
    ramp = torch.arange(side, dtype=torch.float32).repeat(side)[None, :, None].expand(1, -1, model.embed_dim)
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :prefix], ramp], dim=1)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    return str(path), state["pos_embed"]


def test_dinov2_position_embedding_is_resampled_as_dinov2_interpolates(tmp_path):
    """DINOv2 without registers resamples by the scale factor (grid + 0.1) / side, not
    antialiased (its hub's interpolate_offset 0.1): an 8x8 grid at 4x4 samples column
    (j + 0.5) * 8 / 4.1 - 0.5, where resampling to the size would sample (j + 0.5) * 2 - 0.5."""
    from edgedistill.models.teacher import load_teacher

    path, released = _dinov2_file(tmp_path, "vit_small_patch14_dinov2", 8)
    teacher, info = load_teacher(path, "vit_small_patch14_dinov2", 56, depth=2)
    assert info["load"]["pos_embed_resampled"] == [[1, 65, 384], [1, 17, 384]]
    grid = teacher.pos_embed[0, 1:].reshape(4, 4, 384)
    for j in (1, 2):  # interior columns: all four taps inside the grid
        expected = _keys_cubic(list(range(8)), (j + 0.5) * 8 / 4.1 - 0.5)
        torch.testing.assert_close(grid[:, j], torch.full((4, 384), expected), atol=1e-5, rtol=0)
        assert abs(expected - (2 * j + 0.5)) > 0.05  # a scale factor of 4/8 would give another value
    torch.testing.assert_close(teacher.pos_embed[:, :1], released[:, :1], atol=0, rtol=0)  # CLS row kept


def test_dinov2_with_registers_resamples_to_the_size_antialiased(tmp_path):
    """DINOv2 with registers: offset 0 and antialiasing (its hub), which is timm's resampling."""
    from timm.layers import resample_abs_pos_embed

    from edgedistill.models.teacher import load_teacher

    path, released = _dinov2_file(tmp_path, "vit_small_patch14_reg4_dinov2", 8)
    teacher, _ = load_teacher(path, "vit_small_patch14_reg4_dinov2", 56, depth=2)
    expected = resample_abs_pos_embed(released, new_size=[4, 4], num_prefix_tokens=0, antialias=True)
    torch.testing.assert_close(teacher.pos_embed.detach(), expected, atol=0, rtol=0)


def _dinov3_file(tmp_path, model: torch.nn.Module, periods: torch.Tensor) -> str:
    path = tmp_path / "dinov3.pth"
    torch.save({**model.state_dict(), "rope_embed.periods": periods}, path)
    return str(path)


def test_dinov3_rope_uses_the_periods_the_file_stores(tmp_path):
    """A DINOv3 file's RoPE periods (bf16, as the releases store them: 100 ** (i / 16) rounded)
    replace timm's fp32 recomputation; the rotary angles follow them by hand."""
    from edgedistill.models.teacher import load_teacher

    model, _ = build("vit_small_patch16_dinov3")
    stored = (100.0 ** (torch.arange(16, dtype=torch.float64) / 16)).bfloat16()
    assert stored[1].item() == 1.3359375 and abs(model.rope.periods[1].item() - 1.3335214) < 1e-6
    teacher, info = load_teacher(_dinov3_file(tmp_path, model, stored), "vit_small_patch16_dinov3", 64, depth=2)
    assert info["load"]["rope_periods"] == "file"
    assert torch.equal(teacher.rope.periods, stored.float())
    # first patch of a 4x4 grid: coordinates (0.5 / 4) * 2 - 1 = -0.75 on both axes
    sin = teacher.rope.get_embed(shape=[4, 4])[0, :64]
    torch.testing.assert_close(sin[1], torch.tensor(math.sin(2 * math.pi * -0.75 / 1.3359375)), atol=1e-6, rtol=0)
    reference = copy.deepcopy(model)
    reference.rope.periods.copy_(stored.float())
    with torch.no_grad():
        for size in (64, 48):
            assert torch.equal(forward_cls(teacher, images(size)), forward_cls(reference, images(size)))
        assert (forward_cls(teacher, images(64)) - forward_cls(model, images(64))).abs().max() > 1e-5


def test_dinov3_stored_periods_reach_a_fixed_grid_model(tmp_path):
    """A fixed-size Eva caches its grid's rotary embedding: it is rebuilt from the file's periods."""
    from edgedistill.models.teacher import load_teacher

    model, _ = build("vit_small_patch16_dinov3")
    stored = model.rope.periods.bfloat16()
    path = _dinov3_file(tmp_path, model, stored)
    dynamic, _ = load_teacher(path, "vit_small_patch16_dinov3", 64, depth=2)
    fixed, _ = load_teacher(path, "vit_small_patch16_dinov3", 64, depth=2, dynamic_img_size=False)
    assert fixed.rope.pos_embed_cached is not None
    torch.testing.assert_close(fixed.rope.pos_embed_cached, dynamic.rope.get_embed(shape=[4, 4]), atol=0, rtol=0)
    with torch.no_grad():
        assert torch.equal(forward_cls(fixed, images(64)), forward_cls(dynamic, images(64)))
