"""What a command leaves behind when SIGTERM ends it: the temporary files, work folders and
locks its atomic writers hold, the child processes it started (with their descendants and the
data-loader workers), and the actions registered with :func:`on_terminate`. The CLI's SIGTERM
handler calls :func:`remove_temporaries`, then exits without unwinding."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

__all__ = ["registered", "temporary_directory", "start_child", "on_terminate", "remove_temporaries"]

_TEMPORARIES: set[str] = set()  # what this process's atomic writers hold right now
_CHILDREN: "weakref.WeakSet[subprocess.Popen[Any]]" = weakref.WeakSet()  # start_child's processes
_ON_TERMINATE: dict[int, Callable[[], None]] = {}  # what else must be undone (a device's temporary folder)


@contextlib.contextmanager
def registered(path: str | Path) -> Iterator[None]:
    """While the block runs, ``path`` (a file or folder) is removed by :func:`remove_temporaries`."""
    _TEMPORARIES.add(str(path))
    try:
        yield
    finally:
        _TEMPORARIES.discard(str(path))


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """A scratch folder removed at the end, also when SIGTERM ends the command
    (:func:`remove_temporaries`)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with registered(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_child(command: list[str], **popen: Any) -> "subprocess.Popen[Any]":
    """``subprocess.Popen(command, **popen)``, a child that :func:`remove_temporaries` ends (with
    whatever it started) when SIGTERM ends the command: the handler exits without unwinding, so
    no ``finally`` of the caller stops it."""
    import subprocess

    proc = subprocess.Popen(command, **popen)
    _CHILDREN.add(proc)
    return proc


def _end_children() -> None:
    """Kill the live children of :func:`start_child` and their descendants (the processes a
    worker's driver started), and the data-loader workers (which would otherwise linger until
    their watchdog notices the parent is gone), and wait until they are gone, before their
    files are removed."""
    import multiprocessing

    import psutil

    procs = []
    with contextlib.suppress(Exception):
        procs += [psutil.Process(worker.pid) for worker in multiprocessing.active_children()]
    for child in list(_CHILDREN):
        if child.poll() is None:
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(child.pid)
                procs += [parent, *parent.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=2)


@contextlib.contextmanager
def on_terminate(action: Callable[[], None]) -> Iterator[None]:
    """While the block runs, :func:`remove_temporaries` also calls ``action`` (what a context
    manager's exit would undo: the temporary folder on a device reached over SSH)."""
    key = id(action)
    _ON_TERMINATE[key] = action
    try:
        yield
    finally:
        _ON_TERMINATE.pop(key, None)


def remove_temporaries() -> None:
    """Run the :func:`on_terminate` actions, end the children of :func:`start_child`, then remove
    the temporary files, work folders and locks the atomic writers of this process hold now: the
    CLI's SIGTERM handler calls it, then exits without unwinding (an exception raised into an
    extension module's import or a C++ callback can crash the process)."""
    # First, before any import or wait: the data-loader workers end here, or died of the signal
    # itself when it went to the whole process group (`kill -TERM -PGID`, systemd, Slurm), and
    # torch's SIGCHLD handler would raise "DataLoader worker ... killed" into the caller's handler.
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for action in list(_ON_TERMINATE.values()):
        with contextlib.suppress(Exception):
            action()
    _end_children()
    for path in list(_TEMPORARIES):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
