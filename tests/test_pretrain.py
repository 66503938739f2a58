"""`edgedistill pretrain` (DINO): outputs, plain-timm loading, use as a distill teacher, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgedistill.config import build_config
from edgedistill.train.stages import distill, pretrain

from conftest import REPO, tiny_overrides

PRETRAIN = {
    "pretrain.arch": "vit_small_patch16_224", "pretrain.patch_size": 4, "pretrain.depth": 2,
    "pretrain.epochs": 2, "pretrain.warmup_epochs": 1, "pretrain.out_dim": 64, "pretrain.local_crops": 2,
    "pretrain.local_crop_size": 8, "pretrain.log_every": 1,
}


def _pretrain(folder: Path, out: Path, *extra: str, resume: bool = False) -> dict:
    cfg = build_config(None, tiny_overrides(folder, **PRETRAIN) + list(extra))
    return pretrain(cfg, out, resume=resume)


@pytest.fixture(scope="module")
def teacher_run(tiny_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    summary = _pretrain(tiny_folder, out)
    assert summary["complete"]
    return out


def test_pretrain_writes_a_teacher_pair(teacher_run):
    meta = json.loads((teacher_run / "teacher.json").read_text())
    assert meta["arch"] == "vit_small_patch16_224" and meta["role"] == "teacher"
    assert meta["kwargs"]["patch_size"] == 4 and meta["kwargs"]["depth"] == 2
    assert "dynamic_img_size" not in meta["kwargs"]  # a training-time detail, not part of the model
    weights = load_file(str(teacher_run / "teacher.safetensors"))
    assert not any(k.startswith("head") or "last_layer" in k for k in weights)
    records = [json.loads(x) for x in (teacher_run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_teacher_loads_with_plain_timm(teacher_run):
    code = f"""
import json, sys, timm, torch
meta = json.load(open({str(teacher_run / 'teacher.json')!r}))
m = timm.create_model(meta["arch"], pretrained=True, num_classes=0,
    pretrained_cfg_overlay=dict(file={str(teacher_run / 'teacher.safetensors')!r}), **meta["kwargs"])
assert "edgedistill" not in sys.modules
print(m(torch.zeros(1, 3, 16, 16)).shape[-1])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "384"


def test_pretrain_run_is_a_distill_teacher(teacher_run, tiny_folder, tmp_path):
    cfg = build_config(None, tiny_overrides(tiny_folder, **{"teacher.source": str(teacher_run), "distill.epochs": 1}))
    summary = distill(cfg, tmp_path / "student")
    assert summary["complete"] and summary["teacher"]["kind"] == "run_dir"
    student = json.loads((tmp_path / "student" / "student.json").read_text())
    assert student["teacher"]["kind"] == "run_dir"


def test_the_ema_teacher_moved_and_differs_from_the_student(teacher_run):
    state = torch.load(teacher_run / "checkpoint.pt", weights_only=True)
    student = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    teacher = load_file(str(teacher_run / "teacher.safetensors"))
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)
    assert state["task"]["center"].abs().sum() > 0


def test_resumed_pretrain_matches_uninterrupted(tiny_folder, tmp_path):
    _pretrain(tiny_folder, tmp_path / "full", "pretrain.epochs=3")
    partial = _pretrain(tiny_folder, tmp_path / "resumed", "pretrain.epochs=3", "pretrain.max_steps=5")
    assert not partial["complete"]
    _pretrain(tiny_folder, tmp_path / "resumed", "pretrain.epochs=3", resume=True)
    a = load_file(str(tmp_path / "full" / "teacher.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "teacher.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~20 s; test_resumed_pretrain_matches_uninterrupted checks the resume path in CI
def test_sigkilled_pretrain_resumes_to_the_uninterrupted_result(tiny_folder, tmp_path):
    """A real `edgedistill pretrain` process, SIGKILLed once its first checkpoint is on disk."""
    extra = ["pretrain.epochs=8", "pretrain.local_crops=0"]
    _pretrain(tiny_folder, tmp_path / "full", *extra)
    run = tmp_path / "killed"
    sets = [a for o in tiny_overrides(tiny_folder, **PRETRAIN) + extra for a in ("--set", o)]
    cmd = [sys.executable, "-m", "edgedistill", "pretrain", "--out", str(run), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "teacher.safetensors").exists()
    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(tmp_path / "full" / "teacher.safetensors"))
    b = load_file(str(run / "teacher.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
