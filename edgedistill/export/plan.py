"""What an export will do, decided before any work: every input a user can get wrong fails
here with a one-line error, and the rest of the export reads its choices off an
:class:`ExportPlan` (the student, the images for each gate, the variants, the outputs). The
variants are the registry's (``runtime.registry``) for the formats asked for."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgedistill.errors import EdgeDistillError
from edgedistill.rundir import RunDir
from edgedistill.runtime import registry
from edgedistill.runtime.base import BuildOptions, Runtime, Variant

if TYPE_CHECKING:
    from edgedistill.runtime.manifest import OutputSpec
    from edgedistill.runtime.preprocessing import PreprocessSpec

__all__ = ["ExportOptions", "ExportPlan", "plan_export", "parse_formats", "require_formats", "bundle_target",
           "check_out_root", "OUTPUT_DESCRIPTIONS"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
OUTPUT_DESCRIPTIONS = {
    "embedding": "student CLS token after the final norm (not L2-normalized)",
    "projection": "the embedding mapped into the teacher's feature space by the distillation projector "
                  "(not L2-normalized)",
}


@dataclass
class ExportOptions:
    """What ``export`` may be asked, besides the paths and formats (``export_bundle``'s
    keyword arguments and the CLI's options)."""

    int8: bool = True
    fp16: bool = False
    opset: int = 18
    calib_size: int = 64
    projection: bool = False
    min_cosine: float = 0.9999
    max_drop: float = 1.0
    int8_hint: str = "auto"
    recovery_attempts: int = 4
    recovery_seconds: float = 180.0  # accuracy control's time bound, all variants together
    batch_size: int = 64
    num_workers: int = 0
    threads: int | None = None

    def check(self, img_size: int | None = None) -> "ExportOptions":
        """One-line errors for values that cannot work (and an ``--img-size`` out of range);
        gates that cannot pass (or always pass) fail here, not after the whole export.
        Returns the options, numbers as floats."""
        import math

        from edgedistill.config import INT8_HINTS
        from edgedistill.export.onnx import check_opset
        from edgedistill.limits import MAX_IMAGE_SIDE, check_count

        if img_size is not None and not 1 <= int(img_size) <= MAX_IMAGE_SIDE:
            raise EdgeDistillError(f"--img-size must be between 1 and {MAX_IMAGE_SIDE}, got {img_size}")
        check_opset(self.opset)
        if int(self.calib_size) < 1 or int(self.batch_size) < 1:
            raise EdgeDistillError("--calib-size and --batch-size must be >= 1")
        if int(self.recovery_attempts) < 0:
            raise EdgeDistillError(f"--recovery-attempts must be >= 0, got {self.recovery_attempts}")
        if not float(self.recovery_seconds) > 0:
            raise EdgeDistillError(f"--recovery-seconds must be > 0 (inf: no bound), got {self.recovery_seconds}")
        if not 0 < float(self.min_cosine) <= 1:
            raise EdgeDistillError(f"--min-cosine must be in (0, 1] (a cosine similarity), got {self.min_cosine}")
        if not (math.isfinite(float(self.max_drop)) and float(self.max_drop) >= 0):
            raise EdgeDistillError(f"--max-drop must be a number >= 0 (k-NN points), got {self.max_drop}")
        if self.int8_hint not in INT8_HINTS:
            raise EdgeDistillError(f"--int8-hint must be one of {', '.join(INT8_HINTS)}, got {self.int8_hint!r}")
        if self.threads is not None:
            check_count(self.threads, "--threads")
        check_count(self.num_workers, "--workers", minimum=0)
        self.min_cosine, self.max_drop = float(self.min_cosine), float(self.max_drop)
        return self

    @property
    def build(self) -> BuildOptions:
        """What the runtimes' build steps read."""
        return BuildOptions(opset=int(self.opset), threads=self.threads, int8_hint=self.int8_hint)

    def wants(self, variant: Variant) -> bool:
        return variant.option is None or bool(getattr(self, variant.option))


@dataclass
class ExportPlan:
    """The resolved inputs of one export."""

    run: RunDir
    name: str
    bundle_dir: Path
    formats: tuple[str, ...]
    planned: list[tuple[Runtime, Variant]]  # in manifest order
    model: Any  # the student (eval mode, at img_size)
    meta: dict[str, Any]  # its backbone JSON
    graph: Any  # export.onnx.EmbeddingModel: embedding (+ projection)
    projector_info: dict[str, int] | None
    img_size: int
    trained_size: int
    spec: PreprocessSpec  # the bundle's preprocessing
    config: Any  # the run's typed config, or None
    knn_source: str | None
    knn_pair: tuple[Any, Any] | None  # labeled (train, val) splits for the accuracy gate
    calib_source: str | None
    calib_ds: Any
    parity_source: str
    parity_ds: Any
    options: ExportOptions = field(default_factory=ExportOptions)
    replace: bool = False  # an existing bundle is replaced (--force, and one was there when the export started)

    @property
    def variants(self) -> list[str]:
        return [v.name for _, v in self.planned]

    @property
    def outputs(self) -> list[OutputSpec]:
        from edgedistill.runtime.manifest import OutputSpec

        dims = {"embedding": int(self.model.embed_dim)}
        if self.projector_info is not None:
            dims["projection"] = self.projector_info["teacher_dim"]
        return [OutputSpec(name=n, dims=[-1, d], description=OUTPUT_DESCRIPTIONS[n]) for n, d in dims.items()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    from edgedistill.options import parse_list

    items = parse_list(formats, "formats", choices=registry.formats(), noun="export format")
    return tuple(f for f in registry.formats() if f in items)


def require_formats(formats: tuple[str, ...]) -> None:
    """A one-line error naming the install command for a format whose converters are missing."""
    for fmt in formats:
        registry.for_format(fmt).require(build=True)


def _check_run(run: RunDir) -> None:
    if not run.path.exists():
        raise EdgeDistillError(f"model run directory not found: {run.path}")
    if not run.path.is_dir():
        raise EdgeDistillError(f"--model must be a run directory (with student.json), got the file {run.path}")
    if not run.has_backbone("student"):
        hint = " (it holds a teacher: export a distilled student)" if run.has_backbone("teacher") else ""
        raise EdgeDistillError(f"{run.path} is not a distilled student run: it needs student.json and "
                               f"student.safetensors{hint}")


def _check_options(o: ExportOptions, planned: list[tuple[Runtime, Variant]], run: RunDir,
                   img_size: int | None) -> None:
    o.check(img_size)
    for runtime in dict.fromkeys(r for r, _ in planned):
        runtime.check_options(o.build)
    if o.fp16 and not any(v.option == "fp16" for _, v in planned):
        makers = [f"{v.name} ({r.format})" for r, v in registry.variants() if v.option == "fp16"]
        raise EdgeDistillError(f"--fp16 makes {', '.join(makers)}: add its format to --formats")
    if o.projection and not run.projector.is_file():
        raise EdgeDistillError(f"--projection needs {run.projector.name} in {run.path} (written by "
                               "`edgedistill distill`); this run has none")


def bundle_target(model_dir: str | Path, out_root: str | Path, name: str | None) -> Path:
    """``<out_root>/<name>`` (default name: the run directory's), the name checked."""
    name = name or RunDir.of(model_dir).path.resolve().name
    if not _NAME_RE.match(name):
        raise EdgeDistillError(f"bundle name {name!r} must be a plain folder name (letters, digits, . _ -)")
    return Path(out_root).expanduser() / name


def check_out_root(bundle_dir: Path) -> None:
    """``--out`` takes new files (probed for real: a read-only mount answers only to a write)."""
    from edgedistill.utils import check_writable

    check_writable(bundle_dir.parent / f".{bundle_dir.name}.probe", "--out")


def _check_target(bundle_dir: Path, force: bool) -> None:
    """An existing bundle is replaced only with ``force``, and only when it is a bundle (or an
    empty folder): a folder of other files is never deleted."""
    if os.path.lexists(bundle_dir):
        if not force:
            raise EdgeDistillError(f"{bundle_dir} already exists: pass --force to replace it, or choose another --name")
        if bundle_dir.is_symlink() or not bundle_dir.is_dir():
            raise EdgeDistillError(f"{bundle_dir} exists and is not a directory: not replacing it")
        if not (bundle_dir / "manifest.json").is_file() and any(bundle_dir.iterdir()):
            raise EdgeDistillError(f"{bundle_dir} is not a bundle (no manifest.json) and not empty: not replacing "
                                   "it, even with --force")


def _check_space(bundle_dir: Path, graph: Any, planned: list[tuple[Runtime, Variant]]) -> None:
    """The bundle's size, known from the parameter count: fail now rather than on a full disk
    minutes later. An FP32 ONNX graph is written whatever the formats (the ONNX-based
    conversions start from it)."""
    from edgedistill.utils import check_free_space

    params = sum(p.numel() for p in graph.parameters())
    per_param = 4.0 + sum(v.bytes_per_param for _, v in planned)
    check_free_space(bundle_dir.parent, int(params * per_param * 1.1) + (1 << 20), f"the bundle {bundle_dir}")


def _student(run: RunDir, img_size: int | None, projection: bool) -> tuple[Any, dict[str, Any], Any, Any, int]:
    """(model at the export size, its meta, the export graph, projector info, trained size)."""
    from edgedistill.export.onnx import EmbeddingModel
    from edgedistill.models.backbone_io import load_backbone
    from edgedistill.models.projector import load_projector

    model, meta = load_backbone(run.path, role="student")
    trained = int(meta.get("img_size") or model.patch_embed.img_size[0])
    patch = int(model.patch_embed.patch_size[0])
    size = int(img_size or trained)
    if size < patch or size % patch:
        raise EdgeDistillError(f"--img-size {size} must be a multiple of the student's patch size {patch}")
    if size != trained:
        # resamples the position embedding (bicubic), as timm does for a new input size
        model.set_input_size(img_size=(size, size))
    projector, info = load_projector(run.projector, int(model.embed_dim)) if projection else (None, None)
    return model, meta, EmbeddingModel(model, projector).eval(), info, trained


def _config_data(cfg: Any) -> tuple[str | None, str | None]:
    """(labeled k-NN data, any images) the run's own config points at, where they exist here:
    the defaults for ``data`` and ``calib``."""
    from edgedistill.data import has_split_layout

    if cfg is None:
        return None, None
    path, val_path = cfg.data.path, cfg.data.val_path

    def usable(p: str) -> bool:
        return p == "digits" or (bool(p) and Path(p).expanduser().is_dir())

    labeled = next((c for c in (val_path, path)
                    if c == "digits" or (usable(c) and has_split_layout(Path(c).expanduser()))), None)
    return labeled, (path if usable(path) else None)


def _images(plan_data: str | None, calib: str | None, cfg: Any, spec: PreprocessSpec, console: Any,
            int8: bool) -> dict[str, Any]:
    """The images each gate reads: the accuracy gate's labeled pair, calibration, parity."""
    from edgedistill.export.images import labeled_pair, open_split
    from edgedistill.runtime.folders import check_folder

    config_labeled, config_images = _config_data(cfg)
    knn_source = str(plan_data) if plan_data is not None else config_labeled
    knn_pair = None
    if plan_data is not None:
        knn_pair = labeled_pair(knn_source, spec, "--data")
    elif knn_source is not None:
        try:  # the run's own data is only a default: unusable, it means "no accuracy gate"
            knn_pair = labeled_pair(knn_source, spec, "the run's data.path")
            console.print(f"accuracy gate on the run's data: {knn_source}")
        except EdgeDistillError as exc:
            console.print(f"[yellow]warning:[/] the run's data cannot serve the accuracy gate ({exc})")
            knn_source = None
    if calib is not None:
        if calib != "digits":  # before the data layer, which names its own key (data.path)
            check_folder(calib, "--calib folder")
        calib_source, calib_ds = str(calib), open_split(str(calib), "train", spec, scan=False)
    elif knn_pair is not None:
        calib_source, calib_ds = f"{knn_source} (train split)", knn_pair[0]
    elif config_images is not None:
        calib_source = f"{config_images} (the run's data.path)"
        calib_ds = open_split(config_images, "train", spec, scan=False)
    else:
        calib_source, calib_ds = None, None
    if int8 and calib_ds is None:
        raise EdgeDistillError("INT8 needs calibration images: pass --calib DIR or --data DIR (or --no-int8)")
    if knn_pair is not None:
        parity_source, parity_ds = f"{knn_source} (val split)", knn_pair[1]
    elif calib_ds is not None:
        parity_source, parity_ds = calib_source, calib_ds
    else:
        raise EdgeDistillError("the parity gate needs real images: pass --data DIR (labeled train/val) or --calib DIR")
    if knn_pair is None:
        console.print("[yellow]warning:[/] no labeled --data: the accuracy gate is skipped"
                      + (" and the INT8 variants are not verified" if int8 else ""))
    return {"knn_source": knn_source, "knn_pair": knn_pair, "calib_source": calib_source, "calib_ds": calib_ds,
            "parity_source": parity_source, "parity_ds": parity_ds}


def _planned(fmts: tuple[str, ...], options: ExportOptions, model: Any,
             console: Any) -> list[tuple[Runtime, Variant]]:
    """The registry's variants of ``fmts`` the options ask for and this student allows."""
    planned, left_out = [], {}
    for runtime, variant in registry.variants(fmts):
        if not options.wants(variant):
            continue
        why = runtime.unbuildable(variant, model)
        if why:
            left_out.setdefault(why, []).append(variant.name)
            continue
        planned.append((runtime, variant))
    for why, names in left_out.items():
        console.print(f"[yellow]note:[/] {', '.join(names)} left out: {why}")
    return planned


def plan_export(model_dir: str | Path, *, out_root: str | Path, name: str | None, formats: str | Sequence[str],
                data: str | Path | None, calib: str | Path | None, img_size: int | None, force: bool,
                console: Any, options: ExportOptions) -> ExportPlan:
    """Check everything, load the student, pick the images and the variants."""
    from edgedistill.data import eval_preprocessing
    from edgedistill.limits import check_batch_memory, image_memory

    run = RunDir.of(model_dir)
    _check_run(run)
    fmts = parse_formats(formats)
    bundle_dir = bundle_target(run.path, out_root, name)
    name = bundle_dir.name
    _check_target(bundle_dir, force)
    _check_options(options, [(r, v) for r, v in registry.variants(fmts) if options.wants(v)], run, img_size)
    # replace only what was there when the export started: a folder that appears meanwhile is kept
    replace = bool(force and bundle_dir.exists())

    model, meta, graph, projector_info, trained = _student(run, img_size, options.projection)
    size = int(img_size or trained)
    planned = _planned(fmts, options, model, console)
    _check_space(bundle_dir, graph, planned)
    check_batch_memory(options.batch_size, image_memory(size, size), "--batch-size")
    cfg = run.config_or_none()  # supplies mean/std and the default data; ImageNet's without one
    spec = eval_preprocessing(size, *((cfg.data.mean, cfg.data.std) if cfg is not None else ()))
    images = _images(str(data) if data is not None else None, str(calib) if calib is not None else None, cfg, spec,
                     console, options.int8)
    return ExportPlan(run=run, name=name, bundle_dir=bundle_dir, formats=fmts, planned=planned, model=model,
                      meta=meta, graph=graph, projector_info=projector_info, img_size=size, trained_size=trained,
                      spec=spec, config=cfg, options=options, replace=replace, **images)
