"""``edgedistill export``: a distilled student -> a gated bundle in ``export/<name>/``, one
family of variants per format of the runtime registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgedistill.cli.common import console
from edgedistill.config import INT8_HINTS, ExportConfig
from edgedistill.options import CommaList
from edgedistill.runtime import registry

_DEFAULTS = ExportConfig()


def _formats_help() -> str:
    parts = [f"{r.format} ({r.label}" + (f"; pip install 'edgedistill[{r.extra}]'" if not r.default and r.extra
                                          else "") + ")" for r in registry.RUNTIMES if r.format]
    return "Comma-separated: " + ", ".join(parts) + "."


def _int8_help() -> str:
    recipes = [f"{r.label}: {r.int8_recipe}" for r in registry.RUNTIMES if r.format and r.int8_recipe]
    return "Add each format's INT8 variants (" + "; ".join(recipes) + ")."


@click.command("export")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory of a distilled student (student.json + student.safetensors).")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path), default=Path("export"),
              show_default=True, help="Bundle root; the bundle is <out>/<name>/.")
@click.option("--name", default=None, help="Bundle name (default: the run directory's name).")
@click.option("--formats", type=CommaList(choices=registry.formats, noun="export format"),
              default=",".join(_DEFAULTS.formats), show_default=True, help=_formats_help())
@click.option("--opset", type=int, default=_DEFAULTS.opset, show_default=True, help="ONNX opset (17-20).")
@click.option("--img-size", type=int, default=None, help="Input size (default: the student's).")
@click.option("--int8/--no-int8", default=_DEFAULTS.int8, show_default=True, help=_int8_help())
@click.option("--fp16", is_flag=True, help="Add the FP16-weight variants (the formats that have one).")
@click.option("--calib", default=None, help="Calibration image folder (default: the train split of --data).")
@click.option("--calib-size", type=int, default=_DEFAULTS.calib_size, show_default=True,
              help="Calibration images (for the INT8 recipes that calibrate, and the batch-dependence check).")
@click.option("--data", default=None,
              help="Labeled folder with train/ and val/ (or 'digits') for the k-NN accuracy gate "
                   "(default: the run's data when labeled and present).")
@click.option("--max-drop", type=float, default=_DEFAULTS.max_knn_drop, show_default=True,
              help="Largest allowed k-NN top-1 drop against torch FP32, in points.")
@click.option("--min-cosine", type=float, default=_DEFAULTS.parity_min_cosine, show_default=True,
              help="Parity threshold for the FP32 variants (batch 1 and 8).")
@click.option("--int8-hint", type=click.Choice(INT8_HINTS), default=_DEFAULTS.int8_precision_hint,
              show_default=True, help="INT8 variants with a precision hint: precision of the non-quantized ops "
              "(auto: bf16 where this CPU has native bf16). A bf16 variant is also gated in f32, the fallback on "
              "CPUs without bf16.")
@click.option("--recovery-attempts", type=int, default=_DEFAULTS.int8_recovery_attempts, show_default=True,
              help="An INT8 variant over --max-drop is requantized with its most sensitive layers kept in float "
                   "and measured again, up to this many times (0: fail at once).")
@click.option("--recovery-seconds", type=float, default=_DEFAULTS.int8_recovery_seconds, show_default=True,
              help="Time bound of that accuracy control, all variants together (inf: none); past it the gate's "
                   "verdict stands.")
@click.option("--projection", is_flag=True, help="Add the teacher-space projection as a second output.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Batch size for k-NN features.")
@click.option("--workers", "num_workers", type=int, default=0, show_default=True,
              help="Image-decoding worker processes for k-NN.")
@click.option("--threads", type=int, default=None, help="Threads of the runtimes that judge the variants (default: theirs).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the validation figures to this JSON file (written on gate failure too; - for stdout).")
def command(model_dir: Path, out_root: Path, name: str | None, formats: list[str], opset: int, img_size: int | None,
            int8: bool, fp16: bool, calib: str | None, calib_size: int, data: str | None,
            max_drop: float, min_cosine: float, int8_hint: str, recovery_attempts: int, recovery_seconds: float,
            projection: bool, force: bool,
            batch_size: int, num_workers: int,
            threads: int | None, json_path: Path | None) -> None:
    """Export a student to every format asked for (--formats), FP32 and INT8, and gate every variant.

    \b
    Parity gate: FP32 outputs vs torch on real images at batch 1 and 8 (cosine >= --min-cosine).
    Accuracy gate: k-NN top-1 of every variant vs torch FP32 on --data: knn_delta (variant minus
    torch, in points) >= -max-drop.
    A failed gate exits non-zero and leaves no bundle. One "Recommended" line per runtime names
    the variant to ship: the fastest (a quick timing) within the gate (export/README.md).
    """
    import json

    from edgedistill.cli.common import check_outputs, next_step, results_console, shell_words
    from edgedistill.export.bundle import ExportOptions, GateFailed, export_bundle, summary_rows
    from edgedistill.utils import write_output

    outputs = check_outputs({"--json": json_path})
    con = console()
    options = ExportOptions(int8=int8, fp16=fp16, opset=opset, calib_size=calib_size,
                            projection=projection, min_cosine=min_cosine, max_drop=max_drop, int8_hint=int8_hint,
                            recovery_attempts=recovery_attempts, recovery_seconds=recovery_seconds,
                            batch_size=batch_size, num_workers=num_workers,
                            threads=threads)
    # the results on stdout, unless the JSON goes there ("--json -")
    results = con if outputs.to_stdout else results_console()
    try:
        result = export_bundle(model_dir, out_root=out_root, name=name, formats=formats, calib=calib, data=data,
                               img_size=img_size, force=force, options=options, console=con)
    except GateFailed as exc:
        render_summary(results, summary_rows(exc.report), title="export FAILED (no bundle written)")
        if json_path is not None:
            write_output(json_path, json.dumps(exc.report, indent=2) + "\n")
        raise
    render_summary(results, result.rows, title=f"export: {result.bundle}", default=result.default_variant)
    for line in result.recommended_lines():
        results.print(line, highlight=False, markup=False, soft_wrap=True)
    if json_path is not None:
        write_output(json_path, json.dumps(result.validation, indent=2) + "\n")
    next_step(results, shell_words("edgedistill", "bench", "--bundle", result.bundle))


def render_summary(con: Any, rows: list[dict[str, Any]], title: str, default: str | None = None) -> None:
    """Variant, precision, file size, parity cosine / max-abs, k-NN top-1 and knn_delta, gate status."""
    from rich.table import Table

    from edgedistill.utils import human_bytes

    table = Table(title=title, caption=f"default variant: {default}" if default else None)
    for column, justify in (("variant", "left"), ("precision", "left"), ("size", "right"), ("cosine", "right"),
                            ("max-abs", "right"), ("k-NN top-1", "right"), ("knn_delta", "right"),
                            ("gate", "center")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        cos = "-" if row["cosine"] is None else f"{row['cosine']:.6f}" + ("" if row["parity_gated"] else "*")
        status = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[row["passed"]]
        table.add_row(row["variant"], row["precision"],
                      "-" if row["size_bytes"] is None else human_bytes(row["size_bytes"]), cos,
                      "-" if row["max_abs"] is None else f"{row['max_abs']:.1e}",
                      "-" if row["top1"] is None else f"{row['top1']:.2f}",
                      "-" if row["knn_delta"] is None else f"{row['knn_delta']:+.2f}", status)
    con.print(table)
    if any(r["cosine"] is not None and not r["parity_gated"] for r in rows):
        con.print("* parity reported, not gated (the k-NN accuracy gate judges this variant)")
    notes = ["knn_delta = the variant's k-NN top-1 minus torch FP32's, in points (positive: better)"
             if any(r["knn_delta"] is not None for r in rows) else "",
             "int8@bf16: the precision of the ops left in floating point (@f32: as a CPU without bf16 runs it)"
             if any("@" in r["precision"] for r in rows) else ""]
    for note in filter(None, notes):
        con.print(note)
