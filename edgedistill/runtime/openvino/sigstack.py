"""The calling thread's alternate signal stack, kept across native code that replaces it.

NNCF's accuracy-controlled quantization (OpenVINO) installs its own alternate signal stack on
the calling thread and unmaps it without restoring the previous one. Every later signal whose
handler runs on that stack (Python installs its handlers with ``SA_ONSTACK``: Ctrl-C, the CLI's
SIGTERM handler, the SIGCHLD handler of torch's DataLoader) then lands on unmapped memory and
the kernel kills the process with SIGSEGV, long after the export step that caused it.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

__all__ = ["keep_signal_stack"]


class _StackT(ctypes.Structure):  # struct stack_t (Linux)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def _sigaltstack(new: _StackT | None) -> _StackT | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = _StackT()
        if libc.sigaltstack(ctypes.byref(new) if new is not None else None, ctypes.byref(old)) != 0:
            return None
        return old
    except (OSError, AttributeError):  # no libc symbol: nothing to keep
        return None


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Restore this thread's alternate signal stack after the block if native code changed it."""
    if not sys.platform.startswith("linux"):
        yield
        return
    before = _sigaltstack(None)
    try:
        yield
    finally:
        after = _sigaltstack(None)
        if before is not None and after is not None and (after.ss_sp, after.ss_size) != (before.ss_sp, before.ss_size):
            restore = _StackT(before.ss_sp, before.ss_flags & 2, before.ss_size)  # only SS_DISABLE may be set
            _sigaltstack(restore)
