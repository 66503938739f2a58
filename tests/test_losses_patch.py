"""The dense (patch-token) term against hand-computed references on tiny tensors, and the task
wiring: nothing of it runs when it is off, registers are skipped, grids are matched."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.config import build_config
from edgedistill.losses.attndistill import attndistill_loss
from edgedistill.losses.patch import patch_loss, patch_tokens, resize_patch_tokens


# ---------------------------------------------------------------- patch_loss


def test_cosine_by_hand():
    # batch 1, 2 tokens, 2 dims: token 0 aligned (cos 1), token 1 orthogonal (cos 0)
    s = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    t = torch.tensor([[[3.0, 0.0], [5.0, 0.0]]])
    assert patch_loss(s, t, kind="cosine").item() == pytest.approx(((1 - 1) + (1 - 0)) / 2)
    # 45 degrees, opposite: 1 - cos = 1 - 1/sqrt(2), 2
    s = torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]])
    t = torch.tensor([[[1.0, 0.0]], [[-2.0, 0.0]]])
    assert patch_loss(s, t).item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 2) / 2, rel=1e-6)


def test_smooth_l1_by_hand():
    s = torch.tensor([[[0.0, 0.5], [3.0, -1.0]]])
    t = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    # |d| = 0, 0.5, 3, 2 -> 0, 0.5 * 0.25, 3 - 0.5, 2 - 0.5 (beta 1), mean over 4 elements
    expected = (0 + 0.125 + 2.5 + 1.5) / 4
    assert patch_loss(s, t, kind="smooth_l1").item() == pytest.approx(expected)


def test_patch_loss_teacher_is_detached_and_student_gets_gradients():
    s = torch.randn(2, 4, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, requires_grad=True)
    for kind in ("cosine", "smooth_l1"):
        patch_loss(s, t, kind=kind).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_patch_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        patch_loss(torch.zeros(1, 4, 3), torch.zeros(1, 16, 3))
    with pytest.raises(ValueError, match="must be one of"):
        patch_loss(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), kind="l2")


# ---------------------------------------------------------------- patch tokens and grids


def test_patch_tokens_are_the_last_grid_tokens_so_registers_are_skipped():
    # CLS, 4 register tokens, then a 2x2 grid: the patches are tokens 5..8, not 1..4
    tokens = torch.arange(9.0).reshape(1, 9, 1)
    assert patch_tokens(tokens, (2, 2)).flatten().tolist() == [5.0, 6.0, 7.0, 8.0]
    assert patch_tokens(tokens[:, 4:], (2, 2)).flatten().tolist() == [5.0, 6.0, 7.0, 8.0]  # CLS only
    with pytest.raises(ValueError, match="fewer than"):
        patch_tokens(tokens, (3, 4))


def test_resize_to_a_coarser_grid_averages_blocks():
    # 4x4 grid, one channel holding the token index; 2x2 blocks -> their means
    tokens = torch.arange(16.0).reshape(1, 16, 1)
    got = resize_patch_tokens(tokens, (4, 4), (2, 2)).flatten().tolist()
    assert got == pytest.approx([(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4, (10 + 11 + 14 + 15) / 4])


def test_resize_to_a_finer_grid_is_bilinear_by_hand():
    # 2x2 -> 4x4, align_corners=False: output centres fall at -0.25, 0.25, 0.75, 1.25 in input
    # coordinates (clamped to 0..1), so each axis mixes [a, b] into
    # [a, 0.75a + 0.25b, 0.25a + 0.75b, b]; the 2-D result is that mix on rows then columns.
    a, b, c, d = 1.0, 3.0, 5.0, 11.0  # grid [[a, b], [c, d]]
    tokens = torch.tensor([a, b, c, d]).reshape(1, 4, 1)
    weights = [(1.0, 0.0), (0.75, 0.25), (0.25, 0.75), (0.0, 1.0)]
    expected = []
    for wy0, wy1 in weights:
        for wx0, wx1 in weights:
            expected.append(wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d))
    got = resize_patch_tokens(tokens, (2, 2), (4, 4)).flatten().tolist()
    assert got == pytest.approx(expected, rel=1e-6)


def test_resize_keeps_channels_apart_and_the_same_grid_untouched():
    tokens = torch.randn(2, 16, 5)
    assert torch.equal(resize_patch_tokens(tokens, (4, 4), (4, 4)), tokens)
    per_channel = torch.cat([resize_patch_tokens(tokens[..., i:i + 1], (4, 4), (2, 2)) for i in range(5)], dim=-1)
    assert torch.allclose(resize_patch_tokens(tokens, (4, 4), (2, 2)), per_channel)
    with pytest.raises(ValueError, match="is not"):
        resize_patch_tokens(tokens, (3, 3), (2, 2))


# ---------------------------------------------------------------- in attndistill_loss


def _cls_attn(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s_cls, t_cls = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    s_attn = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)
    t_attn = torch.softmax(torch.randn(2, 3, 5, generator=g), -1)
    return s_cls, t_cls, s_attn, t_attn


def test_attndistill_loss_adds_the_weighted_patch_term():
    s_cls, t_cls, s_attn, t_attn = _cls_attn()
    s_p, t_p = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    base = attndistill_loss(s_cls, t_cls, s_attn, t_attn)
    out = attndistill_loss(s_cls, t_cls, s_attn, t_attn, student_patches=s_p, teacher_patches=t_p,
                           w_patch=0.5, patch_kind="smooth_l1")
    assert out["patch"].item() == pytest.approx(patch_loss(s_p, t_p, kind="smooth_l1").item())
    assert out["loss"].item() == pytest.approx(base["loss"].item() + 0.5 * out["patch"].item(), rel=1e-6)
    assert "patch" not in base  # off: not computed, not logged
    with pytest.raises(ValueError, match="needs student_patches"):
        attndistill_loss(s_cls, t_cls, s_attn, t_attn, w_patch=1.0)


# ---------------------------------------------------------------- the task


def _task(*overrides: str, teacher_patch: int = 8):
    from edgedistill.models.vit import create_vit
    from edgedistill.train.distill import DistillTask

    cfg = build_config(None, ["data.img_size=16", "teacher.patch_size=%d" % teacher_patch, "student.patch_size=4",
                              *overrides])
    torch.manual_seed(0)
    teacher, _ = create_vit("vit_small_patch16_224", img_size=16, patch_size=teacher_patch, depth=1)
    student, kwargs = create_vit("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1)
    return DistillTask(cfg, teacher, student, kwargs, {"kind": "random"}, torch.device("cpu"))


def test_task_without_the_dense_term_projects_the_cls_token_only():
    task = _task()
    seen = []
    task.trainable.projector.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    parts = task.loss(task.trainable, torch.randn(2, 3, 16, 16), 0)
    assert seen == [(2, 1, 192)] and "patch" not in parts
    on = _task("distill.w_patch=1")
    seen.clear()
    on.trainable.projector.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    on.loss(on.trainable, torch.randn(2, 3, 16, 16), 0)
    assert seen == [(2, 17, 192)]  # one pass over CLS + 16 patches: the two terms share it


# teacher grid 2x2 (upsampled), 8x8 (averaged), 4x4 (as is) -> student 4x4
@pytest.mark.parametrize("teacher_patch,kind", [(8, "cosine"), (2, "cosine"), (4, "smooth_l1")])
def test_task_with_the_dense_term_matches_the_loss_by_hand(teacher_patch, kind):
    from edgedistill.models.vit import forward_with_cls_attention

    task = _task("distill.w_patch=2.0", f"distill.patch_loss={kind}", teacher_patch=teacher_patch)
    images = torch.randn(2, 3, 16, 16)
    parts = task.loss(task.trainable, images, 0)
    with torch.no_grad():
        t_tokens, _ = forward_with_cls_attention(task.teacher, images)
        side = 16 // teacher_patch
        t_grid = t_tokens[:, 1:].transpose(1, 2).reshape(2, 384, side, side)
        mode = dict(mode="area") if side >= 4 else dict(mode="bilinear", align_corners=False)
        t_patches = torch.nn.functional.interpolate(t_grid, size=(4, 4), **mode).flatten(2).transpose(1, 2)
        s_tokens, _ = forward_with_cls_attention(task.trainable.student, images, explicit_all_blocks=True)
        s_patches = task.trainable.projector(s_tokens[:, 1:])
        if kind == "cosine":
            expected = (1 - torch.nn.functional.cosine_similarity(s_patches, t_patches, dim=-1)).mean()
        else:
            diff = (s_patches - t_patches).abs()
            expected = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert parts["patch"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert parts["loss"].item() == pytest.approx(parts["cls"].item() + 0.1 * parts["attn"].item() + 2.0 * parts["patch"].item(), rel=1e-5)
    parts["loss"].backward()
    assert all(p.grad is not None for p in task.trainable.projector.parameters())


def test_config_validates_the_dense_term():
    from edgedistill.errors import EdgeDistillError

    assert build_config(None, []).distill.w_patch == 0.0
    cfg = build_config(None, ["distill.w_cls=0", "distill.w_attn=0", "distill.w_patch=1"])
    assert cfg.distill.w_patch == 1.0
    with pytest.raises(EdgeDistillError, match="distill.patch_loss must be cosine or smooth_l1"):
        build_config(None, ["distill.patch_loss=l2"])
    with pytest.raises(EdgeDistillError, match="not all 0"):
        build_config(None, ["distill.w_cls=0", "distill.w_attn=0"])
