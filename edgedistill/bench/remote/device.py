"""A device reached over SSH (``bench --device ssh://...``): its Python checked and described,
its rows planned from what is installed there, the files they need copied into a temporary
folder there (each checked against its sha256 after the copy), the workers started there over
the multiplexed connection, and the folder removed at the end, on error, on Ctrl-C and on
SIGTERM. What runs on the device is ``agent.py`` (sent as source), ``runtime/worker.py`` and the
rows' engines: the standard library, numpy and the runtime, no edgedistill and no torch."""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import posixpath
import re
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any, Iterator

from edgedistill.bench.records import Skip
from edgedistill.bench.remote.ssh import SshConnection, SshError, SshTarget, parse_target
from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.rows import Row

__all__ = ["RemoteDevice", "open_device", "MIN_PYTHON", "DEFAULT_PYTHON"]

MIN_PYTHON = (3, 8)  # the worker's and the agent's grammar
DEFAULT_PYTHON = "python3"
PREFIX = "edgedistill-bench-"  # the device's temporary folder
TOO_OLD = "edgedistill-python-too-old"
AGENT = Path(__file__).with_name("agent.py")


def _bootstrap() -> str:
    """``python -c`` code for any Python, 2.7 included: refuse one older than MIN_PYTHON in a
    way it understands, then run the agent (base64: no quoting left for the device's shell)."""
    code = base64.b64encode(AGENT.read_bytes()).decode("ascii")
    need = ",".join(map(str, MIN_PYTHON))
    return (f"import base64,sys;v=sys.version_info;v>=({need}) or "
            f"(sys.stdout.write('{TOO_OLD} %d.%d.%d\\n'%tuple(v[:3])),sys.exit(3));"
            f"exec(base64.b64decode('{code}').decode('utf-8'))")


class RemoteDevice:
    """One SSH device for one benchmark (see :func:`open_device`)."""

    def __init__(self, target: SshTarget, python: str, connection: SshConnection) -> None:
        self.target, self.python, self.ssh = target, python, connection
        self.label = target.label
        self.info: dict[str, Any] = {}
        self.folder: str | None = None  # the temporary folder there, once the files are copied
        self._bundle = Path()  # the bundle they were copied from
        self._boot = _bootstrap()

    # ---------------------------------------------------------------- the agent

    def _agent(self, request: dict[str, Any], payload: bytes = b"", timeout: float = 120.0) -> dict[str, Any]:
        done = self.ssh.run([self.python, "-c", self._boot], data=(json.dumps(request) + "\n").encode() + payload,
                            timeout=timeout)
        return self._answer(done.returncode, done.stdout.decode("utf-8", "replace"),
                            done.stderr.decode("utf-8", "replace"))

    def _answer(self, code: int, out: str, err: str) -> dict[str, Any]:
        where = f"{self.target.url}"
        if code in (126, 127):
            said = (err.strip().splitlines() or ["not found"])[-1]
            raise EdgeDistillError(f"no Python at {self.python!r} on {where} ({said}): install Python >= "
                                   f"{'.'.join(map(str, MIN_PYTHON))} there or give --remote-python PATH")
        if code == 3 and out.startswith(TOO_OLD):
            found = out.split()[1] if len(out.split()) > 1 else "?"
            raise EdgeDistillError(f"the Python at {self.python!r} on {where} is {found}; the bench worker needs >= "
                                   f"{'.'.join(map(str, MIN_PYTHON))} (give --remote-python PATH)")
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if code != 0 or not lines:
            said = (err.strip().splitlines() or [f"exit status {code}"])[-1]
            raise EdgeDistillError(f"the Python at {self.python!r} on {where} failed: {said}")
        return json.loads(lines[-1])

    # ---------------------------------------------------------------- probe

    def probe(self) -> None:
        """What the device is and has: its Python, CPU, memory, temporary folder, and which
        runtimes (and numpy) are installed there."""
        from edgedistill.runtime import registry

        runnable = [r for r in registry.RUNTIMES if r.engine]
        self.info = self._agent({"cmd": "probe", "modules": ["numpy", *(r.module for r in runnable)],
                                 "packages": ["numpy", *(p for r in runnable for p in r.packages)]}, timeout=60)

    @property
    def numpy_missing(self) -> bool:
        return not self.info.get("modules", {}).get("numpy")

    def pip_line(self, package: str) -> str:
        return f"{self.python} -m pip install {package}"

    def describe(self) -> dict[str, Any]:
        """The device as the report names it: alias, arch, CPU, cores, OS, Python, versions."""
        from edgedistill.bench.machine import SIMD_FLAGS, cpu_model
        from edgedistill.utils import cpu_flags

        info = self.info
        text = info.get("cpuinfo")
        flags = cpu_flags(text) if text else set()
        os_name = info.get("os_name") or info.get("system")
        return {
            "label": self.label, "url": self.target.url, "arch": info.get("arch"),
            "cpu": (cpu_model(text) if text else None) or info.get("processor") or info.get("arch"),
            "simd": [f for f in SIMD_FLAGS if f in flags],
            "logical_cpus": info.get("logical_cpus"), "usable_cpus": info.get("usable_cpus"),
            "memory_gb": round(info["memory_bytes"] / 2**30, 1) if info.get("memory_bytes") else None,
            "os": f"{os_name} ({info.get('system')} {info.get('release')})" if info.get("os_name") else os_name,
            "python": info.get("python"), "python_path": self.python, "load_average": info.get("load_average"),
            "versions": {k: v for k, v in (info.get("versions") or {}).items() if v},
        }

    @property
    def native_bf16(self) -> bool:
        from edgedistill.utils import NATIVE_BF16_FLAGS, cpu_flags

        text = self.info.get("cpuinfo")
        return bool(text and cpu_flags(text) & NATIVE_BF16_FLAGS)

    # ---------------------------------------------------------------- rows

    def plan(self, manifest: Any, bundle_dir: Path, opts: Any) -> tuple[list[Row], list[Skip]]:
        """The rows this device can run (the runtimes with a Python worker that are installed
        there; the rest skipped with the exact pip line), at ``--threads`` or its usable CPUs."""
        from edgedistill.bench.plan import plan_rows
        from edgedistill.limits import check_count, check_batch_memory, image_memory
        from edgedistill.runtime import registry

        usable = int(self.info.get("usable_cpus") or 1)
        where = self.target.url
        threads = [check_count(t, "--threads", cpus=usable, where=where) for t in opts.threads] \
            if opts.threads_asked else [usable]
        runtimes = [r for r in registry.RUNTIMES if r.engine and not r.device and r.name in opts.backends]
        targets: dict[str, str] = {}
        reasons: dict[str, str] = {}
        modules = self.info.get("modules") or {}
        for runtime in runtimes:
            if self.numpy_missing:
                reasons[runtime.name] = f"numpy is not installed on {where}: {self.pip_line('numpy')}"
            elif modules.get(runtime.module):
                targets[runtime.name] = str(runtime.cpu_target)
            else:
                reasons[runtime.name] = (f"{runtime.label} is not installed on {where}: "
                                         f"{self.pip_line(runtime.packages[0])}")
        rows, skipped = plan_rows(manifest, bundle_dir, backends=[r.name for r in runtimes],
                                  precisions=opts.precisions, threads=threads, targets=targets, reasons=reasons,
                                  native_bf16=self.native_bf16)
        for row in rows:
            row.remote = self.label
        for skip in skipped:
            skip["remote"] = self.label
        if "torch" in opts.backends:
            skipped.append(Skip(backend="torch", variant="student", precision="fp32", remote=self.label,
                                reason=f"torch eager runs on this machine only, not on {where}"))
        if rows and self.info.get("available_bytes"):
            h, w = manifest.input.shape[2:4]
            loaded = max(sum(1 for r in rows if r.threads == t) for t in threads)
            check_batch_memory(max(opts.batches), image_memory(h, w), "--batch", copies=loaded,
                               available=self.info["available_bytes"], where=where)
        return rows, skipped

    # ---------------------------------------------------------------- files

    def upload(self, rows: list[Row], bundle_dir: Path, manifest: Any, input_file: str | None) -> None:
        """Copy the worker, the rows' engines, their model files and the input into a new
        temporary folder there, each checked against its sha256 there; point the rows at them."""
        from edgedistill.runtime import registry, worker
        from edgedistill.runtime.manifest import variant_files
        from edgedistill.utils import human_bytes, sha256_file

        files: dict[str, Path] = {"worker.py": Path(worker.__file__)}
        for name in dict.fromkeys(r.backend for r in rows):
            files[f"{_engine_module(name)}.py"] = Path(importlib.import_module(str(registry.get(name).engine)).__file__)
        if input_file:
            files["input.npy"] = Path(input_file)
        recorded: dict[str, str | None] = {}
        for variant in dict.fromkeys(r.variant for r in rows):
            for path, sha in variant_files(manifest, bundle_dir, variant):
                rel = "bundle/" + path.relative_to(bundle_dir).as_posix()
                files[rel], recorded[rel] = path, sha
        digests = {rel: (recorded.get(rel) or sha256_file(path)).lower() for rel, path in files.items()}
        total = sum(p.stat().st_size for p in files.values())
        free = self.info.get("tmp_free")
        if free is not None and free < total + (1 << 20):
            raise EdgeDistillError(f"not enough space on {self.target.url}: {self.info.get('tmp')} has "
                                   f"{human_bytes(free)} free, the bundle's files need {human_bytes(total)}")
        answer = self._stream({"cmd": "receive", "prefix": PREFIX, "bytes": total, "files": digests}, files)
        if "dir" not in answer:
            what = "not enough space" if answer.get("space") else "cannot copy the files"
            raise EdgeDistillError(f"{what} on {self.target.url}: {answer.get('error')}")
        self.folder, self._bundle = answer["dir"], bundle_dir

    def _stream(self, request: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
        """The request and a tar stream of ``files`` to the agent, written while it reads."""
        proc = subprocess.Popen(self.ssh.command([self.python, "-c", self._boot]), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        def feed() -> None:
            with contextlib.suppress(OSError):  # the agent stopped reading: its answer says why
                proc.stdin.write((json.dumps(request) + "\n").encode())
                with tarfile.open(fileobj=proc.stdin, mode="w|") as archive:
                    for rel, path in files.items():
                        archive.add(str(path), arcname=rel, recursive=False)
            with contextlib.suppress(OSError):
                proc.stdin.close()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        err = io.BytesIO()
        reader = threading.Thread(target=lambda: err.write(proc.stderr.read()), daemon=True)
        reader.start()
        out = proc.stdout.read()
        proc.wait()
        writer.join(timeout=5)
        reader.join(timeout=5)
        if proc.returncode == 255:
            raise SshError(self.ssh.lost() or f"the copy to {self.target.url} failed: "
                           f"{err.getvalue().decode('utf-8', 'replace').strip()}")
        return self._answer(proc.returncode, out.decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace"))

    def _spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A row's worker spec with the device's paths and engine module."""
        assert self.folder is not None
        remote = dict(spec, engine=_engine_module(spec["backend"]))
        for key in ("model", "weights"):
            if remote.get(key):
                rel = Path(remote[key]).relative_to(self._bundle).as_posix()
                remote[key] = posixpath.join(self.folder, "bundle", rel)
        remote["input_file"] = posixpath.join(self.folder, "input.npy") if spec.get("input_file") else None
        return remote

    # ---------------------------------------------------------------- workers

    def worker(self, spec: dict[str, Any], threads: int) -> tuple[list[str], list[str]]:
        """The local command that runs a row's worker there, and the lines to send it first
        (the agent's request, then the worker's spec)."""
        import os

        assert self.folder is not None
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": self.folder,
               "XDG_CACHE_HOME": posixpath.join(self.folder, "cache")}
        for name in ("EDGEDISTILL_THIRD_PARTY_TELEMETRY",):
            if name in os.environ:
                env[name] = os.environ[name]
        request = {"cmd": "worker", "dir": self.folder, "env": env}
        return (self.ssh.command([self.python, "-c", self._boot], worker=True),
                [json.dumps(request), json.dumps(self._spec(spec))])

    def check(self) -> None:
        """Raise a one-line error when the connection was lost (after removing the temporary
        folder over a new connection, where the device can still be reached)."""
        why = self.ssh.lost()
        if why is None:
            return
        self.ssh.close()
        left = self._cleanup_again()
        raise EdgeDistillError(f"lost the connection to {self.target.url} mid-run ({why}); {left}")

    def _cleanup_again(self) -> str:
        folder, self.folder = self.folder, None
        if folder is None:
            return "nothing was left there"
        try:
            with SshConnection(self.target, self.ssh.config) as again:
                answer = RemoteDevice(self.target, self.python, again)._agent(
                    {"cmd": "cleanup", "dir": folder, "prefix": PREFIX}, timeout=20)
        except EdgeDistillError as exc:
            return f"its temporary folder {folder} could not be removed ({exc})"
        return f"its temporary folder {folder} was removed" if answer.get("removed") else \
            f"its temporary folder {folder} could not be removed"

    def close(self) -> None:
        """Remove the temporary folder there, then close the connection."""
        folder, self.folder = self.folder, None
        try:
            if folder is not None and self.ssh.lost() is None:
                with contextlib.suppress(EdgeDistillError, OSError, subprocess.SubprocessError):
                    self._agent({"cmd": "cleanup", "dir": folder, "prefix": PREFIX}, timeout=20)
                    folder = None
        finally:
            self.ssh.close()
        if folder is not None:  # the connection went away first: once more over a new one
            self.folder = folder
            self._cleanup_again()


def _engine_module(backend: str) -> str:
    """The module name a runtime's engine has on the device (a file beside worker.py)."""
    return re.sub(r"\W", "_", backend) + "_engine"


@contextlib.contextmanager
def open_device(device: str, python: str | None = None, ssh_config: str | None = None) -> Iterator[RemoteDevice]:
    """Connect to ``ssh://[user@]host[:port]`` and probe it; on leaving (error, Ctrl-C, or
    SIGTERM through ``cleanup.on_terminate``) its temporary folder is removed and the
    connection closed."""
    from edgedistill.cleanup import on_terminate

    target = parse_target(device)
    with SshConnection(target, ssh_config) as connection:
        remote = RemoteDevice(target, python or DEFAULT_PYTHON, connection)
        with on_terminate(remote.close):
            try:
                remote.probe()
                yield remote
            finally:
                remote.close()
