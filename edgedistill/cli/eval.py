"""``edgedistill eval``: k-NN, linear probe and attention maps of any model.

``--model`` takes a run directory, a student/teacher ``.safetensors``, a model file any runtime of
the registry opens, or a bundle directory (``--variant`` picks the model), so a torch model and
its exports are judged by the same numbers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import click

from edgedistill.cli.common import console
from edgedistill.options import CommaList



def _model_help() -> str:
    from edgedistill.runtime import registry

    return (f"Run directory, student/teacher .safetensors, a model file ({registry.model_files()}), bundle "
            "directory, checkpoint file (with --arch), timm hub name, or 'random'.")


def model_options(func):
    """--model and how to open it."""
    options = [
        click.option("--model", "model", required=True, help=_model_help()),
        click.option("--variant", default=None, help="Bundle variant (default: the manifest's default_variant)."),
        click.option("--arch", default="", help="timm architecture of a bare checkpoint file or 'random'."),
        click.option("--img-size", type=int, default=0,
                     help="Input size of a checkpoint/hub/random model, or of an ONNX model with a dynamic size."),
        click.option("--patch-size", type=int, default=0, help="Patch size of a checkpoint/random model."),
        click.option("--depth", type=int, default=0, help="Depth of a checkpoint/random model (0: the arch's own)."),
        click.option("--device", default="auto", show_default=True, help="Torch device: auto, cpu, cuda[:N]. "
                     "Exported models run on the CPU."),
        click.option("--threads", type=int, default=None, help="Intra-op threads (default: the backend's own)."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Initialization seed of a 'random' model (the random-init baseline)."),
        click.option("--verify/--no-verify", default=True, show_default=True,
                     help="Check a bundle model against the manifest's sha256 before loading it."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def data_options(func):
    options = [
        click.option("--data", default=None, help="Folder with train/ and val/ (labeled), or 'digits'."),
        click.option("--train", "train", default=None, help="Labeled bank folder (<class>/<image>)."),
        click.option("--val", "val", default=None, help="Labeled validation folder (same classes)."),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--workers", type=int, default=2, show_default=True, help="DataLoader workers."),
        click.option("--max-bad-images", type=int, default=10, show_default=True,
                     help="Corrupt images skipped before failing."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Write the figures to this JSON file (- for stdout: the table then goes to stderr)."),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@contextlib.contextmanager
def _ranks(opts: dict[str, Any]) -> Iterator[bool]:
    """Under torchrun, join the process group (each rank then embeds a shard of the data and
    the feature banks are gathered); yields whether this process reports."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield True
        return
    from edgedistill import distributed as distmod

    info = distmod.setup(opts["device"])
    opts["device"] = str(info.device)
    try:
        yield info.is_main
    finally:
        distmod.teardown()


def _evaluate(opts: dict[str, Any], evaluate: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Open the model and the splits and run ``evaluate`` on them (on every rank under
    torchrun); the result on the reporting process, None on the others."""
    from edgedistill.limits import check_batch_memory, image_memory

    with _ranks(opts) as reports:
        model = _open(opts)
        check_batch_memory(opts["batch_size"], image_memory(model.img_size, model.img_size), "--batch-size")
        splits = _splits(opts, model)
        result = evaluate(model, splits, batch_size=opts["batch_size"], num_workers=opts["workers"],
                          threads=opts["threads"], **kwargs)
    return model, (result if reports else None)


def _check_numbers(opts: dict[str, Any]) -> None:
    """The counts a user can get wrong, before anything is opened (the batch's memory is
    checked once the model's input size is known)."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.limits import check_count, check_device

    check_device(opts["device"], "--device")
    if opts["threads"] is not None:
        check_count(opts["threads"], "--threads")
    for key in ("workers", "batch_size", "max_bad_images"):
        if key in opts:
            option = "--" + key.replace("_", "-")
            if key == "workers":
                check_count(opts[key], option, minimum=0)
            elif opts[key] < (1 if key == "batch_size" else 0):
                raise EdgeDistillError(f"{option} must be >= {1 if key == 'batch_size' else 0}, got {opts[key]}")


def _open(opts: dict[str, Any]):
    from edgedistill.eval.models import open_model

    _check_numbers(opts)
    return open_model(opts["model"], variant=opts["variant"], device=opts["device"], threads=opts["threads"],
                      arch=opts["arch"], img_size=opts["img_size"], patch_size=opts["patch_size"],
                      depth=opts["depth"], seed=opts["seed"], verify=opts.get("verify", True))


def _splits(opts: dict[str, Any], model: Any):
    from edgedistill.eval.evaluate import load_splits

    return load_splits(opts["train"], opts["val"], opts["data"], img_size=model.img_size,
                       max_bad_images=opts["max_bad_images"])


def _check_json_path(path: Path | None) -> None:
    """Before any work: ``path`` can be written (a missing folder is created, as export and
    bench do; ``-``: stdout)."""
    from edgedistill.cli.common import check_outputs

    check_outputs({"--json": path})


def _write_json(con: Any, path: Path, result: dict[str, Any]) -> None:
    import json

    from edgedistill.utils import STDOUT, write_output

    write_output(path, json.dumps(result, indent=2) + "\n")
    if str(path) != STDOUT:
        con.print(f"wrote {path}", highlight=False, soft_wrap=True)


def _results(json_path: Path | None, con: Any) -> Any:
    """Where the tables go: stdout, or stderr when the JSON goes to stdout (``--json -``)."""
    from edgedistill.cli.common import results_console
    from edgedistill.utils import STDOUT

    return con if json_path is not None and str(json_path) == STDOUT else results_console()


def _next(out: Any, opts: dict[str, Any]) -> None:
    """After an evaluation: export a run directory's student, benchmark a bundle."""
    from edgedistill.cli.common import next_step, shell_words
    from edgedistill.rundir import RunDir

    model = Path(opts["model"]).expanduser()
    data = ["--data", opts["data"]] if opts.get("data") else []
    if (model / "manifest.json").is_file():
        next_step(out, shell_words("edgedistill", "bench", "--bundle", model))
    elif model.is_dir() and RunDir.of(model).config_or_none() is not None:
        next_step(out, shell_words("edgedistill", "export", "--model", model, "--int8", *data))


def _header(con: Any, model: Any, result: dict[str, Any]) -> None:
    d = result["data"]
    skipped = sum((d.get("skipped_images") or {}).values())
    con.print(f"[bold]{model.name}[/] ({model.backend}, {model.img_size} px, dim {model.dim})  "
              f"train {d['num_train']} images, val {d['num_val']}, {d['num_classes']} classes"
              + (f"; {skipped} unreadable or oversized image(s) skipped" if skipped else ""), highlight=False,
              soft_wrap=True)


def _extraction_line(result: dict[str, Any]) -> str:
    e = result["extraction"]
    return (f"feature extraction: {e['images']} images in {e['seconds']:.1f} s = {e['images_per_s']:,.0f} img/s "
            f"end to end, {e['model_images_per_s']:,.0f} img/s in the model (batch {e['batch_size']})")


@click.group("eval")
def command() -> None:
    """Evaluate a model: k-NN (DINO protocol), linear probe, attention maps."""


@command.command("knn")
@model_options
@data_options
@click.option("--k", "ks", type=CommaList(kind=int), default="10,20,100,200", show_default=True,
              help="Neighbour counts (k=20 is the headline).")
@click.option("--temperature", type=float, default=0.07, show_default=True, help="Vote weight exp(sim / T).")
@click.option("--chunk-size", type=int, default=4096, show_default=True, help="Rows per similarity block.")
@click.option("--predictions", "with_predictions", is_flag=True,
              help="Also write the headline-k prediction of every val image into --json.")
def knn(ks: list[int], temperature: float, chunk_size: int, with_predictions: bool, json_path: Path | None,
        no_progress: bool, **opts: Any) -> None:
    """Weighted k-NN top-1/top-5 of a model's CLS features on a labeled train/val pair."""
    from rich.table import Table

    from edgedistill.errors import EdgeDistillError
    from edgedistill.eval.evaluate import evaluate_knn

    if not 0 < temperature < float("inf"):
        raise EdgeDistillError(f"--temperature must be a number > 0, got {temperature}")
    if chunk_size < 1:
        raise EdgeDistillError(f"--chunk-size must be >= 1, got {chunk_size}")
    _check_json_path(json_path)
    model, result = _evaluate(opts, evaluate_knn, ks=ks, temperature=temperature, chunk_size=chunk_size,
                              progress=not no_progress, with_predictions=with_predictions)
    if result is None:
        return
    con = console()
    _header(con, model, result)
    table = Table(title=f"k-NN (T={temperature:g}): {model.name}")
    table.add_column("k", justify="right")
    table.add_column("top-1 %", justify="right")
    table.add_column("top-5 %", justify="right")
    for k in ks:
        entry = result["per_k"][str(k)]
        label = f"{k}" + (f" (used {entry['k_used']})" if entry["k_used"] != k else "")
        if k == result["headline_k"]:
            label = f"[bold]{label}*[/]"
        top5 = f"{entry['top5']:.2f}" if entry["top5"] is not None else "-"
        table.add_row(label, f"{entry['top1']:.2f}", top5)
    out = _results(json_path, con)
    out.print(table)
    out.print(_extraction_line(result), highlight=False, soft_wrap=True)
    if json_path is not None:
        _write_json(con, json_path, result)
    _next(out, opts)


@command.command("linear")
@model_options
@data_options
@click.option("--c", "cs", type=CommaList(kind=float, minimum=None), default="0.1,1,10,100", show_default=True,
              help="Inverse regularization strengths; several: chosen on 20%% of train held out.")
@click.option("--max-iter", type=int, default=1000, show_default=True)
def linear(cs: list[float], max_iter: int, json_path: Path | None, no_progress: bool, **opts: Any) -> None:
    """Linear probe: logistic regression on frozen L2-normalized features."""
    from rich.table import Table

    from edgedistill.errors import EdgeDistillError
    from edgedistill.eval.evaluate import evaluate_linear

    if min(cs) <= 0:
        raise EdgeDistillError(f"--c values must be > 0, got {','.join(map(str, cs))}")
    if max_iter < 1:
        raise EdgeDistillError(f"--max-iter must be >= 1, got {max_iter}")
    _check_json_path(json_path)
    model, result = _evaluate(opts, evaluate_linear, cs=cs, max_iter=max_iter, progress=not no_progress)
    if result is None:
        return
    con = console()
    _header(con, model, result)
    table = Table(title=f"linear probe: {model.name}")
    table.add_column("C", justify="right")
    table.add_column("top-1 %", justify="right")
    table.add_column("top-5 %", justify="right")
    table.add_row(f"{result['C']:g}", f"{result['top1']:.2f}",
                  f"{result['top5']:.2f}" if result["top5"] is not None else "-")
    out = _results(json_path, con)
    out.print(table)
    if result["c_search"]:
        search = ", ".join(f"C={c}: {acc:.1f}%" for c, acc in result["c_search"].items())
        out.print(f"C chosen on 20% of train held out: {search}", highlight=False, soft_wrap=True)
    out.print(_extraction_line(result), highlight=False, soft_wrap=True)
    if json_path is not None:
        _write_json(con, json_path, result)
    _next(out, opts)


@command.command("attention")
@model_options
@click.option("--teacher", default=None, help="Teacher: run directory, checkpoint (with --teacher-arch), timm hub "
              "name or 'random'. Default: the teacher in the student run's config.yaml.")
@click.option("--teacher-arch", default=None, help="timm architecture of a checkpoint/random teacher.")
@click.option("--teacher-patch-size", type=int, default=None)
@click.option("--teacher-depth", type=int, default=None)
@click.option("--images", "images", multiple=True, required=True,
              help="Image files (repeat the option, or list several after one --images).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG to write.")
@click.option("--temperature", type=float, default=None,
              help="Head-fusion temperature (default: the run's distill.temperature, else 10).")
@click.argument("more_images", nargs=-1, type=click.Path(path_type=Path))
def attention(teacher: str | None, teacher_arch: str | None, teacher_patch_size: int | None,
              teacher_depth: int | None, images: tuple[str, ...], out: Path, temperature: float | None,
              more_images: tuple[Path, ...], **opts: Any) -> None:
    """Teacher and student last-layer CLS attention, per head and fused, side by side (PNG)."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.eval.attention import attention_figure

    if str(out) != "-" and out.parent and not out.parent.exists():
        raise EdgeDistillError(f"--out: folder {out.parent} does not exist")
    from edgedistill.cli.common import check_outputs

    check_outputs({"--out": out})
    model = _open(opts)
    run_cfg = _run_config(opts["model"])
    teacher_cfg = _teacher_config(run_cfg, teacher, teacher_arch, teacher_patch_size, teacher_depth)
    if temperature is None:
        temperature = run_cfg.distill.temperature if run_cfg is not None else 10.0

    import warnings

    from edgedistill.models.teacher import build_teacher

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*randomly initialized.*")
        teacher_model, info = build_teacher(teacher_cfg, teacher_cfg.img_size or model.img_size)
    arch = teacher_cfg.arch
    result = attention_figure(model, teacher_model, [*images, *map(str, more_images)], out,
                              teacher_arch=info.get("arch", arch), temperature=temperature)
    from edgedistill.cli.common import results_console

    out_con = console() if str(out) == "-" else results_console()  # the PNG on stdout: the words on stderr
    out_con.print(f"wrote {result['out']} ({result['size'][0]}x{result['size'][1]} px): teacher {info['source']} "
                  f"({result['teacher_heads']} heads, grid {result['grids']['teacher']}), student "
                  f"({result['student_heads']} heads, grid {result['grids']['student']})", highlight=False,
                  soft_wrap=True)
    _next(out_con, opts)


def _run_config(model: str):
    """The config of the run ``model`` belongs to (a run directory or a file in one), else None."""
    from edgedistill.rundir import RunDir

    path = Path(model).expanduser()
    return RunDir.of(path if path.is_dir() else path.parent).config_or_none()


def _teacher_config(run_cfg: Any, source: str | None, arch: str | None, patch_size: int | None,
                    depth: int | None) -> Any:
    """The run's ``teacher.*`` section (defaults without a run) with the command line on top."""
    from dataclasses import replace

    from edgedistill.config import TeacherConfig
    from edgedistill.errors import EdgeDistillError

    t = run_cfg.teacher if run_cfg is not None else TeacherConfig(source="")
    if not (source or t.source):
        raise EdgeDistillError("pass --teacher (the model is not a run directory with a config.yaml naming one)")
    return replace(t, source=source or t.source, arch=arch or t.arch,
                   patch_size=t.patch_size if patch_size is None else patch_size,
                   depth=t.depth if depth is None else depth)
