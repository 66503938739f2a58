"""Processes and their leftovers: SIGTERM to ``bench`` ends every process it started (native
workers; the browser's page server, driver and Chromium) and removes their temporary folders.
Real processes, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from test_reliability import wait_for


def _sigterm_bench(bundle: str, tmp_path: Path, device: str, backends: str, started: str) -> None:
    """Start ``bench``, wait until a process named ``started`` runs under it, SIGTERM it; then
    no process it started is left 2 s after it exited, and its temporary folder holds nothing."""
    import psutil

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bench = subprocess.Popen([sys.executable, "-m", "edgedistill", "bench", "--bundle", bundle, "--device", device,
                              "--backends", backends, "--threads", "1", "--batch", "1", "--runs", "100000",
                              "--rounds", "2", "--no-progress", "--no-verify"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"})
    parent = psutil.Process(bench.pid)

    def tree() -> dict[psutil.Process, str]:
        named = {}
        with contextlib.suppress(psutil.Error):
            for proc in parent.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    named[proc] = proc.name()
        return named

    before: dict[psutil.Process, str] = {}

    def running() -> bool:
        before.update(tree())
        return any(started in name for name in tree().values()) or bench.poll() is not None

    try:
        wait_for(running, f"a {started} process under bench", timeout=300)
        before.update(tree())
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM)", stderr
    time.sleep(2)
    left = [f"{p.pid} {name}" for p, name in before.items() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert any(started in name for name in before.values()) and not left, (before, left)
    assert not list(tmp.iterdir()), list(tmp.iterdir())  # before: Chromium's and playwright's folders, pymp-*


def test_sigterm_to_a_native_bench_ends_its_workers(tiny_bundle, tmp_path):
    """Before: the parent exited 143, its workers ran on for seconds."""
    _sigterm_bench(tiny_bundle["bundle"], tmp_path, "cpu", "onnxruntime,openvino", "python")


def test_sigterm_to_a_browser_bench_ends_the_browser_and_its_server(tmp_path, request):
    """Before: serve.py kept listening and Chromium ran on after the parent exited 143, its
    profile and /tmp/org.chromium.Chromium.* left behind."""
    from edgedistill.runtime.browser.page import browser_problem

    why = browser_problem()
    if why:
        pytest.skip(f"browser bench not run: {why} (.ci/install-deploy-deps.sh installs what it needs)")
    bundle = request.getfixturevalue("tiny_bundle")["bundle"]
    _sigterm_bench(bundle, tmp_path, "browser", "onnxruntime-web", "chrom")
