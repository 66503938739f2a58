"""Small shared helpers with no heavy imports: atomic and user-named writes, disk checks and
errors, the lock of a directory being written, hashing, JSON. What the machine can hold is in
``limits``."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from edgedistill.cleanup import registered


T = TypeVar("T")
STDOUT = "-"  # an output path that means standard output
# errno values that mean "the disk, not the program": full, over quota, read-only, not allowed
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _error(message: str) -> Exception:
    from edgedistill.errors import EdgeDistillError

    return EdgeDistillError(message)


# ----------------------------------------------------------------------------- disk


def human_bytes(n: float) -> str:
    """``1.3 MiB``: binary units, as the sizes here are of files and memory (rich.filesize)."""
    from rich.filesize import pick_unit_and_suffix

    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
    unit, suffix = pick_unit_and_suffix(int(n), units, 1024)
    return f"{int(n):,d} bytes" if unit == 1 else f"{n / unit:,.1f} {suffix}"


def existing_folder(path: str | Path) -> Path:
    """The nearest folder at or above ``path`` that exists (where a new file would land)."""
    folder = Path(os.path.abspath(Path(path).expanduser()))
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def describe_os_error(exc: OSError, path: str | Path | None = None) -> str:
    """A one-line reason for a failed write that names the path."""
    where = str(path if path is not None else (exc.filename or "the output"))
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(existing_folder(where)).free if where else 0
        return f"no space left on the device holding {where} ({human_bytes(free)} free)"
    if exc.errno == errno.EROFS:
        return f"cannot write {where}: read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {where}: permission denied"
    if exc.errno == errno.EISDIR:
        return f"cannot write {where}: it is a directory"
    return f"cannot write {where}: {exc.strerror or exc}"


def check_new(path: str | Path) -> None:
    """Refuse a ``path`` that exists (a folder about to be written whole, never merged into)."""
    if os.path.lexists(path):
        raise _error(f"{path} already exists: choose a new --out (nothing was written)")


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Fail before long work when the file system that will hold ``path`` has less than
    ``needed`` bytes free."""
    folder = existing_folder(path)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise _error(f"not enough disk space for {what} in {folder}: it needs about {human_bytes(needed)}, "
                     f"{human_bytes(free)} free")


@contextlib.contextmanager
def disk_errors(path: str | Path, what: str) -> Iterator[None]:
    """Turn a write that failed for want of disk (full, read-only, not allowed) into a one-line
    EdgeDistillError naming ``path``. Libraries report a full disk in their own words
    (torch: "unexpected pos", safetensors: "IoError"), so any error counts when the file
    system holding ``path`` is (nearly) full. Use it inside the atomic helper, so the check
    runs before the temporary file is removed."""
    from edgedistill.errors import EdgeDistillError

    try:
        yield
    except EdgeDistillError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise _error(f"{what}: {describe_os_error(exc, path)}") from None
        if _nearly_full(path):
            text = str(exc).strip()
            reason = text.splitlines()[0][:120] if text else type(exc).__name__
            raise _error(f"{what}: no space left on the device holding {path} ({reason})") from None
        raise


def _nearly_full(path: str | Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(existing_folder(path)).free < margin
    except OSError:
        return False


def check_writable(path: str | Path, what: str) -> None:
    """Fail at once, before any work, when ``path`` (a file to write; ``-`` is stdout) cannot be
    written: an existing device or pipe needs write permission, anything else a folder that
    takes a new file (probed for real: read-only mounts and quotas answer only to a write)."""
    if str(path) == STDOUT:
        return
    path = Path(path).expanduser()
    if path.is_dir():
        raise _error(f"{what} {path} is a directory")
    if path.exists() and not path.is_file():
        if not os.access(path, os.W_OK):
            raise _error(f"{what} {path}: permission denied")
        return
    folder = existing_folder(path.parent)
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgedistill-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _error(f"{what}: {describe_os_error(exc, path)}") from None


# ----------------------------------------------------------------------------- writing

def _new_sibling(path: Path, suffix: str, create: Callable[[Path], T]) -> T:
    """``create(.<name>.<8 random hex>.<suffix>)`` beside ``path``, on the first free name."""
    for _ in range(100):
        try:
            return create(path.with_name(f".{path.name}.{secrets.token_hex(4)}.{suffix}"))
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _temp_sibling(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` created with the mode a plain ``open`` would give it
    (0666 less the umask; ``mkstemp``'s 0600 would leak into the renamed result)."""
    return _new_sibling(path, "tmp", lambda tmp: (os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp))


def _final_mode(tmp: Path, path: Path, fresh: int) -> None:
    """An existing file keeps its permissions when it is replaced; a new one gets ``fresh``
    (the umask's, as the temporary file was created), whatever mode the writer gave it
    (safetensors writes 0600)."""
    with contextlib.suppress(OSError):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = fresh
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place (for files this
    tool owns; a path the user named goes through :func:`write_output`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_sibling(path)
    try:
        with registered(tmp):
            fresh = stat.S_IMODE(os.fstat(fd).st_mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            _final_mode(tmp, path, fresh)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_output(path: str | Path, data: bytes | str) -> None:
    """Write a file the user named (``--json``, ``--csv``, ``--plot``, ``--out``).

    ``-`` is standard output. What already exists at ``path`` keeps what it is: a device
    (``/dev/stdout``, ``/dev/null``) or a named pipe is opened and written in place, a symlink
    keeps pointing where it did (its target is replaced), a regular file is replaced
    atomically and keeps its permissions. A failed write is a one-line EdgeDistillError."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if str(path) == STDOUT:
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    path = Path(path).expanduser()
    try:
        try:
            mode = os.stat(path).st_mode  # follows a symlink to what it points at
        except FileNotFoundError:
            mode = None
        if mode is not None and stat.S_ISDIR(mode):
            raise _error(f"cannot write {path}: it is a directory")
        if mode is not None and not stat.S_ISREG(mode):
            with open(path, "wb") as handle:  # a device, a pipe, a socket: written, never replaced
                handle.write(raw)
            return
        atomic_write_bytes(Path(os.path.realpath(path)) if path.is_symlink() else path, raw)
    except OSError as exc:
        raise _error(describe_os_error(exc, path)) from None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path for a writer that wants a filename (torch.save,
    safetensors); rename it over ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_sibling(path)
    fresh = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        with registered(tmp):
            yield tmp
            _final_mode(tmp, path, fresh)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- directories


def _partial_name(name: str) -> re.Pattern[str]:
    """What ``atomic_directory`` names its work folders (8 random characters, as ``mkdtemp``'s
    were)."""
    return re.compile(rf"^\.{re.escape(name)}\.[a-z0-9_]{{8}}\.partial$")


def _temp_folder(path: Path) -> Path:
    """A new work folder beside ``path`` with the mode a plain ``mkdir`` gives (0777 less the
    umask; ``mkdtemp``'s 0700 would leak into the renamed result)."""
    return _new_sibling(path, "partial", lambda tmp: (tmp.mkdir(0o777), tmp)[1])


def _clean_leftovers(path: Path) -> list[str]:
    """Remove the work folders a killed writer of ``path`` left behind (the caller holds the
    lock, so no live writer owns one). A swap cut short between its two renames left the old
    ``path`` as ``.<name>.old``: it is put back. Returns what was removed."""
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    removed = []
    pattern = _partial_name(path.name)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if pattern.match(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old.name)
    return removed


@contextlib.contextmanager
def directory_lock(path: Path, instead: str = "another name") -> Iterator[list[str]]:
    """Hold ``<parent>/.<name>.lock`` while ``path`` is written: a second writer fails at
    once, naming the holder's pid and ``instead`` (what else to choose), instead of racing
    this one. On entry the leftovers of killed writers are cleaned (yielded: the names
    removed). The lock is ``filelock``'s (an ``flock`` on Unix, which the kernel drops when its
    holder dies, even by SIGKILL, once the forked children that share it have exited); the lock
    file stays, so that every writer locks the same inode, and holds the holder's pid."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = lock_path.read_text().strip()
        except OSError:
            holder = ""
        who = f"another process (pid {holder})" if holder.isdigit() else "another process"
        raise _error(f"{who} is writing {path} (it holds {lock_path}): wait for it to finish, "
                     f"or choose {instead}") from None
    except OSError as exc:
        raise _error(f"cannot lock {path}: {describe_os_error(exc, lock_path)}") from None
    try:
        with contextlib.suppress(OSError):
            lock_path.write_text(f"{os.getpid()}\n")
        yield _clean_leftovers(path)
    finally:
        with contextlib.suppress(OSError):
            lock_path.write_text("")  # a pid left there would name a process that holds nothing
        lock.release()


@contextlib.contextmanager
def atomic_directory(path: Path, *, replace: bool = False, exists_hint: str = "") -> Iterator[Path]:
    """Build a directory under a temporary sibling name and move it into place only on success:
    a failure or Ctrl-C leaves nothing at ``path`` (SIGTERM through the CLI neither:
    :func:`remove_temporaries`).

    ``replace``: an existing ``path`` is swapped out and removed. Without it, a ``path`` that
    appeared meanwhile (another process, a user) is left untouched and the new directory is
    dropped with an EdgeDistillError (``exists_hint`` appended). Hold :func:`directory_lock`
    around it so that two writers never race."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_folder(path)
    try:
        with registered(tmp):
            yield tmp
            if os.path.lexists(path):
                if not replace:
                    raise _error(f"{path} appeared while it was being written: it was left untouched and "
                                 f"nothing was written{exists_hint}")
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- third parties


@contextlib.contextmanager
def quiet_stdout(show: bool) -> Iterator[None]:
    """Route a library's own prints and progress bars (quantizers, converters) to stderr, or
    nowhere: stdout stays clean for whoever pipes the command."""
    if show:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


# ----------------------------------------------------------------------------- reading


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    from edgedistill.errors import EdgeDistillError

    path = Path(path)
    if not path.is_file():
        raise EdgeDistillError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeDistillError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo, or ``cpuinfo``: its text from another
    machine; empty elsewhere)."""
    try:
        if cpuinfo is None:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
    except OSError:
        return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)
