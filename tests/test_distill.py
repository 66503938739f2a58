"""`edgedistill distill` end to end on tiny real image files: outputs, determinism, resume,
non-finite stops, DDP (torchrun, gloo) against a single process, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgedistill.config import build_config
from edgedistill.errors import EdgeDistillError
from edgedistill.train.stages import distill

from conftest import REPO, run_cli, tiny_overrides


def _distill(folder: Path, out: Path, *extra: str, resume: bool = False) -> dict:
    cfg = build_config(None, tiny_overrides(folder) + list(extra))
    return distill(cfg, out, resume=resume)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "student.safetensors"))


def test_distill_writes_a_complete_run(tiny_folder, tmp_path):
    summary = _distill(tiny_folder, tmp_path / "run")
    run = tmp_path / "run"
    assert summary["complete"] and summary["steps"] == 2 * (32 // 8)
    for name in ("student.safetensors", "student.json", "projector.safetensors", "config.yaml", "metrics.jsonl", "checkpoint.pt"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "student.json").read_text())
    assert meta["arch"] == "vit_tiny_patch16_224"
    assert meta["kwargs"]["patch_size"] == 4 and meta["kwargs"]["img_size"] == 16
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "cls", "attn", "lr", "img_s"} <= set(records[0])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    # Nothing of the capture leaks into the saved student: plain timm keys only.
    assert not any("projector" in k for k in _weights(run))


def test_same_seed_same_weights(tiny_folder, tmp_path):
    _distill(tiny_folder, tmp_path / "a")
    _distill(tiny_folder, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    _distill(tiny_folder, tmp_path / "c", "run.seed=1")
    c = _weights(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_killed_and_resumed_run_matches_uninterrupted(tiny_folder, tmp_path):
    _distill(tiny_folder, tmp_path / "full", "distill.epochs=3")
    # max_steps stops like a kill after step 5 (mid-epoch: 4 steps per epoch), checkpoint kept.
    partial = _distill(tiny_folder, tmp_path / "resumed", "distill.epochs=3", "distill.max_steps=5")
    assert not partial["complete"] and partial["steps"] == 5
    assert not (tmp_path / "resumed" / "student.safetensors").exists()
    done = _distill(tiny_folder, tmp_path / "resumed", "distill.epochs=3", resume=True)
    assert done["complete"] and done["steps"] == 12
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path):
    run = tmp_path / "run"
    _distill(tiny_folder, run, "distill.max_steps=2")
    before = torch.load(run / "checkpoint.pt", weights_only=True)
    with pytest.raises(EdgeDistillError, match=r"non-finite loss at step \d+.*last good checkpoint"):
        _distill(tiny_folder, run, "distill.blr=1e30", "distill.warmup_epochs=0", resume=True)
    after = torch.load(run / "checkpoint.pt", weights_only=True)
    assert after["step"] == before["step"] == 2
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


def test_accumulation_must_be_reachable(tiny_folder, tmp_path):
    with pytest.raises(EdgeDistillError, match="not a multiple of batch_size"):
        _distill(tiny_folder, tmp_path / "run", "distill.effective_batch=12")


def test_accumulation_matches_a_bigger_batch(tiny_folder, tmp_path):
    _distill(tiny_folder, tmp_path / "big", "data.batch_size=16", "distill.epochs=1")
    _distill(tiny_folder, tmp_path / "acc", "data.batch_size=8", "distill.effective_batch=16", "distill.epochs=1")
    big, acc = _weights(tmp_path / "big"), _weights(tmp_path / "acc")
    worst = max((big[k] - acc[k]).abs().max().item() for k in big)
    assert worst < 1e-4, worst


def test_cli_errors_are_one_line(tiny_folder, tmp_path):
    missing = run_cli("distill", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"),
                      "--set", "data.num_workers=0")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "error:" in missing.stderr and "nope" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = run_cli("distill", "--set", "distill.epohcs=1")
    assert unknown.returncode == 2 and "did you mean 'distill.epochs'" in unknown.stderr
    no_resume = run_cli("distill", "--out", str(tmp_path / "empty"), "--resume")
    assert no_resume.returncode == 2 and "nothing to resume" in no_resume.stderr


def test_cli_refuses_to_overwrite_a_run(tiny_folder, tmp_path):
    args = ["distill", "--out", str(tmp_path / "run"), *sum((["--set", o] for o in tiny_overrides(tiny_folder, **{"distill.epochs": 1})), [])]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    second = run_cli(*args)
    assert second.returncode == 2 and "already holds a run" in second.stderr


def test_torchrun_two_processes_match_one_process_with_double_batch(tiny_folder, tmp_path):
    """gloo DDP with per-rank batch 4 against one process with batch 8: same images per step
    (interleaved sharding, per-item augmentation seeds), gradients averaged across ranks."""
    single = tmp_path / "single"
    _distill(tiny_folder, single, "data.batch_size=8", "distill.epochs=1")
    ddp = tmp_path / "ddp"
    sets = sum((["--set", o] for o in tiny_overrides(tiny_folder, **{"data.batch_size": 4, "distill.epochs": 1})), [])
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgedistill",
         "distill", "--out", str(ddp), *sets],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((ddp / "summary.json").read_text())["process_group"] == "gloo"
    assert json.loads((single / "summary.json").read_text())["process_group"] is None
    a, b = _weights(single), _weights(ddp)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst


def test_saved_student_loads_with_plain_timm(tiny_folder, tmp_path):
    _distill(tiny_folder, tmp_path / "run", "distill.epochs=1")
    code = f"""
import json, sys, timm, torch
meta = json.load(open({str(tmp_path / 'run' / 'student.json')!r}))
model = timm.create_model(meta["arch"], pretrained=True, num_classes=0,
    pretrained_cfg_overlay=dict(file={str(tmp_path / 'run' / 'student.safetensors')!r}), **meta["kwargs"])
assert "edgedistill" not in sys.modules
torch.manual_seed(0)
print(model(torch.randn(2, 3, 16, 16)).sum().item())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from edgedistill.models.backbone_io import load_backbone

    model, _ = load_backbone(tmp_path / "run")
    torch.manual_seed(0)
    expected = model.eval()(torch.randn(2, 3, 16, 16)).sum().item()
    assert abs(float(result.stdout.strip()) - expected) < 1e-4


def test_total_steps_is_the_schedules_length(tiny_folder, tmp_path):
    from edgedistill.train.schedule import warmup_cosine

    # 4 steps per epoch, 1 epoch of warmup; a schedule of 6 steps ends in the middle of epoch 2
    summary = _distill(tiny_folder, tmp_path / "run", "distill.total_steps=6", "distill.epochs=1")
    assert summary["complete"] and summary["steps"] == summary["total_steps"] == 6
    assert (tmp_path / "run" / "student.safetensors").is_file()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    base = 1e-3 * 8 / 256
    # the cosine spans 6 steps, not epochs x 4: step index 5 sits half-way down it
    assert [r["lr"] for r in records] == pytest.approx([warmup_cosine(i, 6, 4, base) for i in range(6)])
    assert records[-1]["step"] == 6 and records[-1]["lr"] == pytest.approx(base / 2)


def test_max_seconds_ends_the_run_and_a_resume_keeps_the_budget(tiny_folder, tmp_path):
    run = tmp_path / "run"
    summary = _distill(tiny_folder, run, "distill.max_seconds=0.001")
    # the budget is checked after each optimizer step: one step, then the run ends with its outputs
    assert summary["budget_reached"] and summary["complete"] and summary["steps"] == 1
    assert summary["train_seconds"] >= 0.001 and (run / "student.safetensors").is_file()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 1 and saved["seconds"] == pytest.approx(summary["train_seconds"], rel=0.5)
    again = _distill(tiny_folder, run, "distill.max_seconds=0.001", resume=True)
    assert again["budget_reached"] and again["steps"] == 1  # the budget was spent before the resume
    longer = _distill(tiny_folder, run, "distill.max_seconds=1e6", resume=True)
    assert longer["steps"] == 8 and not longer["budget_reached"]
