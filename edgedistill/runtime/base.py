"""What a runtime module defines, and the typed objects it exchanges with the rest of
edgedistill. Each runtime (``runtime/<name>/``) subclasses :class:`Runtime`; the registry
(``runtime.registry``) lists them, and export, eval, bench, pipeline and the CLI ask the
registry instead of naming a runtime (docs/design.md §12 tells how to add one).

A runtime owns: the variants it builds (:class:`Variant`) and their build step
(:meth:`Runtime.build`, handed a :class:`Build`), their disk-space estimate, the file
suffixes it opens, the embedder the gates and ``eval`` use (:meth:`Runtime.embedder`), the
torch-free bench worker (its ``engine`` module, run by ``runtime.worker``) and its rows
(:meth:`Runtime.rows`, which get a ``runtime.rows.RowPlanner``), recovery after a failed INT8 gate
(:meth:`Runtime.recover`), and its install extra and version report.

Importing this module (and every runtime's ``__init__``) loads no runtime library and no
torch: the heavy parts are imported inside the methods that need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypedDict

from edgedistill.errors import EdgeDistillError
from edgedistill.runtime.rows import RowPlanner

if TYPE_CHECKING:
    import numpy as np

    from edgedistill.runtime.manifest import VariantEntry

__all__ = ["BackendUnavailable", "Variant", "BuildOptions", "Build", "Calibration", "Recovery", "RecoveryRecord",
           "RecoveryTimeout", "Runtime", "check_threads", "opened"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class BackendUnavailable(EdgeDistillError):
    """The runtime, execution provider or device is not on this machine (not a bug)."""


def check_threads(threads: int | None) -> int | None:
    """None (the runtime's default) or 1 .. ``limits.max_threads()``: thousands of threads
    oversubscribe the machine for everyone on it."""
    from edgedistill.limits import check_count

    return None if threads is None else check_count(threads, "threads")


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class Variant:
    """One bundle variant a runtime builds, in the order the manifest lists them."""

    name: str
    precision: str  # fp32 | fp16 | int8
    option: str | None = None  # None: always built; "int8": with --int8 (calibrated, after the parity gate); "fp16"
    bytes_per_param: float = 4.0  # what its files take, for the disk-space check before an export

    @property
    def quantized(self) -> bool:
        return self.option == "int8"


class Calibration(TypedDict):
    """Where an INT8 variant's calibration images came from (its manifest entry records it)."""

    source: str | None
    images: int
    requested: int
    preprocessing: str


class RecoveryRecord(TypedDict, total=False):
    """What accuracy control tried (``quantization.accuracy_control`` in the manifest)."""

    method: str
    float_layers: list[str]
    sensitivity: dict[str, float]
    attempts: list[dict[str, float]]  # float_nodes, top1, knn_delta of each measurement
    reason: str
    first_knn_delta: float
    passed: bool
    stopped: str  # why it ended before its attempts were spent (its time bound)
    seconds: float


@dataclass(frozen=True)
class BuildOptions:
    """The export options a build step reads."""

    opset: int = 18  # the ONNX graph's
    threads: int | None = None  # of the embedders that judge a variant
    int8_hint: str = "auto"  # precision of the ops an INT8 variant leaves in floating point (auto | bf16 | f32)


@dataclass
class Build:
    """A bundle being built in its work directory: what the build steps read (the torch graph,
    its input size, the options, the calibration images) and what they wrote (each variant's
    main file and manifest entry, in build order)."""

    work: Path
    graph: Any  # export.onnx.EmbeddingModel: pixel_values -> embedding (+ projection), torch, eval mode
    img_size: int
    output_names: list[str]
    options: BuildOptions
    # export.onnx.export_onnx's contract: (torch module, path, extra torch.onnx.export kwargs) -> the settings used
    export_onnx: Callable[[Any, Path, dict[str, Any]], dict[str, Any]]
    progress: Any = None  # the export's rich Progress (add_task / advance / update), or None
    files: dict[str, Path] = field(default_factory=dict)
    entries: dict[str, "VariantEntry"] = field(default_factory=dict)
    onnx_export: dict[str, Any] = field(default_factory=dict)  # the FP32 graph's exporter settings
    calibration: Calibration | None = None
    calibration_images: "np.ndarray | None" = None
    graph_path: Path | None = None  # where :meth:`onnx_graph` wrote the FP32 graph

    INTERMEDIATE_ONNX = ".intermediate_fp32.onnx"  # the FP32 graph when no variant ships it

    def add(self, name: str, path: Path, fields: dict[str, Any]) -> None:
        """A built variant: its main file and its manifest entry (hashes and sizes are filled
        in when the manifest is written)."""
        from edgedistill.runtime.manifest import VariantEntry

        self.files[name] = path
        self.entries[name] = VariantEntry(file=path.relative_to(self.work).as_posix(), **fields)

    def onnx_graph(self, shipped: Path | None = None) -> Path:
        """The FP32 ONNX graph the ONNX-based builds start from, exported once: into ``shipped``
        when a variant ships it as its file, else into a work file :meth:`finish` removes."""
        if self.graph_path is None:
            self.graph_path = shipped or self.work / self.INTERMEDIATE_ONNX
            self.onnx_export = self.export_onnx(self.graph, self.graph_path, {})
        elif shipped is not None and self.graph_path != shipped:
            self.graph_path = self.graph_path.replace(shipped)
        return self.graph_path

    def finish(self) -> None:
        """Remove the work files no variant ships."""
        (self.work / self.INTERMEDIATE_ONNX).unlink(missing_ok=True)

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        """A progress line; returns ``advance(n)``."""
        if self.progress is None:
            return lambda n=1: None
        task = self.progress.add_task(description, total=total)
        return lambda n=1: self.progress.advance(task, n)


@dataclass
class Recovery:
    """What accuracy control gets from the export's accuracy gate."""

    check: Callable[[str], Mapping[str, Any]]  # measure the variant again (updating the gate): its k-NN figures
    max_drop: float
    calibration: "np.ndarray"
    attempts: int
    bank: Sequence[Any]  # the labeled k-NN bank: (image, label) items by index
    queries: Sequence[Any]  # the labeled queries, likewise
    num_classes: int
    deadline: float = math.inf  # time.monotonic() past which a runtime stops (RecoveryTimeout) and keeps what it had
    progress: Callable[[int, int, str], None] = lambda done, total, note: None  # (done, total, figures) after a step

    def step(self, done: int, total: int, note: str = "") -> None:
        """Report a finished step (of at most ``total``); past the deadline, stop."""
        self.progress(done, total, note)
        self.check_time()

    def check_time(self) -> None:
        """Past the deadline, stop the recovery (:class:`RecoveryTimeout`)."""
        if time.monotonic() > self.deadline:
            raise RecoveryTimeout("accuracy control stopped at its time bound")


class RecoveryTimeout(Exception):
    """Accuracy control ran past its time bound (``Recovery.deadline``); the variant keeps the
    quantization it had before the recovery, and the gate's verdict stands."""


# ----------------------------------------------------------------------------- the runtime


class Runtime:
    """One runtime: a subclass per package, one instance in the registry."""

    name: str = ""  # the bench backend, and the key everywhere
    label: str = ""  # for people ("ONNX Runtime")
    format: str | None = None  # the manifest format it builds and opens; None: builds nothing of its own
    reads: tuple[str, ...] = ()  # the manifest formats it runs (its own first)
    suffixes: tuple[str, ...] = ()  # model files it opens outside a bundle
    variants: tuple[Variant, ...] = ()
    module: str = ""  # what must be importable to build or run it (found, not imported, to tell)
    build_modules: tuple[str, ...] = ()  # what export needs besides
    extra: str | None = None  # edgedistill's install extra
    packages: tuple[str, ...] = ()  # distributions whose versions the manifest and bench record
    default: bool = True  # in export's default --formats and bench's default backends
    engine: str | None = None  # the worker engine module (runtime.worker); None: no Python worker
    device: str | None = None  # a --device of its own; None: it measures on --device cpu
    cpu_target: str | None = None  # what it calls the CPU
    accelerators: bool = False  # it measures on devices besides the CPU (--device gpu, cuda, npu, ...)
    device_noun: str = "devices"  # what its probe lists, for the "device not available" message
    marker: str = "o"  # its points on the latency plot
    report_note: str | None = None  # what the bench table's caption says about its rows
    int8_recipe: str | None = None  # how its INT8 variants are made, for --int8's help ("dynamic, no calibration")

    # -------------------------------------------------------------- install

    @property
    def install_hint(self) -> str:
        return f"pip install 'edgedistill[{self.extra}]'" if self.extra else f"pip install {self.module}"

    def missing(self, build: bool = False) -> str | None:
        """The module this runtime needs (``build``: and its converters) that this machine
        lacks, found without importing anything (cheap: for defaults such as ``auto``)."""
        for module in (self.module, *(self.build_modules if build else ())):
            if module and importlib.util.find_spec(module) is None:
                return module
        return None

    def require(self, build: bool = False) -> None:
        """A one-line error naming the install command unless the runtime (``build``: and its
        converters) imports here."""
        from edgedistill.runtime.worker import one_line

        self.quiet()
        for module in (self.module, *(self.build_modules if build else ())):
            try:
                importlib.import_module(module)
            except Exception as exc:  # ImportError, or a broken install raising anything
                what = f"the {self.format} format" if build and self.format else f"{self.label} rows"
                raise EdgeDistillError(f"{what} needs {self.label} ({one_line(exc)}): {self.install_hint}") from None

    def check_options(self, options: BuildOptions) -> None:
        """A one-line error for an export option this runtime's build steps cannot take."""

    def quiet(self) -> None:
        """Keep its library from writing usage counters into ``$HOME`` and native log lines onto
        the terminal (its engine's ``quiet()``, where it has one); before the library is imported."""
        if self.engine:
            engine = importlib.import_module(self.engine)
            if hasattr(engine, "quiet"):
                engine.quiet()

    # -------------------------------------------------------------- export

    def unbuildable(self, variant: Variant, model: Any) -> str | None:
        """Why ``variant`` cannot be built for this student (None: it can)."""
        return None

    def _part(self, name: str) -> Any:
        """A module of this runtime's package (``build``, ``embedder``), imported when needed."""
        return importlib.import_module(f"{type(self).__module__}.{name}")

    def build(self, variant: Variant, build: Build) -> None:
        """Write ``variant``'s file(s) into ``build.work`` and ``build.add`` its manifest entry
        (the package's ``build.build_variant``)."""
        self._part("build").build_variant(variant.name, build)

    def manifest_files(self, path: Path) -> dict[str, Path]:
        """Files beside a built variant's main file the manifest lists (``{"weights": path}``)."""
        return {}

    def recovers(self, variant: Variant) -> bool:
        """Whether :meth:`recover` can do anything for ``variant`` (an INT8 variant of a runtime
        whose package has ``build.recover``)."""
        return variant.quantized and hasattr(self._part("build"), "recover")

    def recover(self, variant: Variant, build: Build, recovery: Recovery) -> RecoveryRecord | None:
        """Rebuild ``variant`` with its most sensitive layers in float until ``recovery.check``
        passes it, the attempts are spent or ``recovery.deadline`` passes (``RecoveryTimeout``);
        what was tried (the package's ``build.recover``). None: this runtime cannot."""
        return self._part("build").recover(variant.name, build, recovery) if self.recovers(variant) else None

    # -------------------------------------------------------------- opening

    embedder_class: str = ""  # the Embedder class in the package's ``embedder`` module

    def embedder(self, path: Path, *, threads: int | None = None, output: str = "embedding",
                 outputs: Sequence[str] = ("embedding",), name: str | None = None,
                 entry: "VariantEntry | None" = None, **settings: Any) -> Any:
        """An :class:`~edgedistill.runtime.embedders.Embedder` of ``path`` (``entry``: its
        manifest entry, when it comes from a bundle; ``settings``: what the class takes besides)."""
        cls = getattr(self._part("embedder"), self.embedder_class)
        return cls(path, threads=threads, output=output, outputs=outputs, name=name, **settings)

    def open_variant(self, path: Path, entry: "VariantEntry", **settings: Any) -> Any:
        """The embedder of a bundle variant as its manifest entry says to run it: at most
        ``entry.batch`` images per call where the entry declares one
        (:class:`~edgedistill.runtime.embedders.PerCallBatch`)."""
        from edgedistill.runtime.embedders import PerCallBatch

        embedder = self.embedder(path, entry=entry, **settings)
        return PerCallBatch(embedder, entry.batch) if entry.batch else embedder

    def variant_files(self, entry: "VariantEntry", bundle_dir: Path) -> list[tuple[Path, str | None]]:
        """Every file a manifest variant needs, with its expected sha256 (None: not recorded)."""
        files = [(bundle_dir / entry.file, entry.sha256)]
        if entry.weights_file:
            files.append((bundle_dir / entry.weights_file, entry.weights_sha256))
        return files

    def gate_fallbacks(self, entry: "VariantEntry") -> dict[str, dict[str, Any]]:
        """Further settings the accuracy gate judges a variant under (figures key -> embedder
        settings): how a device unlike the export machine will run it."""
        return {}

    def input_size(self, embedder: Any) -> int | None:
        """The static square input size an opened model declares in its ``input_shape`` (NCHW
        or NHWC; None: dynamic or not declared)."""
        shape = list(getattr(embedder, "input_shape", None) or [])
        if len(shape) != 4:
            return None
        h, w = (shape[2], shape[3]) if shape[1] == 3 else (shape[1], shape[2])
        return h if isinstance(h, int) and h == w and h > 0 else None

    # -------------------------------------------------------------- bench

    def probe(self) -> tuple[list[str] | None, str | None]:
        """(the devices or providers it sees, None), or (None, why it cannot run here)."""
        missing = self.missing()
        if missing:
            return None, f"ModuleNotFoundError: no module named {missing!r}"
        return [self.cpu_target] if self.cpu_target else [], None

    def unavailable_reason(self, error: str | None) -> str:
        if not error or error.startswith("ModuleNotFoundError"):
            return f"{self.name} is not installed ({self.install_hint})"
        return f"{self.name} cannot be loaded: {error}"

    def target(self, device: str, found: list[str]) -> tuple[str | None, str | None]:
        """What it calls ``device`` (``cpu`` or an accelerator), or (None, why it cannot serve it)."""
        if device == "cpu" and self.cpu_target:
            return self.cpu_target, None
        if self.device:
            return None, f"{self.name} rows run with --device {self.device}"
        where = f" ({self.cpu_target})" if self.cpu_target else ""
        return None, f"{self.label} rows run on --device cpu{where} only"

    def rows(self, plan: RowPlanner, threads: int, name: str, entry: "VariantEntry") -> None:
        """Add (``plan.add``) or skip (``plan.skip``) this runtime's rows for one variant; called
        for the variants whose format it ``reads``."""
        target = plan.target(self.name)
        if target is None:
            return plan.skip(self.name, name, entry.precision, plan.reason(self.name))
        top1, delta = plan.knn(name)
        plan.add(threads, backend=self.name, variant=name, precision=entry.precision, device=target,
                 model=str(plan.bundle_dir / entry.file), size_bytes=plan.size(name), knn_top1=top1, knn_delta=delta)

    def worker_command(self, spec: dict[str, Any], python: str) -> list[str]:
        """The worker process of one row (its spec already holds ``engine``)."""
        import json

        return [python, "-m", "edgedistill.runtime.worker", json.dumps(spec)]

    def serve(self, bundle_dir: Path) -> Any:
        """A context manager around the rows' measurement (a server the workers need); yields
        what goes into each row's spec as ``url``, or None."""
        import contextlib

        return contextlib.nullcontext()


def opened(runtime: Runtime, what: Path | str, open_fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``open_fn(*args, **kwargs)`` (an engine's session opener), its errors as edgedistill's:
    a missing library, device or provider is :class:`BackendUnavailable` naming the install,
    a missing file or a model that does not load a one-line EdgeDistillError."""
    from edgedistill.runtime.worker import one_line

    try:
        return open_fn(*args, **kwargs)
    except ImportError as exc:
        raise BackendUnavailable(f"{runtime.label} cannot be imported ({one_line(exc)}): {runtime.install_hint}") from None
    except LookupError as exc:
        raise BackendUnavailable(one_line(exc)) from None
    except FileNotFoundError as exc:
        raise EdgeDistillError(one_line(exc)) from None
    except EdgeDistillError:
        raise
    except Exception as exc:  # each library raises its own types
        raise EdgeDistillError(f"{runtime.label} cannot load {what}: {one_line(exc)}") from None

