"""Nothing silently wrong: oversized images skipped and counted, numbers checked at every
boundary (config, command line, manifest) against what this machine can hold, bundles checked
against their sha256 by default, links out of a bundle refused, resume details, and plot labels
that do not pile up. Real bundles, real files, real processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import REPO, make_image_folder, run_cli, tiny_overrides
from edgedistill.cli import main
from edgedistill.errors import EdgeDistillError


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_line(code: int, stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr[-3000:])
    return lines[0]


def copy_bundle(tiny_bundle: dict, dest: Path) -> Path:
    shutil.copytree(tiny_bundle["bundle"], dest, symlinks=True)
    return dest


def edit_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))  # NaN and Infinity as JSON writes them


# ----------------------------------------------------------------------------- images


def strip_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit image a few hundred bytes long that decodes to millions of pixels."""
    Image.new("1", (width, height)).save(path, optimize=True)
    return path


def test_a_long_thin_image_is_skipped_and_counted(tiny_bundle, tmp_path):
    from edgedistill.data.folders import ImageFolderDataset, verify_image
    from edgedistill.runtime.preprocessing import load_rgb

    data = tmp_path / "data"
    make_image_folder(data / "train", classes=3, per_class=6, size=20, seed=0)
    make_image_folder(data / "val", classes=3, per_class=2, size=20, seed=1)
    strip = strip_png(data / "train" / "class_0" / "strip.png", 2_000_000, 1)
    tall = strip_png(data / "val" / "class_1" / "tall.png", 1, 300_000)
    assert strip.stat().st_size < 1000  # passes Pillow's pixel-count bomb check as it is

    assert "aspect ratio above 50:1" in verify_image(str(strip))
    with pytest.raises(EdgeDistillError, match=r"too large to decode: 2000000x1 pixels") as info:
        load_rgb(strip)
    assert "\n" not in str(info.value)
    train = ImageFolderDataset(data / "train", require_labels=True)
    assert train.bad_images == [str(strip)] and len(train) == 18

    run = run_cli("eval", "knn", "--model", tiny_bundle["bundle"], "--data", str(data), "--k", "5",
                  "--workers", "0", "--no-progress", "--json", str(tmp_path / "knn.json"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 unreadable or oversized image(s) skipped" in run.stderr
    result = json.loads((tmp_path / "knn.json").read_text())
    assert result["data"]["skipped_images"] == {"train": 1, "val": 1}
    assert result["data"]["num_train"] == 18 and result["data"]["num_val"] == 6
    assert tall.exists()


# ----------------------------------------------------------------------------- numbers


def test_manifest_numbers_are_checked(tiny_bundle, tmp_path):
    from edgedistill.runtime import read_manifest

    cases = {
        "nan_mean": (lambda m: m["preprocessing"].update(mean=[float("nan"), 0.5, 0.5]), "mean must be finite"),
        "inf_std": (lambda m: m["preprocessing"].update(std=[float("inf"), 0.2, 0.2]), "std must be finite"),
        "huge_input": (lambda m: (m["input"].update(shape=[-1, 3, 20000, 20000]),
                                  m["preprocessing"].update(crop=20000, resize=22857)), "outside 1..4096"),
        "zero_batch": (lambda m: m["input"].update(shape=[0, 3, 16, 16]), "outside 1..4096"),
    }
    for name, (edit, message) in cases.items():
        bundle = copy_bundle(tiny_bundle, tmp_path / name)
        edit_manifest(bundle, edit)
        with pytest.raises(EdgeDistillError, match=message):
            read_manifest(bundle)
    # before: eval exited 0 with finite but wrong figures (59.05 instead of 68.52 on digits)
    code, _, stderr = cli("eval", "knn", "--model", tmp_path / "nan_mean", "--data", tiny_bundle["data"],
                          "--workers", "0", "--no-progress")
    assert "mean must be finite" in one_line(code, stderr)


def test_command_line_numbers_are_checked_before_work(tiny_bundle, student_run, labeled, tmp_path):
    from edgedistill.limits import max_threads

    bundle, data = tiny_bundle["bundle"], str(labeled)
    eval_knn = ["eval", "knn", "--data", data, "--workers", "0", "--no-progress"]
    export = ["export", "--model", student_run, "--out", tmp_path / "export", "--data", data, "--no-int8"]
    too_many = str(max_threads() + 1)
    cases = [
        (["distill", "--set", "data.img_size=100000"], "data.img_size must be at least 8 and at most 4096"),
        (["distill", "--set", "run.threads=-1"], "run.threads must be >= 0"),
        (["distill", "--set", "distill.blr=inf"], "must be a finite number"),
        (["distill", "--set", "data.mean=nan,0.5,0.5"], "must be a finite number"),
        (["bench", "--bundle", bundle, "--threads", "10000"], "--threads 10000 is more than this machine can use"),
        (["bench", "--bundle", bundle, "--threads", too_many], f"at most {max_threads()}"),
        (["bench", "--bundle", bundle, "--batch", "1,100000000", "--backends", "onnxruntime"],
         r"--batch 100000000 needs about .* at most \d+ fits"),
        (["bench", "--bundle", bundle, "--seconds", "inf"], "--seconds must be a number > 0"),
        ([*export, "--min-cosine", "2"], r"--min-cosine must be in \(0, 1\]"),
        ([*export, "--max-drop", "nan"], "--max-drop must be a number >= 0"),
        ([*export, "--threads", "10000"], "--threads 10000 is more than this machine can use"),
        ([*export, "--img-size", "100000"], "--img-size must be between 1 and 4096"),
        ([*eval_knn, "--model", student_run, "--device", "banana"], "--device must be auto, cpu, cuda or cuda:N"),
        ([*eval_knn, "--model", student_run, "--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
        ([*eval_knn, "--model", bundle, "--device", "cuda"], "evaluated on the CPU"),
        ([*eval_knn, "--model", bundle, "--threads", "10000"], "more than this machine can use"),
        ([*eval_knn, "--model", bundle, "--batch-size", "100000000"], r"--batch-size 100000000 needs about"),
        ([*eval_knn, "--model", bundle, "--temperature", "nan"], "--temperature must be a number > 0"),
    ]
    for args, message in cases:
        code, _, stderr = cli(*args)
        assert re.search(message, one_line(code, stderr)), (args, stderr)
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())


def test_configured_threads_are_bounded_where_they_are_used(tiny_folder, tmp_path):
    """A config stays valid on any machine; a thread count this one cannot run fails at start."""
    from edgedistill.config import build_config
    from edgedistill.train.stages import distill
    from edgedistill.limits import max_threads

    cfg = build_config(None, tiny_overrides(tiny_folder, **{"run.threads": max_threads() + 1}))
    with pytest.raises(EdgeDistillError, match="run.threads .* is more than this machine can use"):
        distill(cfg, tmp_path / "run")


# ----------------------------------------------------------------------------- integrity


def flip_byte(path: Path, offset: int | None = None, length: int = 1) -> None:
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    for i in range(offset, offset + length):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_caught_before_loading(tiny_bundle, tmp_path):
    from edgedistill.runtime import open_embedder

    bundle = copy_bundle(tiny_bundle, tmp_path / "flipped")
    flip_byte(bundle / "onnx_fp32.onnx")  # a weight: the model still loads and runs
    with pytest.raises(EdgeDistillError, match="onnx_fp32.onnx of variant 'onnx_fp32' does not match its sha256"):
        open_embedder(bundle, "onnx_fp32", threads=1)
    model = open_embedder(bundle, "onnx_fp32", threads=1, verify=False)  # an app that verified at install
    assert model.embed(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 192)
    open_embedder(bundle, "openvino_fp32", threads=1)  # the intact variants still open

    code, _, stderr = cli("eval", "knn", "--model", bundle, "--variant", "onnx_fp32", "--data",
                          tiny_bundle["data"], "--workers", "0", "--no-progress")
    assert "does not match its sha256" in one_line(code, stderr)
    code, _, stderr = cli("eval", "knn", "--model", bundle / "onnx_fp32.onnx", "--data", tiny_bundle["data"],
                          "--workers", "0", "--no-progress")
    assert "does not match its sha256" in one_line(code, stderr)
    code, _, stderr = cli("bench", "--bundle", bundle, "--backends", "onnxruntime", "--threads", "1",
                          "--batch", "1", "--runs", "1", "--no-progress")
    assert "does not match its sha256" in one_line(code, stderr)


def test_non_finite_features_do_not_blame_training_alone():
    """Before: a model with 4 KiB overwritten gave NaN, reported as "a diverged model?"."""
    from edgedistill.eval.knn import knn_classify

    bank = np.full((4, 8), np.nan, np.float32)
    with pytest.raises(EdgeDistillError, match="damaged model file.*sha256.*or a training run that diverged"):
        knn_classify(bank, np.zeros(4, np.int64), np.ones((2, 8), np.float32), num_classes=2, ks=[1])


def test_a_variant_linked_out_of_the_bundle_is_refused(tiny_bundle, tmp_path):
    from edgedistill.runtime import open_embedder, read_manifest

    bundle = copy_bundle(tiny_bundle, tmp_path / "linked")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "onnx_fp32.onnx", outside)
    (bundle / "onnx_fp32.onnx").symlink_to(outside)  # same bytes, so the sha256 matches
    for call in (lambda: read_manifest(bundle), lambda: open_embedder(bundle, "onnx_int8", verify=False)):
        with pytest.raises(EdgeDistillError, match=r"onnx_fp32.onnx of variant 'onnx_fp32' is a link to .*outside"):
            call()
    inside = copy_bundle(tiny_bundle, tmp_path / "linked_inside")
    shutil.move(inside / "onnx_fp32.onnx", inside / "model.bin.onnx")
    (inside / "onnx_fp32.onnx").symlink_to("model.bin.onnx")  # a link within the bundle is fine
    read_manifest(inside, verify=True)


# ----------------------------------------------------------------------------- resume


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def distill_interrupted(cfg, run: Path, step: int, monkeypatch) -> None:
    """A distill into ``run`` stopped by Ctrl-C right after logging ``step``."""
    import edgedistill.train.loop as loop
    from edgedistill.train.stages import distill

    append = loop.append_jsonl

    def killed_after_step(path, record):
        append(path, record)
        if record["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "append_jsonl", killed_after_step)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, run)
    monkeypatch.setattr(loop, "append_jsonl", append)


def test_resume_logs_each_step_once_and_a_finished_run_stays_finished(tiny_folder, tmp_path, monkeypatch):
    import torch

    from edgedistill.config import build_config
    from edgedistill.train.stages import distill

    cfg = build_config(None, tiny_overrides(tiny_folder))  # 2 epochs of 4 steps, a checkpoint after each
    run = tmp_path / "run"
    distill_interrupted(cfg, run, 6, monkeypatch)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 4
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]

    summary = distill(cfg, run, resume=True)
    assert summary["complete"] and summary["metrics"]
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6, 7, 8]  # before: 5 and 6 twice

    written = (run / "summary.json").read_text()
    with pytest.raises(EdgeDistillError, match="nothing to resume: .* already reached step 8"):
        distill(cfg, run, resume=True)
    assert (run / "summary.json").read_text() == written  # before: rewritten with empty metrics


@pytest.mark.parametrize("sig, code, said, workers", [(signal.SIGINT, 130, "interrupted", 0),
                                                      (signal.SIGINT, 130, "interrupted", 2),
                                                      (signal.SIGTERM, 143, "terminated (SIGTERM)", 0),
                                                      (signal.SIGTERM, 143, "terminated (SIGTERM)", 2)],
                         ids=["ctrl-c", "ctrl-c-workers", "sigterm", "sigterm-workers"])
def test_an_interrupted_run_says_how_to_continue(tiny_folder, tmp_path, sig, code, said, workers):
    out = tmp_path / "run"
    sets = sum((["--set", o] for o in tiny_overrides(tiny_folder, **{"distill.epochs": 50,
                                                                      "data.num_workers": workers})), [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A test run started in the background by a non-interactive shell (CI) inherits SIGINT
    # ignored, and Python keeps an ignored SIGINT ignored: Ctrl-C's default is restored here.
    # Its own session, so that the signal goes to the whole group as a terminal's Ctrl-C does
    # (data workers included).
    proc = subprocess.Popen([sys.executable, "-m", "edgedistill", "distill", "--out", str(out), *sets], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert errors[0].startswith(f"error: {said}; the last checkpoint is")
    assert f"edgedistill distill --out {out} --resume` continues from it" in errors[0]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written checkpoint


# ----------------------------------------------------------------------------- plot labels


def test_plot_labels_of_coinciding_points_are_merged(tmp_path, monkeypatch):
    """Rows that land on the same spot (here fp32 at two thread counts) get one label, not a pile."""
    pytest.importorskip("matplotlib", reason="the plot needs matplotlib: pip install matplotlib")
    from matplotlib.axes import Axes

    from edgedistill.bench.report import write_plot

    def row(variant: str, threads: int, p50: float) -> dict:
        return {"backend": "onnxruntime", "variant": variant, "precision": "fp32", "threads": threads,
                "baseline": False, "knn_top1": 68.5, "batches": {"1": {"p50_ms": p50}}}

    report = {"settings": {"batches": [1]}, "bundle": {"name": "tiny", "knn": {}}, "machine": {"cpu": "cpu"},
              "rows": [row("onnx_fp32", 1, 1.00), row("onnx_fp32", 2, 1.001), row("onnx_int8", 1, 3.0)]}
    drawn: list[tuple[str, tuple[float, float]]] = []
    annotate = Axes.annotate

    def record(self, text, xy, *args, **kwargs):
        drawn.append((text, tuple(xy)))
        return annotate(self, text, xy, *args, **kwargs)

    monkeypatch.setattr(Axes, "annotate", record)
    assert write_plot(report, tmp_path / "plot.png") and (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(text for text, _ in drawn) == ["onnx_fp32 1t, onnx_fp32 2t", "onnx_int8 1t"]

    from edgedistill.bench.report import plot_labels

    points = [(1.00, 68.5, "onnx_fp32"), (1.01, 68.5, "openvino_fp32@f32"), (3.0, 68.5, "torch"),
              (1.00, 68.5, "onnx_fp32"), (0.5, 60.0, "onnx_int8")]
    assert plot_labels(points) == [(1.00, 68.5, "onnx_fp32, openvino_fp32@f32"), (3.0, 68.5, "torch"),
                                   (0.5, 60.0, "onnx_int8")]
    assert plot_labels([(2.0, 50.0, "a"), (2.0, 50.0, "b")]) == [(2.0, 50.0, "a, b")]
    assert plot_labels([]) == []


def test_a_worker_drops_only_the_resource_sharers_lost_connection():
    """After Ctrl-C the main process may drop a batch's file-descriptor hand-over half-way; the
    worker's resource-sharer thread then reports the broken connection through sys.excepthook."""
    from edgedistill.data import _quiet_resource_sharer

    src = ("def serve(hook, error):\n    try:\n        raise error\n    except BaseException:\n"
           "        import sys\n        hook(*sys.exc_info())\n")

    def reported(filename: str, error: BaseException) -> int:
        namespace: dict = {}
        exec(compile(src, filename, "exec"), namespace)
        seen: list = []
        namespace["serve"](lambda *exc: _quiet_resource_sharer(lambda *a: seen.append(a), *exc), error)
        return len(seen)

    sharer = "/usr/lib/python3.11/multiprocessing/resource_sharer.py"
    assert reported(sharer, ConnectionResetError(104, "reset")) == 0 and reported(sharer, EOFError()) == 0
    assert reported(sharer, ValueError("a bug")) == 1  # anything else is still reported
    assert reported("/work/app.py", EOFError()) == 1
