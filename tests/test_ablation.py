"""`benchmarks/ablation.py --quick` end to end on the embedded digits: a real DINO teacher, the
default variants trained against a CPU-second budget, k-NN on the same split with a curve per
cell, the references (teacher, raw pixels, random init), the table and the plot; bad budgets
and interrupts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "ablation.py"
VARIANTS = ("attndistill", "funmatch", "cls_only", "dino_scratch")  # the default set


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1200)  # a hang guard: about a minute on an idle 2-core machine


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ablation") / "quick"
    done = _run("--quick", "--seeds", "0", "--out", str(out), cwd=out.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_variant_finished_with_a_knn_figure(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    assert sorted(c["variant"] for c in results["cells"]) == sorted(VARIANTS)
    for cell in results["cells"]:
        assert 0 <= cell["top1"] <= 100, cell
        assert 1 <= cell["steps"] <= cell["total_steps"], cell
        run = quick_run / "cells" / cell["variant"] / "seed0"
        assert (run / "summary.json").is_file() and (run / "knn.json").is_file()
        # the curve: k-NN within the cell (at least one point besides the final one), in training time order
        times = [t for t, _ in cell["curve"]]
        assert len(cell["curve"]) >= 2 and times == sorted(times) and cell["curve"][-1][1] == cell["top1"], cell
    refs = results["references"]
    assert 0 <= refs["teacher"] <= 100 and 0 <= refs["random_student_seed0"] <= 100
    assert refs["pixels"] > 90  # k-NN on the digits' pixels is easy: the floor the table shows
    assert results["clock"] == "cpu" and results["clock_budget_s"] > 0


def test_the_table_has_a_number_per_variant_and_the_plot_is_a_png(quick_run):
    table = (quick_run / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| variant", "| ---"))]
    assert len(rows) == len(VARIANTS) + 3  # the variants, the teacher, the random-init student, the pixels
    for row in rows:
        figure = float(re.split(r"\s*\|\s*", row)[2].split(" ± ")[0])
        assert 0 <= figure <= 100, row
    assert "CLS only" in table and "DINO from scratch" in table and "one seed: no spread" in table
    assert "raw pixels (reference)" in table and "standardized CLS target" in table and "mixup" in table
    assert (quick_run / "knn_vs_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Against the random-init student:" in table and "student `vit_tiny_patch16_224` patch 8, 2 blocks" in table


def test_report_only_rewrites_the_table_without_training(quick_run):
    (quick_run / "table.md").unlink()
    original = (quick_run / "results.json").read_text()
    (quick_run / "results.json").write_text(json.dumps({**json.loads(original), "device": "the machine that trained"}))
    cells = {p: p.stat().st_mtime_ns for p in (quick_run / "cells").glob("*/seed0/knn.json")}
    done = _run("--quick", "--seeds", "0", "--report-only", "--out", str(quick_run), cwd=quick_run.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    table = (quick_run / "table.md").read_text()
    assert "== " not in done.stdout and "DINO from scratch" in table and "on the machine that trained" in table
    assert cells == {p: p.stat().st_mtime_ns for p in (quick_run / "cells").glob("*/seed0/knn.json")}
    (quick_run / "results.json").write_text(original)  # as the other tests of this run expect it


def test_the_random_init_floor_names_the_variants_that_do_not_clear_it(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from ablation_report import _against_random, summarize

    def cells(variant, label, values):
        return [{"variant": variant, "label": label, "seed": i, "top1": v, "steps": 1, "total_steps": 1,
                 "budget_reached": False, "img_s": 1.0, "train_seconds": 1.0} for i, v in enumerate(values)]

    rows = summarize(cells("a", "learns", [31.0, 32.0, 33.0]) + cells("b", "stalls", [28.0, 29.5, 31.0]))
    text = "\n".join(_against_random(rows, [28.0, 28.5, 29.0]))
    assert "- learns: +3.50 points, seed std 1.00 / 0.50: beyond the seed spread" in text
    assert "- stalls: +1.00 points, seed std 1.50 / 0.50: within the seed spread" in text
    assert "Not clear of the random-init student (beyond the seed spread): stalls." in text
    rows = summarize(cells("a", "learns", [31.0, 32.0, 33.0]))
    assert "Every trained variant clears the random-init student, beyond the seed spread." in "\n".join(
        _against_random(rows, [28.0, 28.5, 29.0]))


def test_a_rerun_skips_finished_cells_and_other_settings_are_refused(quick_run):
    before = (quick_run / "results.json").read_text()
    again = _run("--quick", "--seeds", "0", "--variants", "cls_only", "--out", str(quick_run), cwd=quick_run.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "== cls_only seed 0" in again.stdout and "== attndistill" not in again.stdout
    assert json.loads(before) == json.loads((quick_run / "results.json").read_text())  # read back, not retrained
    other = _run("--quick", "--seeds", "0", "--budget-minutes", "1", "--out", str(quick_run), cwd=quick_run.parent)
    assert other.returncode == 2 and "other settings (budget_minutes)" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "ablation"
    missing = _run("--teacher", "random", "--data", str(tmp_path / "nope"), "--out", str(out), cwd=tmp_path)
    assert missing.returncode == 2 and "data folder not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not out.exists()
    unknown = _run("--quick", "--variants", "attndistill,nope", "--out", str(out), cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown variant nope" in unknown.stderr and not out.exists()


@pytest.mark.parametrize("budget", ["nan", "inf", "0", "-1"])
def test_an_impossible_budget_is_refused_before_any_work(tmp_path, budget):
    out = tmp_path / "ablation"
    done = _run("--quick", "--budget-minutes", budget, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 2 and "--budget-minutes must be a positive number" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_is_one_line_and_the_rerun_resumes(tmp_path, signum, code):
    out = tmp_path / "ablation"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--seeds", "0", "--variants", "cls_only",
                             "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while not (out / "ablation.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the settings are written: the teacher is being pretrained
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: ")
    assert "rerun the same command to resume" in stderr
