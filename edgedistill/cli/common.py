"""Options and rendering shared by the commands (click and rich only: no torch here)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from edgedistill.config import Config, build_config


def config_options(func):
    """--config, --set (repeatable) and --out, shared by the training commands."""
    func = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a config key, e.g. --set distill.epochs=1 (repeatable).")(func)
    func = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Run directory (default: runs/<run.name>).")(func)
    func = click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                        help="YAML config file.")(func)
    return func


def console():
    """Progress and messages: stderr."""
    from edgedistill.progress import make_console

    return make_console(stderr=True)


def results_console():
    """Result tables: stdout, full width in a log or a pipe."""
    from edgedistill.progress import make_console

    return make_console(stderr=False)


_WARNINGS_LOG: list[Path] = []  # the log a command named (a training run's), else the default


def log_warnings_to(path: Path | None) -> None:
    """Send this command's third-party warnings to ``path`` (a training run's ``warnings.log``);
    None: back to the default."""
    _WARNINGS_LOG[:] = [Path(path)] if path is not None else []


def warnings_log() -> Path:
    """Where third-party warnings go: the command's own log (``log_warnings_to``), else
    ``$EDGEDISTILL_LOG``, else ``~/.cache/edgedistill/warnings.log``."""
    import os

    if _WARNINGS_LOG:
        return _WARNINGS_LOG[0]
    return Path(os.environ.get("EDGEDISTILL_LOG") or Path.home() / ".cache" / "edgedistill" / "warnings.log")


def next_step(con: Any, command: str) -> None:
    """The line that ends a command: what a user runs next (on ``con``, the results' stream).
    One line, never wrapped, so it can be copied whole."""
    con.print(f"Next: {command}", highlight=False, soft_wrap=True, markup=False)


def shell_words(*words: object) -> str:
    """``words`` as one shell command line (each word quoted where it needs it)."""
    import shlex

    return " ".join(shlex.quote(str(w)) for w in words)


def deploy_example() -> str:
    """The Python deploy example of the registry's first runtime (the one every bundle has)."""
    from edgedistill.runtime import registry

    return f"deploy_examples/python_{registry.RUNTIMES[0].name}/classify.py"


def deploy_step(bundle: Path | str) -> str:
    """The next step once a bundle is measured: the Python deploy example on it."""
    return (shell_words("python", deploy_example(), "--bundle", bundle, "--gallery", "GALLERY", "--images", "IMAGES")
            + "  (GALLERY: a labeled folder, <class>/<image>; the digits as one: edgedistill data digits --out DIR)")


class Outputs:
    """The files a command was asked to write, checked before any work (``check_outputs``)."""

    def __init__(self, paths: dict[str, Path | None]) -> None:
        from edgedistill.utils import STDOUT

        self.paths = {option: path for option, path in paths.items() if path is not None}
        self.to_stdout = [option for option, path in self.paths.items() if str(path) == STDOUT]

    def written(self, con: Any, what: str, path: Path) -> None:
        from edgedistill.utils import STDOUT

        if str(path) != STDOUT:
            con.print(f"{what} written: {path}", highlight=False, soft_wrap=True)


def check_outputs(paths: dict[str, Path | None]) -> Outputs:
    """Fail before the work when an output cannot be written (read-only, missing permission, a
    directory), or when more than one of them asks for stdout (``-``)."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.utils import check_writable

    outputs = Outputs(paths)
    if len(outputs.to_stdout) > 1:
        raise EdgeDistillError(f"only one output can go to stdout (-), got {' and '.join(outputs.to_stdout)}")
    for option, path in outputs.paths.items():
        check_writable(path, option)
    return outputs


def resolve_training_config(config_path: Path | None, overrides: tuple[str, ...], extra: dict[str, Any],
                            out: Path | None, resume: bool) -> tuple[Config, Path]:
    """Build the config of a training command. A resumed run takes its own saved config
    (``--set`` still applies on top); a new one takes --config, the options, then --set."""
    from edgedistill.errors import EdgeDistillError
    from edgedistill.rundir import RunDir

    extra = {section: {k: v for k, v in values.items() if v is not None}
             for section, values in extra.items()}
    extra = {section: values for section, values in extra.items() if values}
    if resume:
        if out is None:
            raise EdgeDistillError("--resume needs --out pointing at the run directory to continue")
        saved = RunDir.of(out).config_path
        if not saved.is_file():
            raise EdgeDistillError(f"nothing to resume: {saved} does not exist")
        if config_path is not None:
            raise EdgeDistillError("--resume uses the run's own config.yaml; change keys with --set instead of --config")
        cfg = build_config(saved, overrides, extra)
    else:
        cfg = build_config(config_path, overrides, extra)
    return cfg, RunDir.for_config(cfg, out).path


def check_hub_teacher(source: str) -> None:
    """Before torch is even imported: a teacher source that can only be a hub name (no such
    file or folder, not 'random'), with nothing of it in the hub's cache, on a machine that
    cannot reach the hub, fails in seconds with one line (the hub client retries for a
    minute). ``models.teacher`` checks the name itself once it is loaded."""
    import os

    from edgedistill.errors import EdgeDistillError
    from edgedistill.network import HUB_ENDPOINT, hf_cache_dir, hf_offline, unreachable

    source = source.strip()
    if (not source or source.lower() == "random" or Path(source).expanduser().exists() or "/" in source
            or "\\" in source or Path(source).suffix.lower() in (".pth", ".pt", ".safetensors", ".bin", ".json")):
        return
    cache = hf_cache_dir()
    cached = cache.is_dir() and any(cache.glob(f"models--timm--{source}*"))  # an untagged name: its default tag
    torch_hub = Path(os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch") / "hub" / "checkpoints"
    if cached or (torch_hub.is_dir() and any(torch_hub.iterdir())):
        return  # maybe cached: the loader knows
    reason = ("offline mode is set (HF_HUB_OFFLINE)" if hf_offline()
              else unreachable(os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT))
    if reason:
        arch = source.split(".")[0]
        raise EdgeDistillError(
            f"teacher {source!r} is not a local file or folder, so its weights would come from the hub, and "
            f"{reason}. Without network access, download the checkpoint elsewhere and pass the local file "
            f"instead: --teacher path/to/checkpoint.pth --set teacher.arch={arch}")


_HINTS: list[Callable[[], str]] = []


@contextlib.contextmanager
def interruptible(hint: Callable[[], str]) -> Iterator[None]:
    """While the block runs, an interrupt (Ctrl-C here, SIGTERM in the CLI's handler) tells the
    user ``hint()``: what to run to continue."""
    from edgedistill.errors import Interrupted

    _HINTS.append(hint)
    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted.of(exc).with_hint(hint()) from None
    finally:
        _HINTS.pop()


def interrupt_hint() -> str | None:
    return _HINTS[-1]() if _HINTS else None


def resume_hint(command: str, run_dir: Path) -> str:
    """What an interrupted training command says about continuing."""
    from edgedistill.rundir import RunDir

    run = RunDir.of(run_dir)
    if not run.has_checkpoint():
        return f"no checkpoint was written yet in {run.path}: run the same command again to start over"
    return (f"the last checkpoint is {run.checkpoint}: `edgedistill {command} --out {run.path} --resume` "
            "continues from it")


def finish_training(stage: str, out: Path, summary: dict, then: str) -> None:
    """A training command's ending, on the reporting process: its table on stdout, its
    third-party warnings into the run's ``warnings.log``, and the ``Next:`` line: ``then`` for
    a finished run, the ``--resume`` that continues an unfinished one."""
    if not summary["is_main"]:
        return
    log_warnings_to(out / "warnings.log")
    results = results_console()
    render_run_summary(results, stage, summary)
    next_step(results, then if summary["complete"] else shell_words("edgedistill", stage, "--out", out, "--resume"))


def render_run_summary(con, stage: str, summary: dict) -> None:
    """The closing table of a training command (on ``con``: stdout)."""
    from rich.table import Table

    table = Table(title=f"{stage}: {summary['run_dir']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("steps", str(summary["steps"]))
    table.add_row("epochs", str(summary["epochs"]))
    table.add_row("complete", "yes" if summary["complete"] else "no (stopped by max_steps; --resume continues)")
    table.add_row("time", f"{summary['seconds']:.1f} s")
    if summary.get("student_grid"):
        table.add_row("patch grid", f"student {summary['student_grid']}, teacher {summary['teacher_grid']}")
    for key, value in summary.get("metrics", {}).items():
        table.add_row(key, f"{value:.4g}")
    knn = summary.get("knn") or {}
    if knn:
        table.add_row("k-NN top-1 (val)", f"{knn['knn_top1']:.2f}")
        table.add_row("k-NN, its random init", f"{knn['random_init_knn_top1']:.2f}")
    con.print(table)
    if knn and knn["knn_top1"] <= knn["random_init_knn_top1"]:
        con.print(f"warning: the student's k-NN ({knn['knn_top1']:.2f}) is not above its random init's "
                  f"({knn['random_init_knn_top1']:.2f}): train longer, or check the teacher", highlight=False)
