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


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


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
        "onnx,openvino", "--no-int8", "--threads", "1", "--name", "v")
    files, folders = 0o666 & ~umask, 0o777 & ~umask
    for root in (tmp_path / "runs", tmp_path / "export"):
        found = modes(root)
        wrong = {name: oct(mode) for name, mode in found.items()
                 if mode != (folders if (root / name).is_dir() else files)}
        assert not wrong, wrong
    assert {"student.safetensors", "projector.safetensors", "checkpoint.pt"} <= set(modes(run))
    assert "v" in modes(tmp_path / "export")
