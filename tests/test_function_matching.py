"""Function matching (mixed images, the teacher's target on the very image the student sees) and
the standardized CLS target: hand-computed references on tiny tensors, then the real task."""

from __future__ import annotations

import random

import pytest
import torch

from edgedistill.config import build_config
from edgedistill.data import build_train_loader
from edgedistill.data.mixing import MixedDataset, MixSettings, mix_pair
from edgedistill.data.transforms import train_transform
from edgedistill.errors import EdgeDistillError
from edgedistill.train.stages import distill

from conftest import tiny_overrides


def test_mixup_is_the_convex_combination():
    x, y = torch.rand(3, 4, 4), torch.rand(3, 4, 4)
    mixed = mix_pair(x, y, "mixup", 0.3, random.Random(0))
    assert torch.allclose(mixed, 0.3 * x + 0.7 * y)


def test_cutmix_pastes_one_box_of_the_partner():
    x, y = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    mixed = mix_pair(x, y, "cutmix", 0.75, random.Random(3))
    pasted = mixed[0] == 1
    rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    # a full rectangle: every pixel inside the box's bounds came from y, every one outside from x
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    assert torch.equal(pasted, box)
    # side sqrt(1 - 0.75) * 8 = 4 before clipping at the border
    assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
    assert torch.equal(mixed[1], mixed[0]) and torch.equal(mixed[2], mixed[0])  # same box in every channel


class _Ramp:
    """Image i is the constant i: a mixed image shows which images it came from."""

    classes, labels = ["a"], [0] * 10

    def __len__(self) -> int:
        return 10

    def __getitem__(self, item):
        index = item[0] if isinstance(item, tuple) else item
        return torch.full((1, 4, 4), float(index)), 0


def test_a_mixed_sample_is_a_function_of_its_seed():
    data = MixedDataset(_Ramp(), MixSettings(mixup_alpha=1.0))
    a, b = data[(2, 123)][0], data[(2, 123)][0]
    assert torch.equal(a, b)
    values = {float(data[(2, seed)][0][0, 0, 0]) for seed in range(20)}
    assert len(values) > 10  # partners and ratios vary with the seed
    # mixup of image 2 with image j by lam: every value lies between 0 and 9
    assert all(0.0 <= v <= 9.0 for v in values)


def test_mix_prob_zero_leaves_images_alone_and_settings_are_checked(tiny_folder):
    data = MixedDataset(_Ramp(), MixSettings(cutmix_alpha=1.0, prob=0.0))
    assert torch.equal(data[(4, 9)][0], torch.full((1, 4, 4), 4.0))
    assert not MixSettings().enabled and MixSettings(mixup_alpha=0.2).enabled
    for bad, message in (("distill.mix_prob=1.5", "mix_prob"), ("distill.mixup_alpha=-1", "mixup_alpha"),
                         ("distill.cls_target=whitened", "cls_target"),
                         ("distill.projector_init=zeros", "projector_init")):
        with pytest.raises(EdgeDistillError, match=message):
            build_config(None, tiny_overrides(tiny_folder) + [bad])


def _task(folder, *extra):
    from edgedistill.models.teacher import build_teacher
    from edgedistill.train.distill import DistillTask, build_student

    cfg = build_config(None, tiny_overrides(folder) + list(extra))
    torch.manual_seed(0)
    teacher, info = build_teacher(cfg.teacher, cfg.teacher_img_size)
    student, kwargs = build_student(cfg)
    return cfg, DistillTask(cfg, teacher, student, kwargs, info, torch.device("cpu"))


def test_the_teacher_sees_exactly_the_students_mixed_input(tiny_folder):
    cfg, task = _task(tiny_folder, "distill.mixup_alpha=0.5", "distill.cutmix_alpha=1.0")
    d = cfg.data
    loader = build_train_loader(cfg, train_transform(d.img_size, d.crop_scale, d.mean, d.std), distributed=False,
                                seed=0, mix=MixSettings(0.5, 1.0))
    loader.sampler.set_epoch(0)
    images, _ = next(iter(loader))
    seen = {}
    hooks = [net.patch_embed.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args[0].clone()))
             for key, net in (("teacher", task.teacher), ("student", task.trainable.student))]
    task.loss(task.trainable, images, 0)
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen["teacher"], images) and torch.equal(seen["student"], images)
    # and the batch really is mixed: no image of it is an unmixed training view
    plain = build_train_loader(cfg, train_transform(d.img_size, d.crop_scale, d.mean, d.std), distributed=False, seed=0)
    plain.sampler.set_epoch(0)
    assert not torch.equal(next(iter(plain))[0], images)


def test_standardized_target_uses_the_teachers_statistics(tiny_folder):
    from edgedistill.train.stages import target_statistics_loader

    cfg, task = _task(tiny_folder, "distill.cls_target=standardized", "distill.target_stats_images=20")
    loader = target_statistics_loader(cfg)
    task.prepare_targets(loader)
    with torch.no_grad():
        cls = torch.cat([task._teacher(x)[0][:, 0] for x, _ in loader])
    assert cls.shape[0] == 20
    assert torch.allclose(task.target_mean, cls.mean(0), atol=1e-5)
    assert torch.allclose(task.target_std, cls.std(0), atol=1e-5)
    # the CLS term is the MSE against (t - mean) / std, by hand
    images = next(iter(loader))[0][:4]
    parts = task.loss(task.trainable, images, 0)
    with torch.no_grad():
        student_cls = task.trainable(images)[0]
        target = (task._teacher(images)[0][:, 0] - cls.mean(0)) / cls.std(0)
    assert torch.allclose(parts["cls"], ((student_cls - target) ** 2).mean(), rtol=1e-4)


def test_a_function_matching_run_resumes_to_the_same_weights(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    common = tiny_overrides(tiny_folder) + ["distill.epochs=3", "distill.cls_target=standardized",
                                            "distill.mixup_alpha=0.8", "distill.cutmix_alpha=1.0"]
    distill(build_config(None, common), tmp_path / "full")
    partial = distill(build_config(None, common + ["distill.max_steps=5"]), tmp_path / "resumed")
    assert not partial["complete"]
    distill(build_config(None, common), tmp_path / "resumed", resume=True)
    full, resumed = load_file(str(tmp_path / "full" / "student.safetensors")), \
        load_file(str(tmp_path / "resumed" / "student.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert set(checkpoint["task"]) == {"target_mean", "target_std"}


def test_a_cpu_budget_counts_cpu_seconds(tiny_folder, tmp_path):
    from edgedistill.train.clock import cpu_seconds

    before = cpu_seconds()
    x = torch.randn(600, 600)
    for _ in range(10):  # a few tenths of a CPU second: well above the clock's 10 ms tick
        x = torch.tanh(x @ x)
    assert cpu_seconds() > before
    summary = distill(build_config(None, tiny_overrides(tiny_folder) + [
        "distill.epochs=50", "distill.max_seconds=1", "distill.budget_clock=cpu"]), tmp_path / "run")
    assert summary["budget_reached"] and summary["steps"] < 50 * 4
    assert 1 <= summary["train_seconds"] < 30
    # the target pass before training counts against the budget: a budget it uses up trains nothing more
    spent = distill(build_config(None, tiny_overrides(tiny_folder) + [
        "distill.epochs=50", "distill.max_seconds=0.001", "distill.budget_clock=cpu",
        "distill.cls_target=standardized", "distill.projector_init=least_squares"]), tmp_path / "prepared")
    assert spent["prepare_seconds"] > 0.001 and spent["budget_reached"] and spent["steps"] == 0


def test_fit_projector_is_the_ridge_regression_by_hand():
    """On tiny tensors: the final Linear becomes numpy's least-squares solution of the centred
    problem (with the ridge term added by hand), the final LayerNorm the targets' typical
    per-sample spread and mean, and the returned R^2 that of the fit."""
    import numpy as np

    from edgedistill.models.projector import Projector, fit_projector

    gen = torch.Generator().manual_seed(0)
    projector = Projector(4, 6, depth=1)  # LN, Linear(4, 8), GELU, Linear(8, 6), LN
    hidden = torch.randn(40, 8, generator=gen)
    targets = hidden @ torch.randn(8, 6, generator=gen) + 0.3 * torch.randn(40, 6, generator=gen) + 2.0
    r2 = fit_projector(projector, hidden, targets, ridge=0.1)

    h, y = hidden.double().numpy(), targets.double().numpy()
    hc, yc = h - h.mean(0), y - y.mean(0)
    lam = 0.1 * np.mean(np.sum(hc**2, axis=0))
    stacked_h = np.vstack([hc, np.sqrt(lam) * np.eye(8)])  # ridge as extra rows of least squares
    stacked_y = np.vstack([yc, np.zeros((8, 6))])
    weight = np.linalg.lstsq(stacked_h, stacked_y, rcond=None)[0]
    linear, norm = projector.layers[3], projector.layers[-1]
    assert np.allclose(linear.weight.detach().numpy().T, weight, atol=1e-5)
    assert np.allclose(linear.bias.detach().numpy(), y.mean(0) - h.mean(0) @ weight, atol=1e-5)
    assert np.allclose(norm.weight.detach().numpy(), y.std(1).mean(), atol=1e-5)
    assert np.allclose(norm.bias.detach().numpy(), y.mean(1).mean(), atol=1e-5)
    assert r2 == pytest.approx(1 - np.sum((yc - hc @ weight) ** 2) / np.sum(yc**2), abs=1e-6)
    assert 0.5 < r2 < 1
    assert torch.allclose(projector.hidden(torch.ones(2, 4)), projector.layers[:3](torch.ones(2, 4)))
    assert Projector(6, 6, depth=0).last_linear() is None


def test_a_least_squares_start_fits_the_projector_to_the_students_initial_features(tiny_folder):
    from edgedistill.train.stages import target_statistics_loader

    cfg, task = _task(tiny_folder, "distill.cls_target=standardized", "distill.projector_init=least_squares",
                      "distill.target_stats_images=24")
    loader = target_statistics_loader(cfg)
    images = torch.cat([x for x, _ in loader])
    before = task.loss(task.trainable, images, 0)["cls"]
    measured = task.prepare_targets(loader)
    after = task.loss(task.trainable, images, 0)["cls"]
    assert 0 < measured["projector_r2"] <= 1
    assert after < 0.5 * before  # the random head's loss, against the fitted one on the same images
    # random init leaves the projector as it was built
    torch.manual_seed(0)
    cfg, plain = _task(tiny_folder, "distill.cls_target=standardized")
    weights = [p.clone() for p in plain.trainable.projector.parameters()]
    assert "projector_r2" not in plain.prepare_targets(target_statistics_loader(cfg))
    assert all(torch.equal(a, b) for a, b in zip(weights, plain.trainable.projector.parameters()))
