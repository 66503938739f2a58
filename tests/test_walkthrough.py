"""The first hour, as a new user lives it: the CLI in subprocesses, distill -> eval -> export ->
bench -> a deploy example on the digits, each command's results on stdout, its progress on
stderr, and a ``Next:`` line naming the command to run next. Lean settings (2-block ViTs, one
epoch, the ONNX variants, a few timed runs): the chain, not the figures, is under test."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, run_cli

COLUMNS = 100
BOX = set("│┃")  # a rich table's column rules (a progress bar draws ━ only)
VARIANT = "onnx_int8"  # the variant whose k-NN difference is followed through every output


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if BOX & set(line)]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cli(*args: Any, cwd: Path) -> Any:
    run = run_cli(*map(str, args), env={"COLUMNS": str(COLUMNS)}, cwd=cwd)
    assert run.returncode == 0, f"edgedistill {args[0]}: {run.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict[str, Any]:
    """Every step once, as a user types it (COLUMNS=100, stdout and stderr pipes)."""
    root = tmp_path_factory.mktemp("walk")
    run_dir, bundle = root / "runs" / "first", root / "export" / "first"
    started = time.perf_counter()
    steps = {
        "data": cli("data", "digits", "--out", root / "digits", cwd=root),
        # no config: the defaults (random ViT-S teacher, ViT-T student, warmup 5 epochs) made small
        "distill": cli("distill", "--data", "digits", "--out", run_dir, "--set", "distill.epochs=1",
                       "--set", "student.depth=2", "--set", "teacher.depth=2", "--set", "data.num_workers=0",
                       "--set", "distill.log_every=1", cwd=root),
        "eval": cli("eval", "knn", "--model", run_dir, "--data", "digits", "--workers", "0", "--no-progress",
                    cwd=root),
        "export": cli("export", "--model", run_dir, "--data", "digits", "--formats", "onnx", "--int8",
                      "--out", root / "export", "--max-drop", "100", "--recovery-attempts", "0", "--threads", "1",
                      "--calib-size", "16", "--json", root / "export.json", cwd=root),
        "bench": cli("bench", "--bundle", bundle, "--backends", "onnxruntime", "--threads", "1", "--batch", "1",
                     "--runs", "3", "--rounds", "1", "--warmup", "0", "--json", root / "bench.json",
                     "--csv", root / "bench.csv", cwd=root),
    }
    deploy = root / "digits"
    classify = subprocess.run([sys.executable, str(REPO / "deploy_examples" / "python_onnxruntime" / "classify.py"),
                               "--bundle", str(bundle), "--gallery", str(deploy / "train"),
                               "--images", str(deploy / "val" / "3")], capture_output=True, text=True, cwd=root,
                              timeout=300)
    seconds = time.perf_counter() - started
    print(f"walkthrough: {seconds:.0f} s")
    for name, run in steps.items():  # what each command printed, for whoever reads a failure
        (root / f"{name}.stdout").write_text(run.stdout)
        (root / f"{name}.stderr").write_text(run.stderr)
    return {"root": root, "run": run_dir, "bundle": bundle, "steps": steps, "classify": classify}


def test_each_command_prints_results_on_stdout_progress_on_stderr_and_a_next_step(walk):
    for name, run in walk["steps"].items():
        assert last_line(run.stdout).startswith("Next: "), f"{name}: {run.stdout[-1500:]}"
        if name == "data":
            continue  # nothing to wait for: no progress
        assert table_lines(run.stdout), f"{name} printed no result table on stdout: {run.stdout[-1500:]}"
        assert not table_lines(run.stderr), f"{name} printed a table on stderr: {run.stderr[-1500:]}"
        assert run.stderr.strip(), f"{name} said nothing on stderr while working"
        wide = [line for line in table_lines(run.stdout) if len(line) > COLUMNS]
        assert not wide, f"{name}: table lines wider than {COLUMNS} columns: {wide[:3]}"
    next_of = {name: last_line(run.stdout) for name, run in walk["steps"].items()}
    assert "classify.py" in next_of["data"] and "edgedistill eval knn" in next_of["distill"]
    assert "edgedistill export" in next_of["eval"] and "edgedistill bench" in next_of["export"]
    assert "deploy_examples/python_onnxruntime/classify.py" in next_of["bench"]


def test_distill_without_a_config_fits_the_data_and_leaves_warmup(walk):
    """32-px digits and no config: the student's patch follows the image size (8: a 4x4 grid,
    not ViT-T/16's 2x2, printed), warmup_epochs 5 against a 1-epoch run is clamped with a
    warning, and the learning rate peaks and decays within the run."""
    run = walk["steps"]["distill"]
    assert "patch 8 at 32 px, a 4x4 grid (student.patch_size unset" in run.stderr, run.stderr[-2000:]
    assert "warmup clamped to" in run.stderr
    student = json.loads((walk["run"] / "student.json").read_text())
    assert student["kwargs"]["patch_size"] == 8
    lrs = [json.loads(line)["lr"] for line in (walk["run"] / "metrics.jsonl").read_text().splitlines()
           if '"lr"' in line]
    peak = lrs.index(max(lrs))
    assert 0 < peak < len(lrs) - 1 and lrs[-1] < max(lrs) / 2, lrs
    # the student's k-NN and its random-init baseline, with the validation split at hand
    assert "k-NN top-1 (val)" in run.stdout and "k-NN, its random init" in run.stdout


def test_the_quickstart_data_on_disk_is_the_deploy_examples_gallery(walk):
    """``edgedistill data digits`` writes the very images (and split) ``data.path=digits``
    trains on, once; the deploy example classifies with them as its gallery."""
    from PIL import Image

    from edgedistill.data.digits import DigitsDataset

    digits = walk["root"] / "digits"
    assert sorted(p.name for p in (digits / "train").iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in digits.glob("train/*/*.png")) == 1438 and sum(1 for _ in digits.glob("val/*/*.png")) == 359
    val = DigitsDataset("val", img_size=32)
    image, label = val.load(0)
    written = Image.open(digits / "val" / str(label) / f"{int(val.indices[0]):04d}.png")
    assert written.mode == "RGB" and list(written.getdata()) == list(image.getdata())
    again = run_cli("data", "digits", "--out", str(digits))
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: {digits} already exists: choose a new --out (nothing was written)"]
    classify = walk["classify"]
    assert classify.returncode == 0, classify.stderr[-2000:]
    lines = classify.stdout.strip().splitlines()
    assert len(lines) == sum(1 for _ in (digits / "val" / "3").iterdir())
    assert all(line.split("\t")[1] in [str(d) for d in range(10)] for line in lines)


def _knn_delta_in(obj: Any, variant: str) -> float | None:
    """The ``knn_delta`` recorded for ``variant`` anywhere in a JSON document."""
    if isinstance(obj, dict):
        if obj.get("variant") == variant and obj.get("knn_delta") is not None:
            return float(obj["knn_delta"])
        entry = obj.get(variant)
        if isinstance(entry, dict) and entry.get("knn_delta") is not None:
            return float(entry["knn_delta"])
        values = obj.values()
    elif isinstance(obj, list):
        values = obj
    else:
        return None
    for value in values:
        found = _knn_delta_in(value, variant)
        if found is not None:
            return found
    return None


def test_one_recommendation_and_one_knn_delta_everywhere(walk):
    """``export`` and ``bench`` print a ``Recommended`` line per target among their results; the
    k-NN difference (variant minus reference, in points) of one variant is the same, sign
    included, in the export JSON, the bench JSON and the bench CSV."""
    root = walk["root"]
    for name in ("export", "bench"):
        assert any(line.startswith("Recommended") for line in walk["steps"][name].stdout.splitlines()), name
    exported = _knn_delta_in(json.loads((root / "export.json").read_text()), VARIANT)
    benched = _knn_delta_in(json.loads((root / "bench.json").read_text()), VARIANT)
    with open(root / "bench.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["variant"] == VARIANT and row.get("knn_delta")]
    assert exported is not None and benched is not None and rows
    assert abs(exported - benched) < 0.01 and abs(float(rows[0]["knn_delta"]) - exported) < 0.01
