"""``edgedistill bench``: latency, throughput, cold start and memory of every variant of a bundle,
against torch eager FP32. Runs without torch (the baseline is then ONNX Runtime FP32)."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import console


@click.command("bench")
@click.option("--bundle", "bundle", required=True, type=click.Path(path_type=Path),
              help="Bundle directory (export/<name>/ with manifest.json).")
@click.option("--device", default="cpu", show_default=True,
              help="cpu; browser (onnxruntime-web in headless Chromium, beside the native CPU rows); an OpenVINO "
                   "device (GPU, NPU) or an ONNX Runtime provider (cuda, tensorrt, coreml, ...).")
@click.option("--backends", default=None,
              help="Comma-separated: torch, onnxruntime, openvino, executorch, onnxruntime-web (default: all "
                   "installed).")
@click.option("--precision", "precisions", default=None,
              help="Comma-separated: fp32, bf16, fp16, int8 (default: all the bundle and CPU have; bf16 only "
                   "with native bf16).")
@click.option("--threads", default=None,
              help="Comma-separated thread counts, each measured (default: usable CPUs; --device browser: 1 too).")
@click.option("--batch", "batches", default="1,8,32", show_default=True,
              help="Comma-separated batch sizes: the smallest gives p50/p90/p99 latency, the others throughput.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs per batch size after loading.")
@click.option("--runs", type=int, default=None, help="Timed runs per row and batch size.")
@click.option("--seconds", type=float, default=None,
              help="Seconds of timed runs per row and batch size (default 2 when --runs is not given).")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Interleaved rounds the timed runs are split into (rows alternate; noise hits all alike).")
@click.option("--shapes", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="OpenVINO: compile a static-shape model per batch size, or keep the dynamic batch.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (machine, settings, every row and batch) as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one CSV line per row and batch size.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a latency-vs-k-NN PNG (needs matplotlib and k-NN figures in the manifest).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress while measuring.")
def command(bundle: Path, device: str, backends: str | None, precisions: str | None, threads: str | None,
            batches: str, warmup: int, runs: int | None, seconds: float | None, rounds: int, shapes: str,
            json_path: Path | None, csv_path: Path | None, plot_path: Path | None, progress: bool) -> None:
    """Benchmark every variant of a bundle on every available backend.

    \b
    Each row (backend x variant x precision x threads) runs in its own fresh process; the rows
    take turns in interleaved rounds. Reported: p50/p90/p99 latency at the smallest batch,
    throughput at the others, speed-up against torch eager FP32 (ONNX Runtime FP32 without
    torch), session creation, peak memory, file size, k-NN top-1 from the manifest.
    """
    from edgedistill.bench.report import check_plot_support, render_table, write_csv, write_json, write_plot
    from edgedistill.bench.runner import run_bench

    if plot_path is not None:
        check_plot_support()  # fail before minutes of measuring, not after
    con = console()
    report = run_bench(bundle, device=device, backends=backends, precisions=precisions, threads=threads,
                       batches=batches, warmup=warmup, runs=runs, seconds=seconds, rounds=rounds,
                       static_shapes=shapes == "static", progress=progress, console=con)
    import sys

    from rich.console import Console

    # the results on stdout (wide enough for the table when piped to a file), progress on stderr
    render_table(report, Console(width=None if sys.stdout.isatty() else 220))
    if json_path is not None:
        write_json(report, json_path)
        con.print(f"report written: {json_path}")
    if csv_path is not None:
        write_csv(report, csv_path)
        con.print(f"CSV written: {csv_path}")
    if plot_path is not None:
        if write_plot(report, plot_path):
            con.print(f"plot written: {plot_path}")
        else:
            con.print("[yellow]warning:[/] the bundle's manifest has no k-NN figures (exported without labeled "
                      "--data): no latency-vs-accuracy plot written")
