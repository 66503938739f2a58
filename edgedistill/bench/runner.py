"""``run_bench``: every variant of a bundle on every available backend, each in its own fresh
process, interleaved round by round, against torch eager FP32 (design.md §9).

How a measurement is made, and why:

* **One fresh process per row** (backend x variant x precision x threads), started one after
  another so that imports and session creation (the cold start) are timed alone. Each row's
  peak memory is its own process's (``VmHWM``: Linux carries ``ru_maxrss`` over from the
  parent across fork/exec), and no runtime shares thread pools or allocators with another.
  A worker is ``runtime.worker`` with its runtime's engine (self-contained: no edgedistill, no
  torch); only the torch baseline, and a runtime whose Python runtime loads libtorch, import torch.
* **Interleaved rounds.** All rows stay loaded (idle, blocked on a pipe) while the runner asks
  them in turn for a slice of timed runs, rotating the order every round; each slice starts
  with one untimed run. Noise from a shared machine (other processes, frequency changes)
  then hits every row alike, and the ratios stay meaningful even when absolute figures drift.
  ``round_p50_ms`` per row shows how much they drifted.
* **Threads fixed and recorded**: each engine sets its runtime's thread count (and reads it
  back where the runtime tells), ``torch.set_num_threads`` (inter-op 1) for the baseline.
* **Precision explicit**: a row runs at the precision hint its manifest entry records (what the
  accuracy gate validated); bf16 rows exist only where the CPU has native bf16.
* **Static shapes** (default): a runtime that compiles per shape compiles one model per batch
  size, what an app serving a fixed batch does. ``static_shapes=False`` keeps the bundle's
  dynamic batch.
* **Baseline**: torch eager FP32 (``torch.inference_mode``, the same threads), rebuilt from the
  student's safetensors: the bundle's own ``student.json``/``.safetensors`` when it holds
  them, else the run directory its ``provenance`` names (checked against the recorded
  sha256). Without torch or the weights the baseline is the first runtime's FP32 row, and the
  report says why.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgedistill.bench.plan import BenchOptions, Row, plan_bench
from edgedistill.bench.process import SETTLE_SECONDS, measure_group
from edgedistill.bench.records import BenchReport, ReportRow, RowResult, Skip
from edgedistill.bench.stats import add_ratios, baselines, best_rows, knn_meta
from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.manifest import Manifest

__all__ = ["run_bench", "REPORT_FORMAT"]

REPORT_FORMAT = "edgedistill-bench/1"


def run_bench(
    bundle: str | Path,
    *,
    device: str | Sequence[str] = "cpu",
    backends: str | Sequence[str] | None = None,
    precisions: str | Sequence[str] | None = None,
    threads: str | Sequence[int] | None = None,
    batches: str | Sequence[int] = (1, 8, 32),
    warmup: int = 5,
    runs: int | None = None,
    seconds: float | None = None,
    rounds: int = 5,
    static_shapes: bool = True,
    verify: bool = True,
    progress: bool = True,
    console: Any = None,
    load_timeout: float = 900.0,
    run_timeout: float = 600.0,
    remote_python: str | None = None,
    ssh_config: str | None = None,
) -> BenchReport:
    """Benchmark every variant of ``bundle`` (a directory with ``manifest.json``).

    Args:
        device: "cpu", a runtime's own device (its rows beside the native CPU rows), or an
            accelerator a runtime sees ("gpu", "npu", "cuda", ...); and/or SSH devices
            ("ssh://[user@]host[:port]", comma-separated or a list), whose rows are measured
            there and interleaved with the others (``bench.remote``).
        backends: "torch" and runtimes of the registry (default: all that are installed).
        precisions: subset of fp32, bf16, fp16, int8 (default: all the bundle and CPU allow).
        threads: thread counts, each measured separately (default: the usable CPUs; on a
            runtime's own device 1 as well).
        batches: batch sizes; the smallest gives the latency percentiles, the others throughput.
        warmup: untimed runs per batch size after loading.
        runs / seconds: timed runs per row and batch size, or seconds per row and batch size
            (default: 2 s), split over ``rounds`` interleaved rounds.
        static_shapes: a runtime that compiles per shape compiles one model per batch size.
        verify: check every measured variant's files against the manifest's sha256 first.
        remote_python: the Python on the SSH devices (default ``python3``).
        ssh_config: an ssh_config file instead of ``~/.ssh/config`` (default: the
            ``EDGEDISTILL_SSH_CONFIG`` environment variable, if set).

    Returns:
        The report (see ``edgedistill.bench.report``): machine, settings, baselines, rows with
        latency/throughput per batch, speed-ups, cold start, memory, size, k-NN figures.
        Raises EdgeDistillError for a bad bundle, option or device.
    """
    from edgedistill.bench.machine import available_devices, describe_machine, load_average
    from edgedistill.bench.remote import open_device
    from edgedistill.progress import stderr_console
    from edgedistill.runtime.manifest import read_manifest

    con = console if console is not None else stderr_console(quiet=not progress)
    bundle_dir = Path(bundle).expanduser()
    manifest = read_manifest(bundle_dir)
    local, urls = split_devices(device)
    opts = BenchOptions.parse(backends, precisions, threads, batches, warmup, runs, seconds, rounds, static_shapes,
                              device=local)
    devices = available_devices()
    with contextlib.ExitStack() as stack:  # the SSH devices stay connected until their rows are measured
        remotes = {}
        for url in urls:
            if progress:  # a failure to connect stays one line without it
                con.print(f"connecting to {url}")
            remote = stack.enter_context(open_device(url, remote_python, ssh_config))
            remotes[remote.label] = remote
        rows, skipped = plan_bench(manifest, bundle_dir, opts, local, devices, list(remotes.values()))
        settings = _settings(manifest, bundle_dir, opts, ",".join([*([local] if local else []), *urls]),
                             _verify(manifest, bundle_dir, rows) if verify else False)
        started = _dt.datetime.now(_dt.timezone.utc)
        load_before = load_average()
        results = _measure(rows, skipped, manifest, bundle_dir, opts, settings, remotes, con, progress,
                           (load_timeout, run_timeout))
        described = {label: remote.describe() for label, remote in remotes.items()}
    report_rows = _measured_rows(rows, results, skipped)
    return _report(manifest, bundle_dir, opts, settings, describe_machine(devices), report_rows, skipped, described,
                   started, load_before)


def _report(manifest: Manifest, bundle_dir: Path, opts: BenchOptions, settings: dict[str, Any],
            machine: dict[str, Any], rows: list[ReportRow], skipped: list[Skip], remotes: dict[str, Any],
            started: _dt.datetime, load_before: Any) -> BenchReport:
    """The measured rows with their baselines and ratios, the best per runtime and the notes,
    assembled into the report."""
    from edgedistill.bench.machine import load_average

    bases = baselines(rows, opts.threads, skipped)
    add_ratios(rows, bases)
    load_after = load_average()
    return {
        "format": REPORT_FORMAT,
        "created": started.isoformat(timespec="seconds"),
        "seconds": round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1),
        "bundle": {"path": str(bundle_dir.resolve()), "name": manifest.name, "input": manifest.input.as_json(),
                   "default_variant": manifest.default_variant, "knn": knn_meta(manifest)},
        "machine": dict(machine, load_average_after=load_after),
        "settings": settings,
        "baselines": bases,
        "rows": rows,
        "skipped": skipped,
        "best": best_rows(rows, opts.batches[0], knn_meta(manifest)),
        "notes": _notes(rows, [load_before, load_after], settings["load_average_per_round"], remotes),
        "remotes": remotes,
    }


def _measure(rows: list[Row], skipped: list[Skip], manifest: Manifest, bundle_dir: Path, opts: BenchOptions,
             settings: dict[str, Any], remotes: dict[str, Any], con: Any, progress: bool,
             timeouts: tuple[float, float]) -> dict[str, RowResult]:
    """The files copied to each SSH device, then every thread count's rows loaded and measured
    in interleaved rounds (``process.measure_group``); the figures by row id."""
    from edgedistill.progress import progress_bar
    from edgedistill.cleanup import temporary_directory

    results: dict[str, RowResult] = {}
    # the scratch folder also holds the workers' own temporary files (a driven app's profile):
    # removed with it at the end, and when SIGTERM ends the command
    with _servers(rows, bundle_dir), temporary_directory("edgedistill-bench-") as scratch:
        input_file = _input_file(manifest, settings["sample"], scratch)
        for label, remote in remotes.items():
            theirs = [r for r in rows if r.remote == label]
            if theirs:
                if progress:
                    con.print(f"copying the files of {len(theirs)} rows to {remote.target.url}")
                remote.upload(theirs, bundle_dir, manifest, input_file)
        con.print(f"benchmarking [bold]{manifest.name}[/] ({bundle_dir}): {len(rows)} rows x "
                  f"batch {','.join(map(str, opts.batches))} on {settings['device']}, "
                  f"threads {','.join(map(str, opts.threads))}")
        with progress_bar(con, enabled=progress) as bar:
            for t in opts.threads:
                measure_group([r for r in rows if r.threads == t], results, skipped, manifest=manifest, opts=opts,
                              input_file=input_file, bar=bar, load_timeout=timeouts[0], run_timeout=timeouts[1],
                              round_loads=settings["load_average_per_round"].setdefault(str(t), []),
                              scratch=scratch, devices=remotes)
    return results


def split_devices(device: str | Sequence[str]) -> tuple[str | None, list[str]]:
    """``--device``: at most one device here ("cpu", a runtime's own, an accelerator; None when
    only SSH devices are named) and the SSH devices, each once."""
    from edgedistill.bench.remote import is_ssh, parse_target

    names = [d.strip() for d in (device.split(",") if isinstance(device, str) else device) if d.strip()]
    if not names:
        raise EdgeDistillError("--device is empty: name cpu, a device or ssh://[user@]host[:port]")
    here = list(dict.fromkeys(d for d in names if not is_ssh(d)))
    if len(here) > 1:
        raise EdgeDistillError(f"--device names {len(here)} devices of this machine ({', '.join(here)}): "
                               "one at a time (SSH devices may join it)")
    urls = list(dict.fromkeys(parse_target(d).url for d in names if is_ssh(d)))
    return (here[0] if here else None), urls


def _verify(manifest: Manifest, bundle_dir: Path, rows: list[Row]) -> bool:
    """Every measured variant against its sha256: a flipped byte in a model gives finite, wrong
    figures, so it is caught before any measuring (the torch row checks its own weights)."""
    from edgedistill.runtime.manifest import verify_variant

    for name in sorted({r.variant for r in rows if r.backend != "torch"}):
        verify_variant(manifest, bundle_dir, name)
    return True


@contextlib.contextmanager
def _servers(rows: list[Row], bundle_dir: Path) -> Iterator[None]:
    """What a runtime's workers need running while its rows are measured (a page server); what it yields goes into each of its rows' spec as ``url``."""
    from edgedistill.runtime import registry

    with contextlib.ExitStack() as stack:
        for name in dict.fromkeys(r.backend for r in rows if r.backend != "torch"):
            url = stack.enter_context(registry.get(name).serve(bundle_dir))
            if url is not None:
                for row in rows:
                    if row.backend == name:
                        row.extra["url"] = url
        yield


def _input_file(manifest: Manifest, sample: str | None, folder: Path) -> str | None:
    """The bundle's sample image through its preprocessing, as the .npy in ``folder`` every
    worker times (the workers need no Pillow and no edgedistill); None: seeded noise."""
    import numpy as np

    from edgedistill.runtime.preprocessing import preprocess

    if not sample or not os.path.isfile(sample):
        return None
    try:
        image = preprocess(sample, manifest.preprocessing.spec)
    except Exception:  # a sample that does not fit the model is not worth failing for
        return None
    np.save(folder / "input.npy", image.astype(np.float32))
    return str(folder / "input.npy")


def _settings(manifest: Manifest, bundle_dir: Path, opts: BenchOptions, device: str,
              verified: bool) -> dict[str, Any]:
    """How the run measures, recorded in the report."""
    sample_path = str(bundle_dir / manifest.sample.file) if manifest.sample and manifest.sample.file else None
    return {
        "device": device, "backends": opts.backends, "precisions": opts.precisions, "threads": opts.threads,
        "batches": opts.batches, "latency_batch": opts.batches[0], "warmup": opts.warmup, "runs": opts.runs,
        "seconds": opts.seconds, "rounds": opts.rounds, "per_round": opts.per_round, "rewarm_per_round": 1,
        "settle_seconds": SETTLE_SECONDS, "load_average_per_round": {}, "static_shapes": opts.static_shapes,
        "method": "one fresh process per row, loaded one after another; timed runs interleaved in rounds "
                  "with the row order rotated each round; percentiles over all timed runs",
        "input": "the bundle's sample image through its preprocessing, repeated to the batch size"
                 if sample_path else "seeded noise",
        "sample": sample_path, "verified_sha256": verified,
    }


def _measured_rows(rows: list[Row], results: dict[str, RowResult], skipped: list[Skip]) -> list[ReportRow]:
    measured = [r for r in rows if r.id in results]
    if not measured:
        why = "; ".join(f"{s['backend']} {s['variant']}: {s['reason']}" for s in skipped[:3])
        raise EdgeDistillError(f"no row could be measured ({why})")
    return [dict(_row_fields(r), **results[r.id]) for r in measured]


def _notes(rows: list[ReportRow], loads: list[Any], round_loads: dict[str, list[Any]],
           remotes: dict[str, dict[str, Any]]) -> list[str]:
    """What a reader should know before trusting the figures: a busy or drifting machine."""
    from edgedistill.bench.machine import usable_cpus

    notes = []
    for label, remote in remotes.items():
        load, cpus = (remote.get("load_average") or [0])[0], remote.get("usable_cpus") or 1
        if any(r.get("remote") == label for r in rows) and load > cpus:
            notes.append(f"{label} was busy when the run began (1-min load average {load:.1f} on {cpus} CPUs)")
    seen = [v for v in [(load or [0])[0] for load in loads] + sum(round_loads.values(), []) if v]
    busy = max(seen, default=0.0)
    if busy > usable_cpus():
        notes.append(f"the machine was busy (1-min load average up to {busy:.1f} on {usable_cpus()} usable CPUs): "
                     "absolute figures are inflated, torch's OpenMP threads more than the others; "
                     "compare the ratios of this run only, and rerun on a quiet machine before acting on them")
    drifting = sorted({r["id"] for r in rows for s in r["batches"].values()
                       if s.get("round_spread") is not None and s["round_spread"] > 0.5})
    if drifting:
        notes.append(f"round medians drifted by more than 50% for {', '.join(drifting)} (see round_p50_ms): "
                     "the machine's speed changed during the run")
    return notes


def _row_fields(row: Row) -> ReportRow:
    return {"id": row.id, "label": row.label, "backend": row.backend, "engine": row.engine, "variant": row.variant,
            "precision": row.precision, "inference_precision": row.inference_precision, "threads": row.threads,
            "device": row.device, "file": os.path.basename(row.model), "size_bytes": row.size_bytes,
            "knn_top1": row.knn_top1, "knn_delta": row.knn_delta, "remote": row.remote}
