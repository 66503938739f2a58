"""Nothing clobbered, nothing lost: user-named outputs written in place (devices, pipes,
symlinks, ``-``), exports that never delete what they did not create (a lock, folders that
appear meanwhile, leftovers of killed exports, SIGTERM), full and read-only disks as one line,
and no usage counters in ``$HOME``. Real subprocesses, real files, real signals and, where this
machine allows mounting (root), real tmpfs file systems; the checks that need a mount skip
without one, and the space checks are also tested with the free space the file system reports
patched, which needs nothing."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, tiny_overrides
from edgedistill.errors import EdgeDistillError


def one_line_error(run: subprocess.CompletedProcess, code: int = 2) -> str:
    assert run.returncode == code, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    return lines[0]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def unlocked(out: Path, name: str = "v") -> list[str]:
    """``names(out)`` once the export's lock is free: its empty lock file stays (every writer
    locks that one inode), and a new writer must get the lock at once."""
    from edgedistill.utils import directory_lock

    with directory_lock(out / name):
        pass
    left = names(out)
    assert f".{name}.lock" in left and (out / f".{name}.lock").stat().st_size == 0
    return [n for n in left if n != f".{name}.lock"]


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    """Poll until ``predicate()`` (a synchronisation point with a subprocess, not a timing check)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


class FifoReader(threading.Thread):
    """Reads a named pipe to its end, as the other side of a shell pipeline would."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.data = path, b""

    def run(self) -> None:
        with open(self.path, "rb") as handle:
            self.data = handle.read()


@pytest.fixture
def mount_tmpfs():
    """Mount a small tmpfs (real ENOSPC / EROFS); skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(path: Path, size: str = "3m", read_only: bool = False) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        if shutil.which("mount") is None:
            pytest.skip("needs the mount command (util-linux) to mount a tmpfs")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if result.returncode != 0:
            pytest.skip("mounting a tmpfs needs root (or CAP_SYS_ADMIN): run as root or in a privileged container")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only_folder(tmp_path: Path, mount_tmpfs) -> Path:
    """A folder no write reaches: a read-only tmpfs as root (root ignores permissions), else a
    folder without write permission."""
    folder = tmp_path / "read_only"
    if os.geteuid() == 0:
        return mount_tmpfs(folder, read_only=True)
    folder.mkdir()
    folder.chmod(0o555)
    return folder


# ----------------------------------------------------------------------------- user-named outputs


def test_write_output_keeps_what_is_at_the_path(tmp_path, capfdbinary):
    from edgedistill.utils import write_output

    # a regular file: replaced whole, its permissions kept; a new file gets the umask's, not 0600
    existing = tmp_path / "report.json"
    existing.write_text("old")
    existing.chmod(0o644)
    write_output(existing, "new")
    assert existing.read_text() == "new" and stat.S_IMODE(existing.stat().st_mode) == 0o644
    umask = os.umask(0o022)
    try:
        write_output(tmp_path / "fresh.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o644

    # a symlink keeps pointing where it did; its target gets the content
    target = tmp_path / "elsewhere" / "real.csv"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    write_output(link, "a,b\n")
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_text() == "a,b\n"

    # a named pipe is written into, and stays a pipe (the reader gets the data, not a hang)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    write_output(fifo, b"through the pipe")
    reader.join(timeout=30)
    assert reader.data == b"through the pipe" and stat.S_ISFIFO(fifo.stat().st_mode)

    # "-" is standard output
    write_output("-", '{"to": "stdout"}\n')
    assert capfdbinary.readouterr().out == b'{"to": "stdout"}\n'
    assert not (Path.cwd() / "-").exists()

    # a write that fails is one line naming the path
    with pytest.raises(EdgeDistillError, match="no space left on the device holding /dev/full"):
        write_output("/dev/full", "x" * 100)
    with pytest.raises(EdgeDistillError, match="is a directory"):
        write_output(tmp_path, "x")


def test_a_device_stays_a_device(tmp_path):
    """A mknod copy of /dev/null (what `--json /dev/stdout` is as root: a device) is written,
    never replaced by a regular file (bench's --json writer, as the CLI calls it)."""
    from edgedistill.bench.report import write_json

    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    before = null.stat()
    write_json({"rows": []}, null)
    after = null.stat()
    assert stat.S_ISCHR(after.st_mode) and after.st_mode == before.st_mode and after.st_rdev == before.st_rdev


def test_bench_outputs_stdout_pipes_and_links_without_home_counters(tiny_bundle, tmp_path):
    """`bench --json -` prints JSON on stdout (the table moves to stderr, unclipped in a log),
    `--csv` through a symlink and `--plot` into a named pipe keep them what they are, and the
    run leaves no OpenVINO / ONNX Runtime usage counters in $HOME."""
    import matplotlib

    home = tmp_path / "home"
    home.mkdir()
    target = tmp_path / "kept" / "report.csv"
    target.parent.mkdir()
    link = tmp_path / "report.csv"
    link.symlink_to(target)
    fifo = tmp_path / "plot.png"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    # ORT_DISABLE_TELEMETRY=0 as a user might have it: the CLI turns the counter off regardless
    env = {"HOME": str(home), "MPLCONFIGDIR": matplotlib.get_configdir(), "COLUMNS": "", "ORT_DISABLE_TELEMETRY": "0"}
    run = run_cli("bench", "--bundle", tiny_bundle["bundle"], "--backends", "onnxruntime,openvino",
                  "--precision", "fp32", "--threads", "1", "--batch", "1", "--runs", "2", "--rounds", "1",
                  "--warmup", "0", "--no-progress", "--json", "-", "--csv", str(link), "--plot", str(fifo),
                  env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    reader.join(timeout=60)

    report = json.loads(run.stdout)  # nothing but the JSON on stdout
    assert {r["backend"] for r in report["rows"]} == {"onnxruntime", "openvino"}
    assert not (tmp_path / "-").exists()
    assert link.is_symlink() and target.read_text().startswith("backend,variant")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and reader.data.startswith(b"\x89PNG")
    # the table on stderr (not a terminal here) is wide enough for every cell
    table = [line for line in run.stderr.splitlines() if "│" in line]
    assert any("onnxruntime" in line and "onnx_fp32" in line for line in table), run.stderr[-3000:]
    assert not any("…" in line for line in table), run.stderr[-3000:]
    # OpenVINO writes ~/intel/stats on import, ONNX Runtime ~/.cache/Microsoft: the CLI stops both
    assert not (home / "intel").exists() and not (home / ".cache" / "Microsoft").exists(), names(home)


# ----------------------------------------------------------------------------- export


def export_args(student_run: Path, labeled: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--model", str(student_run), "--out", str(out), "--data", str(labeled),
            "--formats", "onnx,openvino", "--no-int8", "--threads", "1", "--name", "v", *extra]


def test_a_second_export_of_the_same_name_is_refused(student_run, labeled, tmp_path):
    """While one export holds the bundle's lock, another fails at once and touches nothing
    (before: both printed "bundle written" and the later one silently replaced the other)."""
    from edgedistill.utils import directory_lock

    out = tmp_path / "export"
    with directory_lock(out / "v"):  # what a running export holds
        run = run_cli(*export_args(student_run, labeled, out))
        assert f"another process (pid {os.getpid()}) is writing {out / 'v'}" in one_line_error(run)
        assert names(out) == [".v.lock"]
    assert unlocked(out) == []


def test_export_keeps_a_folder_that_appears_meanwhile(student_run, labeled, tmp_path, monkeypatch):
    """A folder (with a user's file) created at the destination during an export is left as it
    is: the export fails naming it, instead of deleting it."""
    import edgedistill.export.bundle as bundle
    from edgedistill.export import export_bundle

    out = tmp_path / "export"
    important = out / "v" / "IMPORTANT.txt"
    original = bundle.build_manifest

    def someone_writes_there(*args, **kwargs):
        important.parent.mkdir(parents=True)
        important.write_text("mine")
        return original(*args, **kwargs)

    monkeypatch.setattr(bundle, "build_manifest", someone_writes_there)
    with pytest.raises(EdgeDistillError, match=r"appeared while it was being written.*--force"):
        export_bundle(student_run, out_root=out, name="v", formats="onnx", int8=False, data=str(labeled),
                      threads=1, progress=False)
    assert important.read_text() == "mine" and names(out / "v") == ["IMPORTANT.txt"]
    assert unlocked(out) == ["v"]  # no partial folder, no lock held

    # --force replaces a bundle, never a folder of something else
    with pytest.raises(EdgeDistillError, match="not a bundle"):
        export_bundle(student_run, out_root=out, name="v", formats="onnx", int8=False, data=str(labeled),
                      threads=1, progress=False, force=True)
    assert important.read_text() == "mine"


def start_export(student_run: Path, labeled: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgedistill", *export_args(student_run, labeled, out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def partials(out: Path) -> list[str]:
    return [n for n in names(out) if n.endswith(".partial")]


def test_sigterm_export_cleans_up_and_says_so(student_run, labeled, tmp_path):
    out = tmp_path / "export"
    proc = start_export(student_run, labeled, out)
    try:
        wait_for(lambda: partials(out) or proc.poll() is not None, "the export's work folder")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, stderr[-2000:])
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: terminated (SIGTERM)"] and "Traceback" not in stderr, stderr[-2000:]
    assert unlocked(out) == []  # no bundle, no partial folder, no lock held


def test_leftovers_of_a_killed_export_are_removed_by_the_next(student_run, labeled, tmp_path):
    out = tmp_path / "export"
    proc = start_export(student_run, labeled, out)
    try:
        wait_for(lambda: partials(out) or proc.poll() is not None, "the export's work folder")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the export ended before it could be killed"
    (left,) = partials(out)  # SIGKILL cannot be handled: its work folder stays...
    from rich.console import Console

    from edgedistill.export import export_bundle

    log = Console(file=io.StringIO(), width=200)
    export_bundle(student_run, out_root=out, name="v", formats="onnx", int8=False, data=str(labeled), threads=1,
                  console=log)
    assert f"removed what an interrupted export left: {left}" in log.file.getvalue()
    assert unlocked(out) == ["v"]  # ...until the next export of that name (the killed one's lock was dropped)


# ----------------------------------------------------------------------------- full and read-only disks


def test_export_to_a_full_disk_is_one_line(student_run, labeled, tmp_path, mount_tmpfs):
    small = mount_tmpfs(tmp_path / "small", size="3m")
    run = run_cli(*export_args(student_run, labeled, small))
    error = one_line_error(run)
    assert "not enough disk space for the bundle" in error and str(small) in error
    assert unlocked(small) == []


def test_export_space_check_runs_before_any_work(student_run, labeled, tmp_path, monkeypatch):
    """The same check without a mount: the file system reports 2 MB free."""
    import edgedistill.export.bundle as bundle
    from edgedistill.export import export_bundle

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2 << 20))
    monkeypatch.setattr(bundle, "build_variants", lambda *a, **k: pytest.fail("the export started"))
    with pytest.raises(EdgeDistillError, match=r"not enough disk space for the bundle .* 2\.0 MiB free"):
        export_bundle(student_run, out_root=tmp_path / "export", name="v", formats="onnx", int8=False,
                      data=str(labeled), threads=1, progress=False)


def test_distill_checks_space_before_the_first_step(tiny_folder, tmp_path, monkeypatch):
    """Before: a full epoch, then "[enforce fail at inline_container.cc:672] unexpected pos"."""
    import edgedistill.train.loop as loop
    from edgedistill.config import build_config
    from edgedistill.train.stages import distill

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1 << 20))
    steps = []
    monkeypatch.setattr(loop, "_schedule", lambda *a, **k: steps.append(1) or 0.0)
    with pytest.raises(EdgeDistillError, match="not enough disk space for the checkpoints"):
        distill(build_config(None, tiny_overrides(tiny_folder)), tmp_path / "run")
    assert steps == []


def test_checkpoint_on_a_full_disk_is_one_line(tiny_folder, tmp_path, mount_tmpfs):
    """torch.save on a full disk, written for real: one line naming the checkpoint."""
    import torch

    from edgedistill.train.checkpoint import save_checkpoint
    from edgedistill.train.loop import Task

    small = mount_tmpfs(tmp_path / "small", size="1m")
    model = torch.nn.Linear(512, 512)  # 1 MB of weights, 3 MB with AdamW's moments
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 512)).sum().backward()
    optimizer.step()
    with pytest.raises(EdgeDistillError, match=r"cannot save the checkpoint: no space left on the device holding"):
        save_checkpoint(small / "checkpoint.pt", model, optimizer, Task(), 1, 1, 1, torch.device("cpu"))
    assert names(small) == []


def test_read_only_outputs_fail_before_the_work(student_run, tiny_bundle, tmp_path, mount_tmpfs):
    """Each command checks what it will write before it starts: the model below does not even
    exist, and the error is still about the output."""
    locked = read_only_folder(tmp_path, mount_tmpfs)
    run = run_cli("eval", "knn", "--model", str(tmp_path / "no_model"), "--data", "digits",
                  "--json", str(locked / "knn.json"))
    error = one_line_error(run)
    assert "--json" in error and str(locked / "knn.json") in error
    assert "read-only file system" in error or "permission denied" in error

    run = run_cli("export", "--model", str(student_run), "--out", str(locked), "--name", "v")
    error = one_line_error(run)
    assert error.startswith("error: --out:") and ("read-only" in error or "permission denied" in error), error

    run = run_cli("distill", "--out", str(locked / "run"), "--data", "digits", "--set", "data.num_workers=0")
    error = one_line_error(run)
    assert str(locked / "run") in error and ("read-only" in error or "permission denied" in error), error

    run = run_cli("bench", "--bundle", tiny_bundle["bundle"], "--backends", "onnxruntime", "--threads", "1",
                  "--batch", "1", "--runs", "1", "--csv", str(locked / "b.csv"), "--no-progress")
    assert "--csv" in one_line_error(run)
    assert names(locked) == []
