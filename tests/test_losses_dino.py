"""DINO loss, centering, temperature schedule and head against loop references and hand values."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from edgedistill.losses.dino import dino_loss, teacher_temperature, update_center
from edgedistill.models.projector import DINOHead, cancel_last_layer_gradients


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_dino_loss(student, teacher, center, batch, n_global, n_crops, ts, tt) -> float:
    """Loop over (teacher crop iq, student crop v != iq), images and classes, float64."""
    total, terms = 0.0, 0
    for iq in range(n_global):
        for v in range(n_crops):
            if v == iq:
                continue
            pair = 0.0
            for b in range(batch):
                q = _np_softmax((teacher[iq * batch + b] - center[0]) / tt)
                logits = student[v * batch + b] / ts
                logp = logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())
                pair += sum(-q[k] * logp[k] for k in range(len(q)))
            total += pair / batch
            terms += 1
    return total / terms


def test_dino_loss_matches_loop():
    torch.manual_seed(0)
    batch, k, n_crops = 2, 5, 4  # 2 global + 2 local
    student = torch.randn(n_crops * batch, k, dtype=torch.float64)
    teacher = torch.randn(2 * batch, k, dtype=torch.float64)
    center = torch.randn(1, k, dtype=torch.float64) * 0.1
    got = dino_loss(student, teacher, center)
    expected = ref_dino_loss(
        student.numpy(), teacher.numpy(), center.numpy(), batch, 2, n_crops, 0.1, 0.04
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # other temperatures
    got = dino_loss(student, teacher, center, student_temp=0.2, teacher_temp=0.07)
    expected = ref_dino_loss(
        student.numpy(), teacher.numpy(), center.numpy(), batch, 2, n_crops, 0.2, 0.07
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_uniform_by_hand():
    # equal teacher logits -> uniform targets; zero student logits -> log_softmax = -log K
    k = 5
    loss = dino_loss(torch.zeros(6, k), torch.ones(4, k), torch.zeros(1, k))
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)


def test_dino_loss_only_global_crops():
    # with 2 crops each global crop is the other's target: 2 pairs
    torch.manual_seed(1)
    s, t, c = torch.randn(6, 3), torch.randn(6, 3), torch.zeros(1, 3)
    expected = ref_dino_loss(s.double().numpy(), t.double().numpy(), c.double().numpy(), 3, 2, 2, 0.1, 0.04)
    assert dino_loss(s, t, c).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_teacher_detached():
    torch.manual_seed(2)
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    dino_loss(s, t, torch.zeros(1, 5)).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_dino_loss_bad_shapes():
    with pytest.raises(ValueError):
        dino_loss(torch.zeros(7, 5), torch.zeros(4, 5), torch.zeros(1, 5))
    with pytest.raises(ValueError):
        dino_loss(torch.zeros(8, 5), torch.zeros(5, 5), torch.zeros(1, 5))


def test_update_center_by_hand():
    center = torch.tensor([[1.0, -1.0]])
    teacher = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    new = update_center(center, teacher, momentum=0.9)
    # batch mean (2, 3): 0.9 * (1, -1) + 0.1 * (2, 3)
    assert torch.allclose(new, torch.tensor([[1.1, -0.6]]))
    assert torch.equal(center, torch.tensor([[1.0, -1.0]]))  # input untouched
    assert new is not center


def test_update_center_distributed_single_rank(tmp_path):
    # the all_reduce path with a real (1-process, gloo) process group
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        new = update_center(torch.zeros(1, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 0.5)
        assert torch.allclose(new, torch.tensor([[1.0, 1.5]]))
    finally:
        dist.destroy_process_group()


def test_teacher_temperature_schedule():
    warm, final, epochs = 0.04, 0.07, 30
    ref = np.linspace(warm, final, epochs)  # DINO's schedule
    for e in range(epochs):
        assert teacher_temperature(e, warm, final, epochs) == pytest.approx(ref[e])
    assert teacher_temperature(0, warm, final, epochs) == pytest.approx(0.04)
    assert teacher_temperature(29, warm, final, epochs) == pytest.approx(0.07)
    assert teacher_temperature(100, warm, final, epochs) == pytest.approx(0.07)
    assert teacher_temperature(0, warm, final, 0) == pytest.approx(0.07)  # no warmup
    with pytest.raises(ValueError):
        teacher_temperature(-1, warm, final, epochs)


def test_dino_head_shapes_and_norm():
    torch.manual_seed(0)
    head = DINOHead(12, 7, hidden_dim=16, bottleneck_dim=4)
    out = head(torch.randn(3, 12))
    assert out.shape == (3, 7)
    wn = head.last_layer.parametrizations.weight
    assert not wn.original0.requires_grad
    assert torch.all(wn.original0 == 1)
    # effective rows are unit norm, inputs to it are unit norm -> |logits| <= 1
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(7), atol=1e-6)
    assert out.abs().max() <= 1 + 1e-6
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 16), (16, 16), (16, 4)]
    assert all(torch.all(m.bias == 0) for m in linears)
    assert DINOHead(12, 7, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad
    copy.deepcopy(head)  # the EMA teacher is a deep copy


def test_dino_head_with_batchnorm():
    """use_bn: BatchNorm after every hidden Linear (DINO's use_bn_in_head), none on the bottleneck."""
    torch.manual_seed(0)
    head = DINOHead(12, 7, hidden_dim=16, bottleneck_dim=4, use_bn=True)
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    hidden = head.mlp[:2](torch.randn(32, 12) * 5 + 3)  # train mode: batch statistics
    assert hidden.mean(0).abs().max() < 1e-5 and (hidden.std(0, unbiased=False) - 1).abs().max() < 1e-3
    assert head(torch.randn(5, 12)).shape == (5, 7)


def test_cancel_last_layer_gradients():
    torch.manual_seed(0)
    head = DINOHead(12, 7, hidden_dim=16, bottleneck_dim=4)
    wrapper = torch.nn.Sequential(torch.nn.Identity(), head)  # works on a containing module
    wrapper(torch.randn(3, 12)).sum().backward()
    v = head.last_layer.parametrizations.weight.original1
    assert v.grad is not None
    cancel_last_layer_gradients(wrapper, epoch=1, freeze_last_layer=1)  # frozen period over
    assert v.grad is not None
    cancel_last_layer_gradients(wrapper, epoch=0, freeze_last_layer=1)
    assert v.grad is None
    assert all(m.weight.grad is not None for m in head.mlp if isinstance(m, torch.nn.Linear))
