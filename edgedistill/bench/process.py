"""The runner's side of the worker processes: starting one per row (``runtime.worker`` with
the row's engine, or the command its runtime gives; on an SSH device, the command that device
gives), their JSON-lines protocol, loading every row of a thread count one after another, then
interleaving their timed runs round by round (see ``bench.runner`` for why)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from edgedistill.bench.records import RowResult, RunSlice, Skip
from edgedistill.bench.stats import summarize_times
from edgedistill.runtime.rows import Row
from edgedistill.runtime.manifest import Manifest
from edgedistill.cleanup import start_child

__all__ = ["measure_group", "worker_spec", "SETTLE_SECONDS", "TORCH_ENGINE"]

SETTLE_SECONDS = 0.05
TORCH_ENGINE = "edgedistill.bench.torch_engine"  # the baseline's engine (it needs edgedistill and torch)


class _WorkerDied(Exception):
    pass


class Device(Protocol):
    """Another machine the rows of which run there (``bench.remote.RemoteDevice``)."""

    def worker(self, spec: dict[str, Any], threads: int) -> tuple[list[str], list[str]]:
        """The local command running a row's worker there, and the lines to send it first."""
        ...

    def check(self) -> None:
        """Raise a one-line EdgeDistillError when the device cannot be reached any more."""
        ...


class _Worker:
    """A worker process and a thread that reads its JSON replies into a queue."""

    def __init__(self, command: list[str], env: dict[str, str] | None, first: Sequence[str] = ()) -> None:
        self.stderr = tempfile.TemporaryFile()
        # a device's worker (an ssh client) runs in its own session: a Ctrl-C at the terminal
        # reaches the runner, which then closes it in order
        self.proc = start_child(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
                                text=True, bufsize=1, start_new_session=bool(first))
        self.replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        with contextlib.suppress(_WorkerDied):  # a worker that died at once says why in its first reply
            for line in first:
                self.send_line(line)

    @classmethod
    def start(cls, row: Row, spec: dict[str, Any], env: dict[str, str],
              devices: Mapping[str, Device]) -> "_Worker":
        """A row's worker: here (``runtime.worker``, or the command its runtime gives), or on
        the row's device."""
        from edgedistill.runtime import registry

        if row.remote is not None:
            command, first = devices[row.remote].worker(spec, row.threads)
            return cls(command, None, first)
        command = ([sys.executable, "-m", "edgedistill.runtime.worker", json.dumps(spec)] if spec["backend"] == "torch"
                   else registry.get(spec["backend"]).worker_command(spec, sys.executable))
        return cls(command, env)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.replies.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        self.replies.put(None)

    def stderr_tail(self, lines: int = 3) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise _WorkerDied(f"no reply within {timeout:.0f} s") from None
        if reply is None:
            self.proc.wait(timeout=10)
            raise _WorkerDied(f"the worker exited ({self.proc.returncode}): {self.stderr_tail() or 'no output'}")
        return reply

    def send(self, command: dict[str, Any]) -> None:
        self.send_line(json.dumps(command))

    def send_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _WorkerDied(f"the worker exited: {self.stderr_tail() or 'no output'}") from None

    def close(self, timeout: float = 30) -> dict[str, Any] | None:
        reply = None
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                reply = self.receive(timeout)
                self.proc.wait(timeout=timeout)
            except (_WorkerDied, subprocess.TimeoutExpired):
                self.kill()
        self.stderr.close()
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _worker_env(threads: int, scratch: Path) -> dict[str, str]:
    """The caller's environment (PYTHONPATH and all: a worker sees what the caller sees),
    with OpenMP/MKL pools sized like the row, this package importable, and temporary files
    (a driven app's profile, multiprocessing's folders) in ``scratch``, which the runner removes."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["TMPDIR"] = str(scratch)
    env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, root])
    return env


def worker_spec(row: Row, manifest: Manifest, opts: Any, input_file: str | None) -> dict[str, Any]:
    """What a row's worker is told (``runtime.worker``'s SPEC); ``input_file``: the bundle's
    sample, preprocessed, as a .npy (None: the worker times seeded noise)."""
    from edgedistill.runtime import registry

    engine = TORCH_ENGINE if row.backend == "torch" else registry.get(row.backend).engine
    entry = manifest.variants.get(row.variant) if row.backend != "torch" else None
    return {"engine": engine, "backend": row.backend, "model": row.model, "weights": row.weights,
            "precision": row.precision, "inference_precision": row.inference_precision, "threads": row.threads,
            "device": row.device, "batches": opts.batches,
            "input": {"name": manifest.input.name, "shape": manifest.input.shape[1:]},
            "input_file": input_file, "static_shapes": opts.static_shapes, "warmup": opts.warmup, "min_runs": 1,
            "call_batch": entry.batch if entry is not None else None, "mode": "rounds", **row.extra}


def _skip(row: Row, reason: str, unavailable: bool = False) -> Skip:
    skip: Skip = {"backend": row.backend, "variant": row.variant, "precision": row.precision, "threads": row.threads,
                  "device": row.device, "reason": reason, "unavailable": unavailable}
    if row.remote is not None:
        skip["remote"] = row.remote
    return skip


class _Group:
    """The workers of one thread count: loaded one at a time, then measured in rounds."""

    def __init__(self, group: list[Row], skipped: list[Skip], bar: Any, devices: Mapping[str, Device]) -> None:
        self.rows = {r.id: r for r in group}
        self.threads = group[0].threads if group else 1
        self.skipped, self.bar, self.devices = skipped, bar, devices
        self.workers: dict[str, _Worker] = {}
        self.ready: dict[str, dict[str, Any]] = {}
        self.times: dict[str, dict[int, list[list[float]]]] = {}
        # a batch size that failed on a row: the row keeps its other batches' figures
        self.failed: dict[str, dict[int, str]] = {}

    def load(self, manifest: Manifest, opts: Any, input_file: str | None, timeout: float, scratch: Path) -> None:
        env = _worker_env(self.threads, scratch)
        task = self.bar.add_task(f"loading ({self.threads} threads)", total=len(self.rows))
        for row in self.rows.values():
            self.bar.update(task, description=f"loading {row.label} {row.precision} ({self.threads} threads)")
            worker = _Worker.start(row, worker_spec(row, manifest, opts, input_file), env, self.devices)
            try:
                reply = worker.receive(timeout)
            except _WorkerDied as exc:
                self._reachable(row)
                reply = {"event": "error", "error": str(exc), "unavailable": False}
            if reply.get("event") != "ready":
                worker.close()
                self.skipped.append(_skip(row, reply.get("error", "no reply"), bool(reply.get("unavailable"))))
            else:
                self.workers[row.id], self.ready[row.id] = worker, reply
                failed = {int(b): why for b, why in (reply.get("failed_batches") or {}).items()}
                self.times[row.id] = {b: [] for b in opts.batches if b not in failed}
                if failed:
                    self.failed[row.id] = failed
            self.bar.advance(task)
        self.bar.update(task, description=f"loaded ({self.threads} threads)")

    def _run(self, row_id: str, batch: int, per_round: RunSlice, timeout: float) -> bool:
        """One slice of timed runs of one row at one batch size. A failure drops that batch size
        from the row (recorded); the figures of its other batch sizes stay. A worker that died
        takes the rest of the row's rounds with it."""
        worker = self.workers[row_id]
        # let the previous row's spinning worker threads (OpenMP, TBB, ORT) go idle first
        time.sleep(SETTLE_SECONDS)
        died = False
        try:
            worker.send({"cmd": "run", "batch": batch, "rewarm": 1, **per_round})
            reply = worker.receive(timeout)
        except _WorkerDied as exc:
            self._reachable(self.rows[row_id])
            reply, died = {"event": "error", "error": str(exc)}, True
        if reply.get("event") == "times":
            self.times[row_id][batch].append(reply["ms"])
            return True
        self.failed.setdefault(row_id, {})[batch] = str(reply.get("error"))
        self.times[row_id].pop(batch, None)
        if died or not self.times[row_id]:
            self.workers.pop(row_id).kill()
        if not any(self.times[row_id].values()) and row_id not in self.workers:
            self.skipped.append(_skip(self.rows[row_id], f"failed while measuring: {reply.get('error')}"))
        return False

    def _reachable(self, row: Row) -> None:
        """A worker died: when it ran on a device that cannot be reached any more, that ends the run."""
        if row.remote is not None:
            self.devices[row.remote].check()

    def measure(self, opts: Any, timeout: float, round_loads: list[float | None]) -> None:
        """Rounds of every batch size of every live row, the row order rotated each round;
        ``round_loads`` gets the 1-minute load average at the start of every round."""
        from edgedistill.bench.machine import load_average

        live = list(self.workers)
        task = self.bar.add_task(f"measuring ({self.threads} threads)",
                                 total=opts.rounds * len(opts.batches) * len(live))
        for r in range(opts.rounds):
            round_loads.append((load_average() or [None])[0])
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for batch in opts.batches:
                for row_id in [i for i in order if i in self.workers and batch in self.times[i]]:
                    self.bar.update(task, description=f"round {r + 1}/{opts.rounds}, batch {batch}: {row_id}")
                    if self._run(row_id, batch, opts.per_round, timeout):
                        self.bar.advance(task)
        self.bar.update(task, description=f"measured ({self.threads} threads)")

    def close(self) -> dict[str, RowResult]:
        """Stop every worker; the figures of each row that lasted to the end."""
        closing = {row_id: w.close() for row_id, w in self.workers.items()}
        for w in self.workers.values():
            w.kill()
        # rows whose worker died mid-measurement keep the rounds they finished
        ended = sorted(r for r in self.times if r not in self.workers and any(self.times[r].values()))
        results = {}
        for row_id in [*self.workers, *ended]:
            results[row_id] = _row_result(self.ready[row_id], closing.get(row_id) or {}, self.times[row_id])
            if row_id in self.failed:
                results[row_id]["failed_batches"] = {str(b): why for b, why in self.failed[row_id].items()}
        return results


def _row_result(ready: dict[str, Any], final: dict[str, Any], times: dict[int, list[list[float]]]) -> RowResult:
    return {
        "import_seconds": _r(ready.get("import_seconds")),
        "load_seconds": _r(ready.get("load_seconds")),
        "load_seconds_per_batch": ready.get("load_seconds_per_batch"),
        "first_run_ms": _r(ready.get("first_run_ms")),
        "cold_start_seconds": _r((ready.get("import_seconds") or 0) + (ready.get("load_seconds") or 0)
                                 + (ready.get("first_run_ms") or 0) / 1000),
        "rss_after_import_mb": ready.get("rss_after_import_mb"),
        "peak_rss_mb": ready.get("peak_rss_mb"),
        "peak_rss_all_mb": final.get("peak_rss_all_mb", ready.get("peak_rss_all_mb")),
        "output_shape": ready.get("output_shape"),
        "cold_start": ready.get("cold_start"),  # in parts, where the engine tells them
        "settings": ready.get("settings"),
        "batches": {str(b): summarize_times(t, b) for b, t in times.items() if t},
    }


def measure_group(group: list[Row], results: dict[str, RowResult], skipped: list[Skip], *,
                  manifest: Manifest, opts: Any, input_file: str | None, bar: Any, load_timeout: float,
                  run_timeout: float, round_loads: list[float | None], scratch: Path,
                  devices: Mapping[str, Device] | None = None) -> None:
    """Load every row of one thread count (one at a time), then interleave their timed runs;
    the figures go into ``results`` by row id, failures into ``skipped``; the workers' temporary
    files go into ``scratch``. ``devices``: the SSH devices of the rows that run on one, by label."""
    workers = _Group(group, skipped, bar, devices or {})
    try:
        workers.load(manifest, opts, input_file, load_timeout, scratch)
        workers.measure(opts, run_timeout, round_loads)
    except KeyboardInterrupt:  # Ctrl-C reaches a device's workers only through us: stop them now, mid-slice
        for worker in workers.workers.values():
            worker.kill()
        raise
    finally:
        results.update(workers.close())


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


