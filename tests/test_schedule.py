"""The optimizer's parameter groups and the per-step schedules, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from edgedistill.train.schedule import cosine, param_groups, warmup_cosine


def test_warmup_then_half_cosine():
    base, final = 1e-3, 1e-5
    values = [warmup_cosine(s, 100, 10, base, final) for s in range(101)]
    assert values[0] == 0.0 and values[5] == pytest.approx(base / 2) and values[10] == pytest.approx(base)
    assert values[55] == pytest.approx(final + (base - final) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[100] == pytest.approx(final)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # decreasing after the warmup
    assert warmup_cosine(500, 100, 10, base, final) == pytest.approx(final)  # past the end: stays at final
    assert warmup_cosine(0, 100, 0, base) == pytest.approx(base)  # no warmup: starts at base


def test_cosine_from_start_to_end():
    assert cosine(0, 50, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine(25, 50, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(50, 50, 0.04, 0.4) == pytest.approx(0.4)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(3, 4)]  # the frozen weight is left out
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(2,), (3,), (3,), (3,)]
