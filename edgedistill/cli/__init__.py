"""The ``edgedistill`` command group.

Each command lives in its own module and only parses, validates, calls a plain function and
renders the result. Heavy imports (torch, timm, the runtimes) happen inside the commands,
so ``edgedistill --help`` and ``--version`` stay instant.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from edgedistill import __version__
from edgedistill.cleanup import remove_temporaries  # standard library only: --help stays instant
from edgedistill.errors import EdgeDistillError, Interrupted


_HANDLER_PID = 0  # the process that installed the SIGTERM handler


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a container stopping) ends the command as Ctrl-C does: the atomic
    writers' temporary files, work folders and locks are removed, and one line says what
    happened and how to continue. It exits from here rather than raising into whatever runs:
    an exception raised into an extension module's import (onnx's, mid-export) crashed the
    process with SIGSEGV and left the work folder behind."""
    import contextlib

    if os.getpid() != _HANDLER_PID:  # a forked child (a DataLoader worker): the parent reports
        os._exit(128 + signal.SIGTERM)
    remove_temporaries()  # first: it stops child-exit signals before anything else can be interrupted
    from edgedistill.cli.common import interrupt_hint

    hint = None
    with contextlib.suppress(Exception):
        hint = interrupt_hint()
    message = "terminated (SIGTERM)" + (f"; {hint}" if hint else "")
    with contextlib.suppress(Exception):
        sys.stdout.flush()  # results already printed stay printed
    terminal = os.isatty(2)
    # raw writes: the main thread may be inside a print to stderr right now
    os.write(2, ((b"\x1b[?25h\n" if terminal else b"") + f"error: {message}\n".encode()))
    os._exit(128 + signal.SIGTERM)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_THIRD_PARTY: list[str] = []  # third-party warnings of this command, for its log


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Our warnings: one line on stderr. A library's (torch's pytree, a converter's
    deprecations) says nothing a user can act on: it goes to the command's log (``cli.common.warnings_log``)."""
    if os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
        sys.stderr.write(f"warning: {message}\n")
    else:
        _THIRD_PARTY.append(f"{filename}:{lineno}: {category.__name__}: {message}")


def _flush_third_party_warnings(notify: bool) -> None:
    """Append the command's third-party warnings to its log; ``notify``: say so in one line
    (not after an error, which stays the only line)."""
    import contextlib
    import time

    from edgedistill.cli.common import log_warnings_to, warnings_log

    path = warnings_log()
    log_warnings_to(None)  # the next command (in the same process: tests, a notebook) starts afresh
    if not _THIRD_PARTY:
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} edgedistill {' '.join(sys.argv[1:])}\n")
            log.writelines(entry + "\n" for entry in _THIRD_PARTY)
        if notify:
            sys.stderr.write(f"({len(_THIRD_PARTY)} third-party warning{'s' if len(_THIRD_PARTY) > 1 else ''} "
                             f"written to {path})\n")
    _THIRD_PARTY.clear()


class _Group(click.Group):
    """Turns user errors into one line and a non-zero exit instead of a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        import warnings

        from edgedistill.runtime.registry import quiet_runtimes
        from edgedistill.utils import DISK_ERRNOS, describe_os_error

        # Ours reach users as one line, not as a source excerpt; third parties' go to a log.
        warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
        shown = warnings.showwarning
        warnings.showwarning = _show_warning
        quiet_runtimes()
        global _HANDLER_PID
        main_thread = threading.current_thread() is threading.main_thread()
        _HANDLER_PID = os.getpid()
        previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
        succeeded = False
        try:
            result = super().invoke(ctx)
            succeeded = True
            return result
        except EdgeDistillError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            interrupted = Interrupted.of(exc)
            click.echo(f"error: {interrupted}", err=True)
            sys.exit(interrupted.exit_code)
        except OSError as exc:  # a write the command did not expect to fail: say why and where
            if exc.errno not in DISK_ERRNOS:
                raise
            click.echo(f"error: {describe_os_error(exc)}", err=True)
            sys.exit(2)
        finally:
            warnings.showwarning = shown
            _flush_third_party_warnings(notify=succeeded)
            if main_thread:  # an in-process caller (tests, a notebook) gets its own handler back
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgedistill")
def main() -> None:
    """Distill a self-supervised ViT into a ViT-Tiny, validate it, export it, benchmark it.

    \b
      edgedistill pretrain   SSL (DINO) teacher on your own unlabeled images
      edgedistill distill    AttnDistill: teacher -> ViT-Tiny student
      edgedistill eval       k-NN, linear probe, attention maps
      edgedistill export     a gated bundle (ONNX and the other runtimes' formats), --int8
      edgedistill bench      latency and throughput from a bundle
      edgedistill pipeline   all of the above from one YAML config
      edgedistill data       the quickstart's digits as labeled image folders
    """


def _register() -> None:
    import importlib

    for name in ("distill", "pretrain", "eval", "export", "bench", "pipeline", "data"):
        try:
            module = importlib.import_module(f"edgedistill.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edgedistill.cli.{name}":
                continue  # stage not built yet
            raise
        main.add_command(module.command)


_register()
