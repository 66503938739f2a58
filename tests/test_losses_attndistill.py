"""AttnDistill losses and projector against references written independently (NumPy loops,
hand-computed scalars), plus the ViT-S/8 -> ViT-T/16 pairing that made the released code NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgedistill.losses.attndistill import (
    aggregate_heads,
    attention_kl,
    attndistill_loss,
    cls_loss,
    resize_attention,
)
from edgedistill.models.projector import Projector

EPS, MAX_P, T = 1e-5, 0.996, 10.0


# ---------------------------------------------------------------- NumPy references (float64)


def ref_clamp_renorm(row: np.ndarray) -> np.ndarray:
    row = np.array([min(max(x, EPS), MAX_P) for x in row])
    return row / row.sum()


def ref_kl(t: np.ndarray, s: np.ndarray) -> float:
    """t, s: (B, H, N). Loop over batch, heads, keys; divide by B only."""
    total = 0.0
    for b in range(t.shape[0]):
        for h in range(t.shape[1]):
            tr, sr = ref_clamp_renorm(t[b, h]), ref_clamp_renorm(s[b, h])
            for k in range(t.shape[2]):
                total += tr[k] * (math.log(tr[k]) - math.log(sr[k]))
    return total / t.shape[0]


def ref_aggregate(a: np.ndarray, clamp: bool = True) -> np.ndarray:
    """a: (B, H, N) -> (B, 1, N): softmax over keys of sum_h log(A_h) / T."""
    bsz, heads, n = a.shape
    out = np.zeros((bsz, 1, n))
    for b in range(bsz):
        logits = []
        for k in range(n):
            acc = 0.0
            for h in range(heads):
                x = max(a[b, h, k], EPS) if clamp else a[b, h, k]
                acc += math.log(x) if x > 0 else float("nan")
            logits.append(acc / T)
        logits = np.array(logits)
        e = np.exp(logits - logits.max())
        out[b, 0] = e / e.sum()
    return out


def ref_resize(a: np.ndarray, side: int, clamp: bool = True) -> np.ndarray:
    """a: (B, H, 1+n*n) -> (B, H, 1+side*side); F.interpolate for the resize only."""
    bsz, heads, n_tok = a.shape
    src = math.isqrt(n_tok - 1)
    out = np.zeros((bsz, heads, 1 + side * side))
    for b in range(bsz):
        for h in range(heads):
            grid = torch.from_numpy(a[b, h, 1:].reshape(1, 1, src, src))
            res = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
            patch = res.reshape(-1).numpy()
            if clamp:
                patch = np.maximum(patch, EPS)
            patch = patch * (1.0 - a[b, h, 0]) / patch.sum()
            out[b, h, 0] = a[b, h, 0]
            out[b, h, 1:] = patch
    return out


def softmax_np(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rand_attn(*shape: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * scale, dim=-1)


# ---------------------------------------------------------------- cls_loss


def test_cls_loss_by_hand():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # squared diffs 1, 0, 4, 9 -> mean 14 / 4
    assert cls_loss(s, t).item() == pytest.approx(3.5)


def test_cls_loss_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        cls_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------- attention_kl, head by head


def test_kl_scalar_by_hand():
    t = torch.tensor([[[0.5, 0.5]]])
    s = torch.tensor([[[0.25, 0.75]]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert attention_kl(t, s).item() == pytest.approx(expected, rel=1e-6)


def test_kl_clamp_by_hand():
    # teacher one-hot: clamped to [0.996, 1e-5] then renormalized by their sum 0.99601
    t = torch.tensor([[[1.0, 0.0]]])
    s = torch.tensor([[[0.5, 0.5]]])
    z = 0.996 + 1e-5
    t0, t1 = 0.996 / z, 1e-5 / z
    expected = t0 * math.log(t0 / 0.5) + t1 * math.log(t1 / 0.5)
    assert attention_kl(t, s).item() == pytest.approx(expected, rel=1e-5)


def test_kl_head_by_head_matches_loop():
    t = rand_attn(2, 3, 10, scale=3.0, seed=1)
    s = rand_attn(2, 3, 10, scale=3.0, seed=2)
    got = attention_kl(t, s).item()
    assert got == pytest.approx(ref_kl(t.numpy(), s.numpy()), rel=1e-5)
    # "never" gives the same with equal head counts
    assert attention_kl(t, s, aggregate="never").item() == pytest.approx(got, rel=1e-6)


def test_kl_identical_maps_is_zero():
    t = rand_attn(2, 3, 17, seed=3)
    assert attention_kl(t, t.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_batchmean_repeat_batch_same_loss():
    t = rand_attn(2, 3, 10, scale=2.0, seed=4)
    s = rand_attn(2, 3, 10, scale=2.0, seed=5)
    single = attention_kl(t, s)
    doubled = attention_kl(torch.cat([t, t]), torch.cat([s, s]))
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)


def test_kl_not_divided_by_heads():
    t = rand_attn(2, 1, 10, scale=2.0, seed=6)
    s = rand_attn(2, 1, 10, scale=2.0, seed=7)
    one = attention_kl(t, s)
    two = attention_kl(t.repeat(1, 2, 1), s.repeat(1, 2, 1))
    assert two.item() == pytest.approx(2.0 * one.item(), rel=1e-6)


def test_kl_teacher_detached():
    t = rand_attn(2, 3, 10, seed=8).requires_grad_(True)
    s_logits = torch.randn(2, 3, 10, dtype=torch.float64, requires_grad=True)
    attention_kl(t, torch.softmax(s_logits, -1)).backward()
    assert t.grad is None
    assert s_logits.grad is not None and torch.isfinite(s_logits.grad).all()


# ---------------------------------------------------------------- aggregation


def test_aggregate_heads_matches_loop():
    a = rand_attn(2, 6, 9, scale=2.0, seed=9)
    a[0, 2, 3] = 0.0  # exercises the clamp before the log
    got = aggregate_heads(a)
    assert got.shape == (2, 1, 9)
    np.testing.assert_allclose(got.double().numpy(), ref_aggregate(a.numpy()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, rtol=1e-6)


def test_kl_6_to_3_heads_matches_loop():
    t = rand_attn(2, 6, 10, scale=3.0, seed=10)
    s = rand_attn(2, 3, 10, scale=3.0, seed=11)
    expected = ref_kl(ref_aggregate(t.numpy()), ref_aggregate(s.numpy()))
    assert attention_kl(t, s).item() == pytest.approx(expected, rel=1e-5)
    assert attention_kl(t, s, aggregate="always").item() == pytest.approx(expected, rel=1e-5)


def test_aggregate_always_with_equal_heads():
    t = rand_attn(2, 3, 10, scale=3.0, seed=12)
    s = rand_attn(2, 3, 10, scale=3.0, seed=13)
    expected = ref_kl(ref_aggregate(t.numpy()), ref_aggregate(s.numpy()))
    assert attention_kl(t, s, aggregate="always").item() == pytest.approx(expected, rel=1e-5)
    assert attention_kl(t, s).item() != pytest.approx(expected, rel=1e-3)  # auto: head by head


def test_aggregate_never_with_different_heads_raises():
    with pytest.raises(ValueError, match="6 heads and student 3"):
        attention_kl(rand_attn(1, 6, 5), rand_attn(1, 3, 5), aggregate="never")
    with pytest.raises(ValueError, match="aggregate must be"):
        attention_kl(rand_attn(1, 3, 5), rand_attn(1, 3, 5), aggregate="sometimes")


# ---------------------------------------------------------------- grid resizing


def _np_cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _np_bicubic(img: np.ndarray, out: int) -> np.ndarray:
    """Keys cubic (a=-0.75), half-pixel centers (align_corners=False), edge replication."""
    n = img.shape[0]
    scale = n / out
    res = np.zeros((out, out))
    for oy in range(out):
        for ox in range(out):
            sy, sx = (oy + 0.5) * scale - 0.5, (ox + 0.5) * scale - 0.5
            y0, x0 = math.floor(sy), math.floor(sx)
            acc = 0.0
            for j in range(-1, 3):
                for i in range(-1, 3):
                    yy, xx = min(max(y0 + j, 0), n - 1), min(max(x0 + i, 0), n - 1)
                    acc += img[yy, xx] * _np_cubic(sy - (y0 + j)) * _np_cubic(sx - (x0 + i))
            res[oy, ox] = acc
    return res


def test_resize_small_grid_vs_numpy_bicubic():
    # 4x4 -> 2x2, fully independent of F.interpolate
    a = rand_attn(1, 1, 17, scale=1.0, seed=14)
    got = resize_attention(a, (2, 2)).double().numpy()[0, 0]
    patch = np.maximum(_np_bicubic(a.numpy()[0, 0, 1:].reshape(4, 4), 2).reshape(-1), EPS)
    patch = patch * (1 - a[0, 0, 0].item()) / patch.sum()
    np.testing.assert_allclose(got[0], a[0, 0, 0].item(), rtol=1e-6)
    np.testing.assert_allclose(got[1:], patch, rtol=1e-5)


def test_resize_28_to_14_vs_reference():
    a = rand_attn(2, 6, 1 + 784, scale=3.0, seed=15)
    got = resize_attention(a, (14, 14))
    assert got.shape == (2, 6, 1 + 196)
    ref = ref_resize(a.numpy(), 14)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=1e-5, atol=1e-9)
    # CLS->CLS weight preserved (copied as is), rows sum to 1, no patch weight below eps
    np.testing.assert_allclose(got[..., 0].double().numpy(), a[..., 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got.sum(-1).double().numpy(), 1.0, rtol=1e-5)
    assert got[..., 1:].min().item() >= EPS


def test_kl_resized_teacher_matches_loop():
    t = rand_attn(2, 3, 1 + 64, scale=2.0, seed=16)  # 8x8 teacher
    s = rand_attn(2, 3, 1 + 16, scale=2.0, seed=17)  # 4x4 student
    expected = ref_kl(ref_resize(t.numpy(), 4), s.numpy())
    assert attention_kl(t, s).item() == pytest.approx(expected, rel=1e-5)


def test_resize_keeps_register_columns_with_the_cls_column():
    """With registers kept (prefix = CLS + 4 registers), the 5 prefix weights are copied and the
    patches resized and rescaled to what they leave; the patch part equals the prefix-1 resize
    of a row whose single prefix column holds the same total weight."""
    a = rand_attn(2, 3, 5 + 64, scale=2.0, seed=18)  # CLS, 4 registers, 8x8 patches
    got = resize_attention(a, (4, 4), prefix=5)
    assert got.shape == (2, 3, 5 + 16)
    torch.testing.assert_close(got[..., :5], a[..., :5].float(), atol=0, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 3), atol=1e-6, rtol=0)
    merged = torch.cat([a[..., :5].sum(-1, keepdim=True), a[..., 5:]], dim=-1)
    torch.testing.assert_close(got[..., 5:], resize_attention(merged, (4, 4))[..., 1:], atol=1e-7, rtol=1e-6)


def test_kl_with_register_prefix_resizes_patches_only():
    t = rand_attn(2, 3, 5 + 64, scale=2.0, seed=19)
    s = rand_attn(2, 3, 5 + 16, scale=2.0, seed=20)
    expected = ref_kl(resize_attention(t, (4, 4), prefix=5).double().numpy(), s.numpy())
    assert attention_kl(t, s, prefix_tokens=5).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="square"):  # 21 - 1 = 20 patches: not a grid with one prefix column
        attention_kl(t, s)
    loss = attndistill_loss(torch.zeros(2, 4), torch.zeros(2, 4), s, t, prefix_tokens=5)
    assert loss["attn"].item() == pytest.approx(attention_kl(t, s, prefix_tokens=5).item())


def test_non_square_grid_raises():
    with pytest.raises(ValueError, match="square"):
        attention_kl(rand_attn(1, 3, 1 + 64), rand_attn(1, 3, 1 + 15))


# ---------------------------------------------------------------- ViT-S/8 -> ViT-T/16


def _peaky_pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # softmax of large logits: a few dominant patches, the rest ~0, so bicubic rings negative
    teacher = torch.softmax(torch.randn(2, 6, 1 + 784, generator=g) * 12.0, dim=-1)
    student_logits = (torch.randn(2, 3, 1 + 196, generator=g) * 12.0).requires_grad_(True)
    return teacher, student_logits


def test_vit_s8_to_vit_t16_is_finite():
    teacher, student_logits = _peaky_pair()
    loss = attention_kl(teacher, torch.softmax(student_logits, dim=-1))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(student_logits.grad).all()
    assert student_logits.grad.abs().sum() > 0
    # and it equals the clamped reference
    s = torch.softmax(student_logits.detach().double(), dim=-1).numpy()
    expected = ref_kl(ref_aggregate(ref_resize(teacher.double().numpy(), 14)), ref_aggregate(s))
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_vit_s8_to_vit_t16_without_clamp_is_nan():
    # the released code's order without the clamp after resizing: NaN
    teacher, student_logits = _peaky_pair()
    resized = ref_resize(teacher.double().numpy(), 14, clamp=False)
    assert resized.min() < 0, "bicubic must overshoot below zero for this test to mean anything"
    with np.errstate(invalid="ignore"):
        naive_t = ref_aggregate(resized, clamp=False)
    s = ref_aggregate(torch.softmax(student_logits.detach().double(), -1).numpy())
    assert math.isnan(ref_kl(naive_t, s))
    # the same naive computation in torch (log of the unclamped resize) is NaN too
    b, h, _ = teacher.shape
    patch = F.interpolate(teacher[..., 1:].reshape(b, h, 28, 28), size=(14, 14), mode="bicubic")
    patch = patch.reshape(b, h, -1)
    patch = patch * (1 - teacher[..., :1]) / patch.sum(-1, keepdim=True)
    naive = torch.softmax(torch.cat([teacher[..., :1], patch], -1).log().sum(1) / T, -1)
    assert torch.isnan(naive).any()


# ---------------------------------------------------------------- attndistill_loss


def test_attndistill_loss_weights():
    torch.manual_seed(0)
    s_cls, t_cls = torch.randn(4, 8), torch.randn(4, 8)
    t_attn, s_attn = rand_attn(4, 6, 1 + 64, seed=18).float(), rand_attn(4, 3, 1 + 16, seed=19).float()
    out = attndistill_loss(s_cls, t_cls, s_attn, t_attn, w_cls=0.7, w_attn=0.3)
    assert set(out) == {"loss", "cls", "attn"}
    assert out["cls"].item() == pytest.approx(cls_loss(s_cls, t_cls).item(), rel=1e-6)
    assert out["attn"].item() == pytest.approx(attention_kl(t_attn, s_attn).item(), rel=1e-6)
    expected = 0.7 * out["cls"].item() + 0.3 * out["attn"].item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    default = attndistill_loss(s_cls, t_cls, s_attn, t_attn)
    assert default["loss"].item() == pytest.approx(
        default["cls"].item() + 0.1 * default["attn"].item(), rel=1e-6
    )


def test_attndistill_loss_w_attn_zero_skips_attention():
    torch.manual_seed(0)
    s_cls = torch.randn(2, 8, requires_grad=True)
    t_cls = torch.randn(2, 8)
    # maps whose batch sizes disagree would raise if the attention term were computed
    out = attndistill_loss(s_cls, t_cls, rand_attn(3, 3, 5), rand_attn(2, 3, 5), w_attn=0.0)
    assert out["attn"].item() == 0.0
    assert out["loss"].item() == pytest.approx(cls_loss(s_cls, t_cls).item())
    out["loss"].backward()
    assert s_cls.grad is not None


# ---------------------------------------------------------------- Projector


def _kinds(module: nn.Module) -> list[tuple]:
    out = []
    for m in module.layers:
        if isinstance(m, nn.Linear):
            out.append(("Linear", m.in_features, m.out_features))
        elif isinstance(m, nn.LayerNorm):
            out.append(("LayerNorm", m.normalized_shape[0]))
        else:
            out.append((type(m).__name__,))
    return out


def test_projector_depth3_layers_and_shape():
    torch.manual_seed(0)
    p = Projector(16, 24)
    assert _kinds(p) == [
        ("LayerNorm", 16),
        ("Linear", 16, 32), ("GELU",),
        ("Linear", 32, 16), ("GELU",),
        ("Linear", 16, 32), ("GELU",),
        ("Linear", 32, 24),
        ("LayerNorm", 24),
    ]
    assert p(torch.randn(2, 5, 16)).shape == (2, 5, 24)
    for m in p.layers:
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == 0)
            assert 0.015 < m.weight.std().item() < 0.025  # trunc_normal std .02


def test_projector_depth0():
    torch.manual_seed(0)
    same = Projector(16, 16, depth=0)
    assert _kinds(same) == [("Identity",), ("LayerNorm", 16)]
    x = torch.randn(2, 5, 16)
    assert torch.allclose(same(x), F.layer_norm(x, (16,), eps=1e-6), atol=1e-6)
    diff = Projector(16, 24, depth=0)
    assert _kinds(diff) == [("Linear", 16, 24), ("LayerNorm", 24)]
    assert diff(x).shape == (2, 5, 24)


def test_projector_other_depths():
    assert _kinds(Projector(8, 12, depth=1)) == [
        ("LayerNorm", 8), ("Linear", 8, 16), ("GELU",), ("Linear", 16, 12), ("LayerNorm", 12)
    ]
    assert Projector(8, 12, depth=4)(torch.randn(3, 8)).shape == (3, 12)
    with pytest.raises(ValueError):
        Projector(8, 12, depth=-1)
