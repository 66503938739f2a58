"""What a newcomer meets between the commands: defaults that fit the data, an offline hub
teacher that fails at once, tables that fit the terminal, plot labels apart, the quickstart
data on disk, and a report that says when training went wrong. The whole chain, as a user
runs it, is ``test_walkthrough.py``."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


@pytest.mark.parametrize("img_size, patch", [(224, 16), (32, 8), (48, 12), (64, 16), (16, 4)])
def test_an_unset_patch_size_follows_the_image_size(img_size, patch):
    """ViT-T/16 at 32 px would see a 2x2 grid; unset, the patch leaves at least 4x4."""
    from edgedistill.models.vit import fitted_patch_size

    assert fitted_patch_size("vit_tiny_patch16_224", img_size) == patch


def test_a_warmup_longer_than_the_run_is_clamped_with_a_warning():
    from edgedistill.config import Config
    from edgedistill.train.distill import loop_settings
    from edgedistill.train.loop import _plan

    cfg = Config()
    cfg.distill.epochs, cfg.distill.warmup_epochs, cfg.data.batch_size = 1, 5.0, 8
    loader = [None] * 20  # 20 batches: one epoch of 20 optimizer steps
    with pytest.warns(UserWarning, match=r"warmup_epochs 5 \(100 steps\) is longer than the run \(20 steps\): "
                                         r"warmup clamped to 2 steps"):
        plan = _plan(loop_settings(cfg), loader, world_size=1)
    assert plan.warmup_steps == 2 and plan.total_steps == 20
    cfg.distill.epochs = 10  # a warmup inside the run is left as it is
    assert _plan(loop_settings(cfg), loader, world_size=1).warmup_steps == 100


@pytest.mark.parametrize("env", [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}],
                         ids=["unreachable", "offline-mode"])
def test_a_hub_teacher_without_network_fails_in_one_line_and_leaves_nothing(tmp_path, env):
    """No cached weights and no hub (a port nothing listens on, or offline mode): one line
    naming how to pass a local file, exit 2, no run directory; before torch is imported, so
    in about a second (the hub client alone retried for 51 s)."""
    env = {**env, "HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = run_cli("distill", "--data", "digits", "--teacher", "vit_small_patch16_224.dino",
                  "--out", str(tmp_path / "runs" / "hub"), env=env, cwd=tmp_path)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ") and "--teacher path/to/checkpoint.pth --set teacher.arch=vit_small_patch16_224" in lines[0]
    assert not (tmp_path / "runs").exists() and run.stdout == ""


def test_the_loader_checks_the_hub_before_downloading(tmp_path, monkeypatch):
    """A library caller (the pipeline, eval attention) gets the same fast failure, with the
    original file's URL."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.models.teacher import load_teacher

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EdgeDistillError, match=r"127\.0\.0\.1 is unreachable.*dino_deitsmall16_pretrain\.pth"):
        load_teacher("vit_small_patch16_224.dino", "vit_small_patch16_224", 32)


def test_a_wide_table_is_printed_in_parts_that_fit():
    """At 60 columns a 12-column table is split; the naming columns repeat in each part and
    no cell is cut (before, `onnxruntime` became `onnxr…`)."""
    from rich.table import Table

    from edgedistill.progress import make_console, print_table

    table = Table(title="bench")
    for name in ["backend", "variant", *(f"metric {i}" for i in range(10))]:
        table.add_column(name)
    for variant in ("onnx_fused_int8", "openvino_int8"):
        table.add_row("onnxruntime", variant, *(f"{i * 1.5:.2f}x" for i in range(10)))
    console = make_console(stderr=False)
    console.width = 60
    with console.capture() as captured:
        print_table(console, table, keys=2)
    lines = captured.get().splitlines()
    assert max(len(line) for line in lines) <= 60 and not any("…" in line for line in lines)
    parts = [line for line in lines if line.startswith("┃ backend")]
    assert len(parts) >= 2 and all("variant" in line for line in parts)
    assert sum("onnx_fused_int8" in line for line in lines) == len(parts)
    assert all(any(f"metric {i}" in line for line in lines) for i in range(10))


def test_plot_labels_never_overlap():
    """Points close together (the same model at two hints, a fused and a plain graph) get
    their labels placed apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgedistill.bench.report import _overlaps, place_labels

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    points = [(10 + i * 0.3, 60 + (i % 3) * 0.1, f"variant_number_{i}@bf16") for i in range(8)]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    fig.tight_layout()
    notes = place_labels(ax, points)
    boxes = [note.get_window_extent(fig.canvas.get_renderer()) for note in notes]
    assert len(boxes) == 8
    assert not any(_overlaps(box, boxes[:i]) for i, box in enumerate(boxes))
    plt.close(fig)


def test_the_report_flags_training_trouble(tmp_path):
    """A DINO loss back at ln K (the collapse the quickstart config warns about) and a student
    under its random init are said in the report, not left to be found."""
    import math

    from edgedistill.config import Config
    from edgedistill.pipeline import PipelinePaths
    from edgedistill.pipeline.report import summarize, write_report

    cfg = Config()
    cfg.pretrain.out_dim = 1024
    paths = PipelinePaths.for_config(cfg, runs_root=tmp_path / "runs", export_root=tmp_path / "export")
    paths.teacher.path.mkdir(parents=True)
    losses = [6.0, 4.1, 5.2, math.log(1024) - 0.001]
    paths.teacher.metrics.write_text("".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(losses)))
    paths.eval.write_text(json.dumps({"teacher": {"top1": 78.0}, "random_teacher": {"top1": 67.0},
                                      "student": {"top1": 55.0}, "random_student": {"top1": 57.1}}))
    summary = summarize(paths, cfg)
    assert len(summary["trouble"]) == 2
    assert "teacher: the DINO loss ended at 6.9305, its collapse value ln(1024) = 6.9315" in summary["trouble"][0]
    assert "student: k-NN top-1 55.00 is not above its random init's 57.10" in summary["trouble"][1]
    text = (write_report(cfg, paths, summary, []) / "README.md").read_text()
    assert "## Training trouble" in text and "collapse value" in text
    healthy = [6.0, 4.1, 3.0]
    paths.teacher.metrics.write_text("".join(json.dumps({"step": i, "loss": v}) + "\n" for i, v in enumerate(healthy)))
    paths.eval.write_text(json.dumps({"student": {"top1": 60.0}, "random_student": {"top1": 57.1}}))
    assert summarize(paths, cfg)["trouble"] == []


@pytest.mark.slow
def test_the_helps_own_example_fits_the_data_and_leaves_warmup(tmp_path):
    """``distill --data digits --set distill.epochs=1`` exactly, no config (a ViT-S teacher and a
    12-block ViT-T: about 2 minutes here): the student's grid matches the 32-px data (printed),
    the learning rate leaves warmup, and the student's k-NN is printed beside its random init's.
    ``test_walkthrough.py`` checks the same on 2-block models in the default suite."""
    run = run_cli("distill", "--data", "digits", "--set", "distill.epochs=1", "--out", str(tmp_path / "run"),
                  cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "patch 8 at 32 px, a 4x4 grid" in run.stderr and "warmup clamped to 2 steps" in run.stderr
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs.index(max(lrs)) < len(lrs) - 1 and "k-NN, its random init" in run.stdout
