"""``bench --device ssh://...`` against a real sshd on 127.0.0.1 that the tests start themselves
(skipped with the reason when sshd is absent): an alias of a test-owned ssh config, a device
Python that is a venv with numpy and onnxruntime only (no edgedistill, no torch), the device's
home and temporary directory test-owned folders (sshd's SetEnv) that must be empty afterwards;
the failures provoked for real (a closed port, a wrong key, a changed host key, a device Python
without onnxruntime, SIGTERM and Ctrl-C mid-run). No timed assertions."""

from __future__ import annotations

import getpass
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from edgedistill.errors import EdgeDistillError
from test_reliability import mount_tmpfs, one_line_error, wait_for  # noqa: F401 (mount_tmpfs: a fixture)

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)),
                                    None)
pytestmark = pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="the OpenSSH client (ssh, ssh-keygen) is not installed")
needs_sshd = pytest.mark.skipif(SSHD is None, reason="sshd is not installed (apt-get install openssh-server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


def device_python(root: Path, packages: list[str]) -> Path:
    """A venv of this Python whose only packages are ``packages`` (linked from this environment,
    with their metadata: no download): what a user installs on a board with pip."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    site = next((root / "lib").glob("python3*/site-packages"))
    for package in packages:
        dist = importlib.metadata.distribution(package)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not top.startswith("__pycache__") and not (site / top).exists():
                (site / top).symlink_to(source)
    return root / "bin" / "python"


def _old_python() -> str | None:
    """A Python older than 3.8 on this machine (a system python2, a pyenv version), if any."""
    found = sorted(str(p) for p in Path("~/.pyenv/versions").expanduser().glob("*/bin/python")
                   if p.parent.parent.name.startswith(("2.", "3.6", "3.7")))
    found += [shutil.which(n) for n in ("python2", "python2.7", "python3.7", "python3.6")]
    return next((p for p in found if p and "/shims/" not in p), None)  # a pyenv shim may lead nowhere


class Loopback:
    """An sshd on 127.0.0.1 (this user, key login only) and an ssh config naming it ``device``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home, self.tmp = root / "device_home", root / "device_tmp"
        self.home.mkdir()
        self.tmp.mkdir()
        self.host_key, self.key, self.wrong_key = (_keygen(root / n) for n in ("host_key", "client_key", "wrong_key"))
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        self.port = _free_port()
        (root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}", f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            f"SetEnv HOME={self.home} TMPDIR={self.tmp}", "LogLevel ERROR", ""]))
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(root / "sshd.log", "wb"))
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()[-500:]}")
                time.sleep(0.1)
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {(root / 'host_key.pub').read_text()}")
        self.config = root / "ssh_config"
        self.config.write_text(self.alias("board", self.key))

    def alias(self, name: str, key: Path, known_hosts: Path | None = None) -> str:
        return (f"Host {name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {getpass.getuser()}\n"
                f"  IdentityFile {key}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
                f"  UserKnownHostsFile {known_hosts or self.root / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
                f"  LogLevel ERROR\n")

    def left_over(self) -> list[str]:
        """What a run left in the device's home and temporary directory."""
        return sorted(str(p) for folder in (self.home, self.tmp) for p in folder.rglob("*"))

    def sessions(self) -> list[int]:
        """The sshd processes serving connections now (children of the listener)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.append(int(stat.parent.name))
        return pids

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    if SSHD is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server)")
    server = Loopback(tmp_path_factory.mktemp("ssh"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def bench_bundle(tiny_bundle) -> Path:
    return Path(tiny_bundle["bundle"])


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    return device_python(tmp_path_factory.mktemp("device") / "venv", ["numpy", "onnxruntime"])


BENCH = ("bench", "--batch", "1", "--seconds", "0.5", "--rounds", "2", "--no-progress")


def bench_on(loopback: Loopback, device: str, python: Path | str, *args: str, tmp: Path,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """``edgedistill bench`` on ``device`` with the loopback's ssh config; this machine's
    temporary directory is ``tmp`` (the control sockets must not outlive the run)."""
    return run_cli(*BENCH, "--device", device, "--ssh-config", str(loopback.config), "--remote-python", str(python),
                   *args, env={"TMPDIR": str(tmp)}, timeout=timeout)


@needs_sshd
def test_rows_measured_on_the_device(loopback, device_venv, bench_bundle, tmp_path):
    """An ssh config alias and a device venv with numpy and onnxruntime only: the ONNX Runtime
    FP32 and INT8 rows come back with the device's p50, the report names the device and its arch,
    OpenVINO (not installed there) is skipped with the exact pip line, and nothing is left in
    the device's home or temporary directory, nor here."""
    import platform

    here = tmp_path / "tmp"
    here.mkdir()
    out = tmp_path / "report.json"
    (loopback.home / "ort").symlink_to(device_venv.parent.parent)  # ~/ort/bin/python: the device's home
    run = bench_on(loopback, "ssh://board", "~/ort/bin/python", "--bundle", str(bench_bundle),
                   "--backends", "onnxruntime,openvino", "--precision", "fp32,int8", "--json", str(out),
                   "--csv", str(tmp_path / "report.csv"), "--plot", str(tmp_path / "report.png"), tmp=here)
    (loopback.home / "ort").unlink()
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert rows and all(r["remote"] == "board" and r["backend"] == "onnxruntime" for r in rows)
    assert {r["precision"] for r in rows} == {"fp32", "int8"}
    assert all(r["batches"]["1"]["p50_ms"] > 0 for r in rows)
    device = report["remotes"]["board"]
    assert device["arch"] == platform.machine() and device["python_path"] == "~/ort/bin/python"
    assert set(device["versions"]) == {"numpy", "onnxruntime"}  # no edgedistill, no torch there
    assert f"device board: {platform.machine()}" in run.stdout and "onnxruntime (board)" in run.stdout
    assert "p50 spread across rounds" in run.stdout  # the table says how steady the rounds were
    pip = "~/ort/bin/python -m pip install openvino"
    assert any(s["backend"] == "openvino" and pip in s["reason"] for s in report["skipped"]), report["skipped"]
    assert pip in run.stdout
    lines = (tmp_path / "report.csv").read_text().splitlines()
    assert "remote" in lines[0].split(",") and all(",board," in ln for ln in lines[1:])
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert loopback.left_over() == [] and list(here.iterdir()) == []


def test_closed_port_is_one_line(bench_bundle, tmp_path):
    """Nothing listens on port 1: one line, exit 2, no traceback (ssh's connect timeout bounds it)."""
    run = run_cli("bench", "--bundle", str(bench_bundle), "--device", "ssh://root@127.0.0.1:1", "--no-progress",
                  env={"TMPDIR": str(tmp_path)}, timeout=60)
    assert "cannot reach ssh://root@127.0.0.1:1" in one_line_error(run) and "Connection refused" in run.stderr
    assert list(tmp_path.iterdir()) == []


@needs_sshd
@pytest.mark.parametrize("case", ["wrong key", "changed host key", "unknown host key", "no python", "old python",
                                  "no onnxruntime", "disk full"])
def test_device_failures_are_one_line(loopback, device_venv, bench_bundle, tmp_path, case, request, monkeypatch):
    """Each provoked for real against the loopback sshd: a key it does not accept, a host key that
    is not the one in known_hosts (or none there), a device Python path that does not exist, a
    Python older than 3.8 (where one is installed), a device Python with numpy but no runtime
    (no row can run: the pip lines say what to install), a device whose temporary directory is a 1 MB file system (a tmpfs: skipped without root)."""
    from edgedistill.bench.runner import run_bench

    config = tmp_path / "ssh_config"
    python: Path | str = device_venv
    if case == "disk full":
        request.getfixturevalue("mount_tmpfs")(loopback.tmp, size="1m")
    if case == "wrong key":
        config.write_text(loopback.alias("board", loopback.wrong_key))
    elif case in ("changed host key", "unknown host key"):
        known = tmp_path / "known_hosts"
        other = _keygen(tmp_path / "other_host_key").with_suffix(".pub")
        known.write_text(f"[127.0.0.1]:{loopback.port} {other.read_text()}" if case == "changed host key" else "")
        config.write_text(loopback.alias("board", loopback.key, known))
    else:
        config.write_text(loopback.alias("board", loopback.key))
        if case == "no python":
            python = "/nonexistent/bin/python3"
        elif case == "old python":
            python = _old_python() or pytest.skip("no Python older than 3.8 is installed here")
        elif case == "no onnxruntime":
            python = device_python(tmp_path / "numpy_only", ["numpy"])
    # in this process (the CLI's one-line rendering of these errors: test_closed_port_is_one_line)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(EdgeDistillError) as error:
        run_bench(bench_bundle, device="ssh://board", ssh_config=str(config), remote_python=str(python),
                  batches=[1], seconds=0.5, rounds=2, progress=False)
    line = str(error.value)
    assert "\n" not in line
    expected = {"wrong key": "ssh://board refused the login", "changed host key": "does not match the one in known_hosts",
                "unknown host key": "the host key of ssh://board is not known",
                "no python": "no Python at '/nonexistent/bin/python3' on ssh://board",
                "old python": "the bench worker needs >= 3.8",
                "no onnxruntime": f"ONNX Runtime is not installed on ssh://board: {python} -m pip install onnxruntime",
                "disk full": f"not enough space on ssh://board: {loopback.tmp} has 1.0 MiB free"}
    assert expected[case] in line, line
    assert loopback.left_over() == [] and not list(tmp_path.glob("edgedistill-ssh-*"))


@needs_sshd
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "connection lost"])
def test_interrupted_run_removes_the_device_folder(loopback, device_venv, bench_bundle, tmp_path, how):
    """Stopped mid-run (SIGTERM: 143, Ctrl-C: 130) or cut off (the device's sshd session killed:
    2, one line): the temporary directory on the device is removed all the same."""
    here = tmp_path / "tmp"
    here.mkdir()
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "edgedistill", "bench", "--batch", "1", "--seconds", "60",
                                 "--rounds", "2", "--no-progress", "--bundle", str(bench_bundle), "--backends",
                                 "onnxruntime", "--precision", "fp32", "--device", "ssh://board", "--ssh-config",
                                 str(loopback.config), "--remote-python", str(device_venv)],
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True, cwd=REPO,
                                env={**os.environ, "TMPDIR": str(here), "OMP_NUM_THREADS": "1"},
                                # a suite started in the background by a non-interactive shell inherits
                                # SIGINT ignored, and Python keeps it ignored: Ctrl-C's default is restored
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # the files are on the device once this line is printed
    wait_for(lambda: "benchmarking" in log.read_text() or proc.poll() is not None, "the files copied")
    time.sleep(1)  # the workers start there
    assert proc.poll() is None, log.read_text()
    assert loopback.left_over()
    if how == "connection lost":
        for pid in loopback.sessions():
            os.kill(pid, signal.SIGTERM)
    else:
        proc.send_signal(getattr(signal, how))
    proc.wait(timeout=60)
    err = log.read_text()
    if how == "connection lost":
        assert proc.returncode == 2 and "lost the connection to ssh://board mid-run" in err, err
        assert "was removed" in err and "Traceback" not in err
    else:
        assert proc.returncode == {"SIGTERM": 143, "SIGINT": 130}[how], err
    assert loopback.left_over() == [] and list(here.iterdir()) == []


@needs_sshd
@pytest.mark.slow  # about 25 s: a pipeline and eight rows
def test_pipeline_reports_host_and_device_rows(loopback, device_venv, bench_bundle, tmp_path):
    """``bench.devices: [cpu, ssh://board]``: one pipeline bench stage measures this machine's rows
    and the device's, and its report lists them side by side (the device's marked @board)."""
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": bench_bundle.name, "threads": 1},
        "bench": {"backends": ["onnxruntime"], "threads": [1], "batch": [1], "runs": 4, "warmup": 1,
                  "devices": ["cpu", "ssh://board"], "remote_python": str(device_venv)},
        "pipeline": {"stages": ["bench"], "edge": "off"}}))
    run = run_cli("pipeline", str(config), "--runs", str(tmp_path / "runs"), "--export-root", str(bench_bundle.parent),
                  cwd=tmp_path, env={"EDGEDISTILL_SSH_CONFIG": str(loopback.config), "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    bench = json.loads((tmp_path / "runs" / bench_bundle.name / "bench.json").read_text())
    where = {(r["remote"], r["variant"]) for r in bench["rows"]}
    assert {(None, "onnx_fp32"), ("board", "onnx_fp32"), (None, "onnx_int8"), ("board", "onnx_int8")} <= where
    report = (tmp_path / "runs" / bench_bundle.name / "report" / "README.md").read_text()
    assert "| onnxruntime | onnx_int8 |" in report and "| onnxruntime @board | onnx_int8 |" in report
    assert loopback.left_over() == []
