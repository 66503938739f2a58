"""The runtime registry: the one list of runtimes, each defined in its own package beside
this module (``runtime/<name>/``, a :class:`~edgedistill.runtime.base.Runtime`), and the
lookups export, eval, bench, pipeline and the CLI use instead of naming a runtime. Adding a
runtime is a package and one line in :data:`RUNTIMES` (docs/design.md §12)."""

from __future__ import annotations

from importlib import metadata

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.base import Runtime, Variant
from edgedistill.runtime.browser import RUNTIME as BROWSER
from edgedistill.runtime.executorch import RUNTIME as EXECUTORCH
from edgedistill.runtime.litert import RUNTIME as LITERT
from edgedistill.runtime.onnxruntime import RUNTIME as ONNXRUNTIME
from edgedistill.runtime.openvino import RUNTIME as OPENVINO

__all__ = ["RUNTIMES", "get", "formats", "default_formats", "for_format", "for_suffix", "suffixes", "variants",
           "variant", "model_files", "backends", "default_backends", "devices", "versions", "quiet_runtimes"]

# Order matters: it is the manifest's variant order and the order rows and formats are listed
# in; the first is the fallback baseline of a bench without torch.
RUNTIMES: tuple[Runtime, ...] = (ONNXRUNTIME, OPENVINO, EXECUTORCH, LITERT, BROWSER)


def get(name: str) -> Runtime:
    for runtime in RUNTIMES:
        if runtime.name == name:
            return runtime
    raise EdgeDistillError(f"unknown runtime {name!r} (known: {', '.join(r.name for r in RUNTIMES)})")


def formats() -> tuple[str, ...]:
    """The manifest formats (export's ``--formats`` choices), in manifest order."""
    return tuple(r.format for r in RUNTIMES if r.format)


def default_formats() -> tuple[str, ...]:
    return tuple(r.format for r in RUNTIMES if r.format and r.default)


def for_format(fmt: str) -> Runtime:
    """The runtime that builds and opens manifest format ``fmt``."""
    for runtime in RUNTIMES:
        if runtime.format == fmt:
            return runtime
    raise EdgeDistillError(f"unknown model format {fmt!r} (known: {', '.join(formats())})")


def for_suffix(suffix: str) -> Runtime | None:
    """The runtime that opens a model file with this suffix (``.onnx``, ...), if any."""
    return next((r for r in RUNTIMES if suffix.lower() in r.suffixes), None)


def suffixes() -> tuple[str, ...]:
    return tuple(s for r in RUNTIMES for s in r.suffixes)


def model_files() -> str:
    """The model files the runtimes open, for help texts and messages."""
    return ", ".join(f"{s} ({r.label})" for r in RUNTIMES for s in r.suffixes)


def variants(fmts: tuple[str, ...] | None = None) -> list[tuple[Runtime, Variant]]:
    """Every variant (of the runtimes building ``fmts``; default: all), in manifest order."""
    return [(r, v) for r in RUNTIMES if r.format and (fmts is None or r.format in fmts) for v in r.variants]


def variant(name: str) -> tuple[Runtime, Variant] | None:
    return next(((r, v) for r, v in variants() if v.name == name), None)


def backends() -> tuple[str, ...]:
    """What ``bench --backends`` takes besides torch."""
    return tuple(r.name for r in RUNTIMES)


def default_backends() -> tuple[str, ...]:
    return tuple(r.name for r in RUNTIMES if r.default)


def devices() -> tuple[str, ...]:
    """``--device`` values of their own (the browser's): the native CPU rows come along."""
    return tuple(r.device for r in RUNTIMES if r.device)


def quiet_runtimes() -> None:
    """Stop the runtimes writing usage counters into ``$HOME`` and native log lines onto the
    terminal (each runtime's engine knows how); must run before any of them is imported: the
    CLI calls it, the bench worker does the same for its one engine.
    ``EDGEDISTILL_THIRD_PARTY_TELEMETRY=1`` leaves the counters on. Code that imports
    ``edgedistill.runtime`` in an app is left to the app's own choice."""
    for runtime in RUNTIMES:
        runtime.quiet()


def versions(packages: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed versions of ``packages`` and of every runtime's (None: not installed), read
    from package metadata, never by importing the library."""
    out: dict[str, str | None] = {}
    for package in (*packages, *(p for r in RUNTIMES for p in r.packages)):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out
