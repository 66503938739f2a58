"""The SSH transport of ``bench --device ssh://...``: the system OpenSSH client (so the user's
``~/.ssh/config`` aliases, keys, agent and known_hosts apply as they do for ``ssh``), in batch
mode with a connect timeout and keep-alives, multiplexed over master connections whose control
sockets live in a private temporary folder. Every failure is one line (``SshError``) saying
what went wrong in the user's terms: unreachable, login refused, host key unknown or changed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgedistill.errors import EdgeDistillError

__all__ = ["SshError", "SshTarget", "SshConnection", "is_ssh", "parse_target", "SSH_CONFIG_ENV",
           "CONNECT_TIMEOUT", "SESSIONS_PER_CONNECTION"]

SCHEME = "ssh://"
SSH_CONFIG_ENV = "EDGEDISTILL_SSH_CONFIG"  # an ssh_config file used instead of ~/.ssh/config (ssh -F)
CONNECT_TIMEOUT = 10  # s: the TCP connection and the SSH handshake
READY_TIMEOUT = 40.0  # s: from starting ssh to an authenticated master connection
ALIVE_INTERVAL, ALIVE_COUNT = 5, 3  # a silent network is noticed within 15 s
# sshd's MaxSessions defaults to 10 per connection: a worker holds one session for the whole
# run, the short control commands one each, so each master connection carries at most this many workers
SESSIONS_PER_CONNECTION = 8


class SshError(EdgeDistillError):
    """The device cannot be reached, or refused us (one line)."""


def is_ssh(device: str) -> bool:
    return device.strip().lower().startswith(SCHEME)


@dataclass(frozen=True)
class SshTarget:
    """``ssh://[user@]host[:port]``; ``host`` may be an alias of the user's ssh config."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def label(self) -> str:
        """How the report names the device: as the user wrote it, without the scheme."""
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{user}{host}" + (f":{self.port}" if self.port else "")

    @property
    def url(self) -> str:
        return SCHEME + self.label


def parse_target(device: str) -> SshTarget:
    """An ``ssh://[user@]host[:port]`` device, checked (a one-line error otherwise)."""
    text = device.strip()
    example = "ssh://[user@]host[:port]"
    if not is_ssh(text):
        raise EdgeDistillError(f"not an SSH device: {device!r} (expected {example})")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise EdgeDistillError(f"bad SSH device {device!r}: {exc} (expected {example})") from None
    if not parts.hostname or parts.password is not None or parts.path not in ("", "/") or parts.query \
            or parts.fragment:
        raise EdgeDistillError(f"bad SSH device {device!r} (expected {example})")
    if port == 0:
        raise EdgeDistillError(f"bad SSH device {device!r}: port 0")
    # urlsplit lowercases the host: keep the user's spelling (ssh config aliases are case-sensitive)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    host = netloc[1:netloc.index("]")] if netloc.startswith("[") else netloc.rsplit(":", 1)[0] if port else netloc
    return SshTarget(host=host, user=urllib.parse.unquote(parts.username) if parts.username else None, port=port)


def explain(stderr: str, target: SshTarget) -> str:
    """ssh's stderr as one line that says what to do."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not set(ln.strip()) <= {"@"}]
    text = " ".join(lines)
    where = target.url
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have requested strict" in text:
        fix = next((ln for ln in lines if ln.startswith("ssh-keygen ")), f"ssh-keygen -R {target.host}")
        return (f"the host key of {where} does not match the one in known_hosts (REMOTE HOST IDENTIFICATION "
                f"HAS CHANGED): if the device was reinstalled, remove the old key ({fix}) and connect once with ssh")
    if "No " in text and "host key is known" in text or "Host key verification failed" in text:
        return (f"the host key of {where} is not known: connect once with ssh to check and accept it "
                f"(bench never accepts an unknown host key)")
    if "Permission denied" in text:
        why = next((ln for ln in lines if "Permission denied" in ln), text)
        return f"{where} refused the login ({why}): check the user, the key (ssh-add, IdentityFile) and authorized_keys"
    for marker in ("Connection refused", "Could not resolve hostname", "No route to host", "Connection timed out",
                   "Network is unreachable", "Operation timed out", "Connection reset", "Connection closed"):
        if marker in text:
            why = next(ln for ln in lines if marker in ln)
            return f"cannot reach {where}: {why.removeprefix('ssh: ')}"
    return f"ssh to {where} failed: {lines[-1] if lines else 'no message'}"


class SshConnection:
    """Master connections to one device (``ssh -M``) and the commands multiplexed over them.

    Use as a context manager: on exit every master is closed and the private folder of
    control sockets removed. The masters run in their own session, so a Ctrl-C at the
    terminal reaches edgedistill only, which then closes them in order."""

    def __init__(self, target: SshTarget, config: str | None = None) -> None:
        self.target = target
        config = config if config is not None else os.environ.get(SSH_CONFIG_ENV) or None
        if config is not None and not os.path.isfile(os.path.expanduser(config)):
            raise EdgeDistillError(f"ssh config file not found: {config}")
        self.config = os.path.expanduser(config) if config else None
        self._folder: Path | None = None
        self._masters: list[tuple[subprocess.Popen[bytes], str, IO[bytes]]] = []
        self._workers = 0

    # ---------------------------------------------------------------- arguments

    def _args(self, control: str) -> list[str]:
        args = ["ssh"] + (["-F", self.config] if self.config else [])
        for option in ("BatchMode=yes", f"ConnectTimeout={CONNECT_TIMEOUT}", f"ServerAliveInterval={ALIVE_INTERVAL}",
                       f"ServerAliveCountMax={ALIVE_COUNT}", f"ControlPath={control}"):
            args += ["-o", option]
        if self.target.port:
            args += ["-p", str(self.target.port)]
        if self.target.user:
            args += ["-l", self.target.user]
        return args

    def command(self, remote: list[str], worker: bool = False) -> list[str]:
        """The local command line running ``remote`` (argv, quoted for the device's shell)
        over a master connection; ``worker``: it holds its session for the whole run."""
        index = 0
        if worker:
            index = self._workers // SESSIONS_PER_CONNECTION
            self._workers += 1
        control = self._master(index)
        return [*self._args(control), "-o", "ControlMaster=no", "-T", "--", self.target.host,
                " ".join([_home_quote(remote[0]), *(shlex.quote(a) for a in remote[1:])])]

    # ---------------------------------------------------------------- masters

    def __enter__(self) -> "SshConnection":
        if shutil.which("ssh") is None:
            raise EdgeDistillError("--device ssh://... needs the OpenSSH client (ssh) on this machine")
        # a socket path must stay under ~100 bytes: a long TMPDIR falls back to /tmp
        parent = None if len(tempfile.gettempdir()) < 60 else "/tmp"
        self._folder = Path(tempfile.mkdtemp(prefix="edgedistill-ssh-", dir=parent))
        try:
            self._master(0)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _master(self, index: int) -> str:
        """The control socket of master connection ``index``, opened (and authenticated) if needed."""
        assert self._folder is not None, "use SshConnection as a context manager"
        while len(self._masters) <= index:
            control = str(self._folder / f"m{len(self._masters)}")
            log = tempfile.TemporaryFile()
            proc = subprocess.Popen([*self._args(control), "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
                                     "-N", "-T", "--", self.target.host], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            self._masters.append((proc, control, log))
            self._wait_ready(proc, control, log)
        return self._masters[index][1]

    def _wait_ready(self, proc: subprocess.Popen[bytes], control: str, log: IO[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SshError(explain(_read(log), self.target))
            if os.path.exists(control) and self._check(control):
                return
            time.sleep(0.05)
        raise SshError(f"no answer from {self.target.url} within {READY_TIMEOUT:.0f} s "
                       f"(connecting or logging in hung): {_read(log) or 'ssh said nothing'}")

    def _check(self, control: str) -> bool:
        return subprocess.run([*self._args(control), "-O", "check", "--", self.target.host],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=15).returncode == 0

    def lost(self) -> str | None:
        """Why a master connection ended before it was closed (None: all alive)."""
        for proc, _, log in self._masters:
            if proc.poll() is not None:
                said = [ln.strip() for ln in _read(log).splitlines() if ln.strip()]
                return said[-1].removesuffix(".") if said else f"ssh exited with status {proc.returncode}"
        return None

    def close(self) -> None:
        """Close every master (their sessions end with them) and remove the control sockets."""
        for proc, control, log in self._masters:
            if proc.poll() is None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run([*self._args(control), "-O", "exit", "--", self.target.host],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
        self._masters = []
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # ---------------------------------------------------------------- commands

    def run(self, remote: list[str], data: bytes = b"", timeout: float = 120.0) -> subprocess.CompletedProcess[bytes]:
        """Run ``remote`` on the device with ``data`` on its stdin; a lost connection or a
        command that hangs is an SshError."""
        try:
            done = subprocess.run(self.command(remote), input=data, capture_output=True, timeout=timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.target.url} did not answer within {timeout:.0f} s") from None
        if done.returncode == 255:
            raise SshError(self.lost() or explain(done.stderr.decode("utf-8", "replace"), self.target))
        return done


def _home_quote(program: str) -> str:
    """``program`` quoted for the device's shell, a leading ``~/`` left to it: ``--remote-python
    '~/venv/bin/python'`` means the device user's home, not this machine's."""
    if program.startswith("~/"):
        return "~/" + shlex.quote(program[2:])
    return shlex.quote(program)


def _read(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode("utf-8", "replace").strip()
