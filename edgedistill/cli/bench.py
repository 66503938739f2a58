"""``edgedistill bench``: latency, throughput, cold start and memory of every variant of a bundle
on every runtime that runs it, against torch eager FP32. Runs without torch (the baseline is
then the first runtime's FP32 row)."""

from __future__ import annotations

from pathlib import Path

import click

from edgedistill.cli.common import console
from edgedistill.options import CommaList
from edgedistill.runtime import registry


def _device_help() -> str:
    own = [f"{r.device} ({r.label}, beside the native CPU rows)" for r in registry.RUNTIMES if r.device]
    accelerators = [f"a device {r.label} sees" for r in registry.RUNTIMES if r.accelerators]
    return ("; ".join(["cpu", *own, " or ".join(accelerators) + " (gpu, npu, cuda, tensorrt, coreml, ...)"]) +
            ". And/or ssh://[user@]host[:port] (comma-separated, e.g. cpu,ssh://pi): the rows measured on that "
            "device over SSH, beside this machine's.")


@click.command("bench")
@click.option("--bundle", "bundle", required=True, type=click.Path(path_type=Path),
              help="Bundle directory (export/<name>/ with manifest.json).")
@click.option("--device", default="cpu", show_default=True, help=_device_help())
@click.option("--remote-python", default=None, metavar="PATH",
              help="The Python on the SSH devices (default python3; ~/ is the device user's home): it needs numpy and "
                   "the runtimes to measure.")
@click.option("--ssh-config", default=None, metavar="FILE", envvar="EDGEDISTILL_SSH_CONFIG",
              type=click.Path(dir_okay=False, path_type=Path),
              help="An ssh_config file to use instead of ~/.ssh/config (ssh -F; env EDGEDISTILL_SSH_CONFIG).")
@click.option("--backends", type=CommaList(choices=lambda: ("torch", *registry.backends())), default=None,
              help=f"Comma-separated: torch, {', '.join(registry.backends())} (default: all installed).")
@click.option("--precision", "precisions", type=CommaList(choices=("fp32", "bf16", "fp16", "int8")), default=None,
              help="Comma-separated: fp32, bf16, fp16, int8 (default: all the bundle and CPU have; bf16 only "
                   "with native bf16).")
@click.option("--threads", type=CommaList(kind=int), default=None,
              help="Comma-separated thread counts, each measured (default: usable CPUs; on a runtime's own "
                   "device, 1 too).")
@click.option("--batch", "batches", type=CommaList(kind=int), default="1,8,32", show_default=True,
              help="Comma-separated batch sizes: the smallest gives p50/p90/p99 latency, the others throughput.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs per batch size after loading.")
@click.option("--runs", type=int, default=None, help="Timed runs per row and batch size.")
@click.option("--seconds", type=float, default=None,
              help="Seconds of timed runs per row and batch size (default 2 when --runs is not given).")
@click.option("--rounds", type=int, default=5, show_default=True,
              help="Interleaved rounds the timed runs are split into (rows alternate; noise hits all alike; "
                   "5 long rounds were steadier than 32 short ones: export/README.md).")
@click.option("--shapes", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="Runtimes that compile per shape: a static-shape model per batch size, or the dynamic batch.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (machine, settings, every row and batch) as JSON (- for stdout).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one CSV line per row and batch size (- for stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a latency-vs-k-NN PNG (needs matplotlib and k-NN figures in the manifest).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress while measuring.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check every measured file against the manifest's sha256 first.")
def command(bundle: Path, device: str, remote_python: str | None, ssh_config: Path | None, backends: list[str] | None, precisions: list[str] | None,
            threads: list[int] | None, batches: list[int], warmup: int, runs: int | None, seconds: float | None, rounds: int, shapes: str,
            json_path: Path | None, csv_path: Path | None, plot_path: Path | None, progress: bool,
            verify: bool) -> None:
    """Benchmark every variant of a bundle on every available backend.

    \b
    Each row (backend x variant x precision x threads) runs in its own fresh process; the rows
    take turns in interleaved rounds. Reported: p50/p90/p99 latency at the smallest batch,
    throughput at the others, speed-up against torch eager FP32 (the first runtime's FP32
    without torch), session creation, peak memory, file size, k-NN top-1 from the manifest.
    """
    from edgedistill.bench.report import check_plot_support, render_table, write_csv, write_json, write_plot
    from edgedistill.bench.runner import run_bench
    from edgedistill.cli.common import check_outputs, deploy_step, next_step, results_console

    outputs = check_outputs({"--json": json_path, "--csv": csv_path, "--plot": plot_path})
    if plot_path is not None:
        check_plot_support()  # fail before minutes of measuring, not after
    con = console()
    report = run_bench(bundle, device=device, backends=backends, precisions=precisions, threads=threads,
                       batches=batches, warmup=warmup, runs=runs, seconds=seconds, rounds=rounds,
                       static_shapes=shapes == "static", verify=verify, progress=progress, console=con,
                       remote_python=remote_python, ssh_config=str(ssh_config) if ssh_config else None)
    # the results on stdout, progress on stderr; an output written to stdout ("-") moves the
    # table to stderr so that what is piped stays parseable
    results = con if outputs.to_stdout else results_console()
    render_table(report, results)
    if json_path is not None:
        write_json(report, json_path)
        outputs.written(con, "report", json_path)
    if csv_path is not None:
        write_csv(report, csv_path)
        outputs.written(con, "CSV", csv_path)
    if plot_path is not None:
        if write_plot(report, plot_path):
            outputs.written(con, "plot", plot_path)
        else:
            con.print("[yellow]warning:[/] the bundle's manifest has no k-NN figures (exported without labeled "
                      "--data): no latency-vs-accuracy plot written")
    next_step(results, deploy_step(bundle))
