"""Run directories that stay one run's own: a run holds its directory while it runs (a second
run, or a resume, into it fails at once; a killed holder's lock goes with it), a user's folder
is never taken for one, crop sizes that do not fit the patch size fail before any work, files
and folders follow the umask, and the messages of a few bad inputs say what they mean. Real
subprocesses, real files, real signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli, tiny_overrides
from edgedistill.errors import EdgeDistillError
from test_reliability import names, one_line_error, wait_for
from test_reliability_inputs import cli, distill_interrupted, logged_steps, one_line


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


# ----------------------------------------------------------------------------- one run per directory


def test_a_running_run_holds_its_directory(tiny_folder, tmp_path):
    """While a distill runs, another distill or a resume into its --out fails at
    once naming the holder (before: both ran, every step logged twice, config from one and
    weights from the other); SIGKILL releases the lock with the process."""
    import torch

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, "-m", "edgedistill", "distill", "--out", str(out),
                               *sets(tiny_overrides(tiny_folder, **{"distill.epochs": 5000}))],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.nice(19))  # it only has to keep running
    try:
        wait_for(lambda: (out / "checkpoint.pt").exists() or holder.poll() is not None, "the first checkpoint")
        assert holder.poll() is None, holder.communicate()[1][-3000:]
        for args in (["distill", "--out", str(out), *sets(tiny_overrides(tiny_folder))],
                     ["distill", "--out", str(out), "--resume"]):
            error = one_line(*cli(*args)[::2])
            assert f"another process (pid {holder.pid}) is writing {out}" in error, error
            assert "--out" in error
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == -signal.SIGKILL, "the first run ended before it was killed"
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    code, _, stderr = cli("distill", "--out", str(out), "--resume", "--set", f"distill.max_steps={step + 1}")
    assert code == 0, stderr[-3000:]
    assert logged_steps(out) == list(range(1, step + 2))
    # the lock beside it is free again (filelock keeps its empty file, so every writer locks one inode)
    assert [n for n in names(tmp_path) if n != ".run.lock"] == ["run"]
    from edgedistill.utils import directory_lock

    with directory_lock(out):
        pass


def test_a_running_pipeline_holds_its_runs(tmp_path):
    """Two pipelines of one run name: the second fails at once, before any stage."""
    from edgedistill.utils import directory_lock

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "p"}}))
    with directory_lock(tmp_path / "runs" / "p"):  # what a running pipeline holds
        run = run_cli("pipeline", str(config), "--runs", str(tmp_path / "runs"), "--export-root",
                      str(tmp_path / "export"), cwd=tmp_path)
        assert f"is writing {tmp_path / 'runs' / 'p'}" in one_line_error(run)
    assert names(tmp_path / "runs") == [".p.lock"]  # the test's own lock; the pipeline made nothing


# ----------------------------------------------------------------------------- a user's folder


def test_a_users_folder_is_not_taken_for_a_run(tiny_folder, tmp_path, monkeypatch):
    """``distill --config proj/config.yaml --out proj`` replaced the user's config.yaml
    (comments gone); a folder must be new, empty or a run's own."""
    proj = tmp_path / "proj"
    proj.mkdir()
    sections: dict = {}
    for key, value in (o.split("=", 1) for o in tiny_overrides(tiny_folder)):
        sections.setdefault(key.split(".")[0], {})[key.split(".")[1]] = yaml.safe_load(value)
    mine = "# my experiment: keep these comments\n" + yaml.safe_dump(sections)
    (proj / "config.yaml").write_text(mine)
    error = one_line(*cli("distill", "--config", proj / "config.yaml", "--out", proj)[::2])
    assert f"{proj} is not a run directory" in error and "config.yaml" in error, error
    assert (proj / "config.yaml").read_text() == mine and names(proj) == ["config.yaml"]
    assert names(tmp_path) == ["proj"]

    (proj / "config.yaml").unlink()
    (proj / "notes.txt").write_text("mine")  # any file a run does not write
    error = one_line(*cli("distill", "--out", proj, *sets(tiny_overrides(tiny_folder)))[::2])
    assert "notes.txt" in error and names(proj) == ["notes.txt"]
    monkeypatch.chdir(proj)  # `--out .`: the lock goes beside the folder it names (before: ValueError)
    error = one_line(*cli("distill", "--out", ".", *sets(tiny_overrides(tiny_folder)))[::2])
    assert "notes.txt" in error and names(proj) == ["notes.txt"] and names(tmp_path) == ["proj"]


def test_a_run_killed_before_its_first_checkpoint_starts_over(tiny_folder, tmp_path, monkeypatch):
    """What the interrupted run says ("run the same command again to start over") works on the
    run's own folder, and the new run logs each step once."""
    from edgedistill.config import build_config
    from edgedistill.train.stages import distill

    cfg = build_config(None, tiny_overrides(tiny_folder))  # 2 epochs of 4 steps, a checkpoint after each
    run = tmp_path / "run"
    distill_interrupted(cfg, run, 2, monkeypatch)
    assert names(run) == ["config.yaml", "metrics.jsonl"]
    assert distill(cfg, run)["complete"]
    assert logged_steps(run) == list(range(1, 9))  # before: 1, 2, then 1..8
    with pytest.raises(EdgeDistillError, match="already holds a run"):
        distill(cfg, run)


# ----------------------------------------------------------------------------- crop sizes


def test_pretrain_on_digits_with_the_defaults_runs():
    """``pretrain --data digits --set pretrain.epochs=1`` failed with an AssertionError
    traceback (local crops of 14 px, patch 16): the automatic local crop size is now a
    multiple of the patch size."""
    from edgedistill.config import auto_local_crop_size

    assert [auto_local_crop_size(224, p) for p in (16, 14, 8)] == [96, 98, 96]  # DINO, DINOv2
    assert [auto_local_crop_size(32, p) for p in (16, 8, 4)] == [16, 16, 12]  # before: 14 for all three
    assert auto_local_crop_size(16, 4) == 8 and auto_local_crop_size(16, 2) == 8  # as before


def test_pretrain_crops_that_do_not_fit_the_patch_size_fail_first(tmp_path):
    out = tmp_path / "teacher"
    error = one_line(*cli("pretrain", "--data", "digits", "--out", out, "--set", "pretrain.local_crop_size=14")[::2])
    assert "pretrain.local_crop_size 14" in error and "patch size 16" in error and "pretrain.patch_size" in error
    error = one_line(*cli("pretrain", "--data", "digits", "--out", out, "--set", "data.img_size=40")[::2])
    assert "data.img_size 40" in error and "patch size 16" in error
    assert not out.exists()

    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "p"}, "pretrain": {"local_crop_size": 14}}))
    error = one_line(*cli("pipeline", config, "--runs", tmp_path / "runs", "--export-root", tmp_path / "export")[::2])
    assert "pretrain.local_crop_size 14" in error
    assert names(tmp_path) == ["p.yaml"]


def test_pretrain_on_digits_runs_a_step(tmp_path):
    out = tmp_path / "teacher"
    code, _, stderr = cli("pretrain", "--data", "digits", "--out", out, "--set", "pretrain.epochs=1",
                          "--set", "pretrain.max_steps=1", "--set", "pretrain.depth=1", "--set", "run.threads=1",
                          "--set", "data.num_workers=0")
    assert code == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert (out / "checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- permissions


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_runs_and_bundles_follow_the_umask(tiny_folder, labeled, tmp_path, umask):
    """Before, under umask 022: bundle folders drwx------ and the safetensors files -rw-------
    (mkdtemp's and safetensors' own modes), unreadable by a web server or another user."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "edgedistill", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, preexec_fn=lambda: os.umask(umask), timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "runs" / "student"
    cli("distill", "--out", str(run), *sets(tiny_overrides(tiny_folder, **{"distill.epochs": 1})))
    cli("export", "--model", str(run), "--out", str(tmp_path / "export"), "--data", str(labeled), "--formats",
        "onnx", "--no-int8", "--threads", "1", "--name", "v")
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    for root in (tmp_path / "runs", tmp_path / "export"):
        found = modes(root)
        wrong = {name: oct(mode) for name, mode in found.items()
                 if mode != (folders if (root / name).is_dir() else files)}
        assert not wrong, wrong
    assert {"student.safetensors", "projector.safetensors", "checkpoint.pt"} <= set(modes(run))
    assert "v" in modes(tmp_path / "export")


# ----------------------------------------------------------------------------- messages


def test_calib_not_found_names_the_option(student_run, labeled, tmp_path):
    error = one_line(*cli("export", "--model", student_run, "--out", tmp_path / "export", "--data", labeled,
                          "--calib", tmp_path / "nonexistent", "--formats", "onnx", "--threads", "1")[::2])
    assert f"--calib folder not found: {tmp_path / 'nonexistent'}" in error and "data.path" not in error


def test_a_parity_failure_shows_the_digits_that_differ():
    from edgedistill.export.gates import parity_failures

    (line,) = parity_failures({"onnx_fp32": {"gated": True, "min_cosine": 0.99999996, "max_abs": 1e-6}}, 0.99999997)
    assert "cosine 0.99999996 < 0.99999997" in line, line  # before: "cosine 1.0000000 < 1"
    (line,) = parity_failures({"onnx_fp32": {"gated": True, "min_cosine": 0.9, "max_abs": 0.1}}, 0.9999)
    assert "cosine 0.9 < 0.9999" in line, line


def test_a_teacher_folder_without_a_backbone_says_what_a_teacher_may_be(tmp_path):
    (tmp_path / "empty").mkdir()
    error = one_line(*cli("distill", "--teacher", tmp_path / "empty", "--out", tmp_path / "run",
                          "--set", "distill.max_steps=1", "--set", "data.num_workers=0")[::2])
    assert "teacher.json" in error and "student.json" in error, error
    assert "checkpoint file" in error and "hub name" in error, error


def test_a_bare_tensor_checkpoint_says_what_it_holds(tmp_path):
    import torch

    torch.save(torch.zeros(3, 5), tmp_path / "t.pth")
    error = one_line(*cli("distill", "--teacher", tmp_path / "t.pth", "--out", tmp_path / "run",
                          "--set", "distill.max_steps=1", "--set", "data.num_workers=0")[::2])
    assert "first keys: )" not in error and "one tensor of shape (3, 5)" in error, error


def test_eval_json_into_a_new_folder_is_written(labeled, tmp_path):
    """export and bench create the folder of --json; eval refused it."""
    target = tmp_path / "new" / "sub" / "knn.json"
    code, _, stderr = cli("eval", "knn", "--model", "random", "--arch", "vit_tiny_patch16_224", "--img-size", "16",
                          "--patch-size", "4", "--depth", "1", "--data", labeled, "--threads", "1", "--no-progress",
                          "--json", target)
    assert code == 0, stderr[-3000:]
    assert "top1" in json.loads(target.read_text())


def test_one_deleted_variant_file_leaves_the_other_variants_usable(tiny_bundle, tmp_path):
    """Before: every reader of the bundle (bench, eval, the apps) refused it whole."""
    import shutil

    from edgedistill.runtime.embedders import open_embedder

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], bundle)
    (bundle / "openvino_int8.bin").unlink()
    assert open_embedder(bundle, "onnx_fp32", threads=1).embed is not None
    with pytest.raises(EdgeDistillError, match="variant 'openvino_int8' needs openvino_int8.bin, which is missing"):
        open_embedder(bundle, "openvino_int8", threads=1, verify=False)
    out = tmp_path / "bench.json"
    code, _, stderr = cli("bench", "--bundle", bundle, "--backends", "openvino", "--precision", "fp32,int8",
                          "--threads", "1", "--batch", "1", "--runs", "2", "--rounds", "1", "--no-progress",
                          "--json", out)
    assert code == 0, stderr[-3000:]
    report = json.loads(out.read_text())
    measured = {r["variant"] for r in report["rows"]}
    assert "openvino_fp32" in measured and "openvino_int8" not in measured, measured
    assert any(s["variant"] == "openvino_int8" and s["reason"] == "openvino_int8.bin is missing from the bundle"
               for s in report["skipped"]), report["skipped"]
