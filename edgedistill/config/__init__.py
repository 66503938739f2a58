"""Typed configuration: dataclass defaults, YAML files, ``--set a.b=v`` overrides, validation.

Every key lives in a section (``data.*``, ``teacher.*``, ``student.*``, ``distill.*``, ...).
Unknown keys are rejected with a suggestion, values are converted to the declared type by
pydantic (``_coerce``), and the resolved config is written as ``config.yaml`` into every run
directory.

The checks behind ``validate`` live in ``checks.py``. This package imports no torch: the CLI
validates a config before any heavy import.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from edgedistill.config.checks import auto_local_crop_size, check_pretrain_sizes, patch_size_in_name, validate
from edgedistill.errors import EdgeDistillError


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave torch's default


@dataclass
class DataConfig:
    path: str = "digits"  # "digits" (embedded) or a folder of images (labeled or not)
    val_path: str = ""  # labeled folder for k-NN; "" = the val split of `path` where it has one
    img_size: int = 32
    batch_size: int = 64  # per process (micro-batch); see distill.effective_batch
    num_workers: int = 2
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True  # random horizontal flips in training; off for digits, text, or oriented scenes
    max_bad_images: int = 10  # corrupt/truncated images skipped before the run fails
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class TeacherConfig:
    # A run directory, a checkpoint file (.pth/.pt/.safetensors), a timm hub name
    # (e.g. vit_small_patch16_224.dino), or "random" (an explicitly random-init teacher).
    source: str = "random"
    arch: str = "vit_small_patch16_224"
    img_size: int = 0  # 0 = data.img_size
    patch_size: int = 0  # 0 = the architecture's own (a random teacher's follows the image size, as the student's)
    depth: int = 0  # 0 = the architecture's own (e.g. 12)


@dataclass
class StudentConfig:
    arch: str = "vit_tiny_patch16_224"
    img_size: int = 0  # 0 = data.img_size
    # 0 = follows the image size: the architecture's own where it leaves at least 4x4 patches
    # (224 px: 16), else the largest that does (32 px: 8); printed by distill
    patch_size: int = 0
    depth: int = 0  # 0 = the architecture's own (12 for ViT-Tiny)
    drop_path_rate: float = 0.0
    # Register tokens after CLS for a VisionTransformer student (e.g. 4, DINOv2-style); 0 = none.
    # Eva students (vit_tiny_patch16_dinov3_qkvb) bring their own and take no value here.
    reg_tokens: int = 0


@dataclass
class DistillConfig:
    epochs: int = 100
    effective_batch: int = 0  # 0 = data.batch_size x world size (no accumulation)
    blr: float = 1.5e-4  # lr = blr * effective_batch / 256
    min_lr: float = 0.0
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 0.0  # 0 = off
    w_cls: float = 1.0
    w_attn: float = 0.1
    # The dense term: projected student patch tokens regress onto the teacher's (resized to the
    # student's grid). 0 = off, and then nothing of it is computed.
    w_patch: float = 0.0
    patch_loss: str = "cosine"  # cosine | smooth_l1
    # The CLS target: raw (the teacher's CLS as it is) or standardized per dimension with the
    # teacher's statistics on the training images, so the loss weighs the image-specific part
    # of the target, not the vector every image shares.
    cls_target: str = "raw"  # raw | standardized
    target_stats_images: int = 4096  # training images the statistics are measured on
    # The projector's start: random, or least_squares: its final linear layer fitted (ridge) to
    # map the student's initial features onto the CLS targets of those same images, so the first
    # steps do not spend the student's features on fitting a random head.
    projector_init: str = "random"  # random | least_squares
    # Function matching: each training image blended with another (mixup) or with a box of
    # another pasted in (cutmix), teacher and student seeing the mixed image. Beta(alpha, alpha)
    # mixing ratios; 0 = that kind off. mix_prob: the share of images mixed.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    temperature: float = 10.0  # head aggregation softmax(sum_h log A_h / T)
    aggregate_heads: str = "auto"  # auto (when head counts differ) | always | never
    projector_depth: int = 3  # hidden layers; 0 = one linear map (identity when dims match)
    # Attention target over CLS + patches (register columns dropped, row renormalized), or with
    # the registers kept: needs a student with as many registers as the teacher.
    keep_registers: bool = False
    amp: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16) | bf16 | off
    # The student's training pass: fused SDPA or explicit softmax(QK^T)V in the blocks before
    # the last. auto = fused on CUDA, explicit on CPU, where SDPA's backward is slower at ViT
    # token counts (measured: 54 vs 79 img/s fp32 for ViT-T/4 at 32 px). The frozen teacher
    # always runs fused (inference).
    attention: str = "auto"  # auto | fused | explicit
    compile: bool = False
    checkpoint_every: int = 1  # epochs
    knn_every: float = 0.0  # epochs between online k-NN measurements (fractions allowed); 0 = off
    log_every: int = 10  # optimizer steps
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    # The schedule's length in optimizer steps (warmup + cosine end there, and so does the run);
    # 0 = epochs x steps per epoch. Lets a wall-clock budget fit whole schedules (benchmarks/ablation.py).
    total_steps: int = 0
    max_seconds: float = 0.0  # budget of the run (the target pass before training included); it ends there (0 = none)
    # What max_seconds counts: wall-clock seconds, or the CPU seconds of the run's process and
    # its data workers (cpu: an equal budget even when other jobs share the machine).
    budget_clock: str = "wall"  # wall | cpu


@dataclass
class PretrainConfig:
    arch: str = "vit_small_patch16_224"
    patch_size: int = 0
    depth: int = 0
    epochs: int = 100
    effective_batch: int = 0
    blr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0
    out_dim: int = 4096
    head_bn: bool = False  # BatchNorm in the head's hidden layers (DINO's use_bn_in_head)
    local_crops: int = 6
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_crop_size: int = 0  # 0 = about 3/7 of the image size (96 at 224), a multiple of the patch size
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    freeze_last_layer: int = 1  # epochs
    drop_path_rate: float = 0.1
    amp: str = "auto"
    compile: bool = False
    checkpoint_every: int = 1
    knn_every: float = 0.0  # as distill.knn_every
    log_every: int = 10
    max_steps: int = 0
    total_steps: int = 0  # as distill.total_steps
    max_seconds: float = 0.0  # as distill.max_seconds
    budget_clock: str = "wall"  # as distill.budget_clock


@dataclass
class EvalConfig:
    k: tuple[int, ...] = (10, 20, 100, 200)
    temperature: float = 0.07
    batch_size: int = 128
    chunk_size: int = 4096


INT8_HINTS = ("auto", "bf16", "f32")  # export.int8_precision_hint / export --int8-hint


def _default_formats() -> tuple[str, ...]:
    from edgedistill.runtime.registry import default_formats

    return default_formats()


def _default_backends() -> tuple[str, ...]:
    from edgedistill.runtime.registry import default_backends

    return ("torch", *default_backends())


@dataclass
class ExportConfig:
    # the registry's default formats; the opt-in ones (their own extras) by name, or pipeline.edge
    formats: tuple[str, ...] = field(default_factory=_default_formats)
    int8: bool = True
    opset: int = 18
    calib_size: int = 64
    parity_min_cosine: float = 0.9999
    max_knn_drop: float = 1.0
    int8_precision_hint: str = "auto"  # an INT8 variant's non-quantized ops: auto (bf16 where native) | bf16 | f32
    int8_recovery_attempts: int = 4  # requantize with sensitive layers in float when INT8 misses the gate
    int8_recovery_seconds: float = 180.0  # time bound of that accuracy control, all variants together


@dataclass
class BenchConfig:
    backends: tuple[str, ...] = field(default_factory=_default_backends)
    threads: tuple[int, ...] = (2,)
    batch: tuple[int, ...] = (1, 8)
    runs: int = 50
    warmup: int = 5
    # Where the rows run: cpu (this machine) and/or ssh://[user@]host[:port] devices (an alias of
    # ~/.ssh/config, or of $EDGEDISTILL_SSH_CONFIG), whose rows join this machine's in one report.
    devices: tuple[str, ...] = ("cpu",)
    remote_python: str = ""  # the Python on the SSH devices (empty: python3)


@dataclass
class PipelineConfig:
    # Stages of `edgedistill pipeline`, in order. Without `pretrain`, distill uses teacher.source.
    stages: tuple[str, ...] = ("pretrain", "distill", "eval", "export", "bench")
    attention_images: int = 4  # val images drawn in the report's attention-map figure
    # Edge targets: the registry's opt-in runtimes, their formats (export) and rows (bench), added to
    # export.formats and bench.backends. off: none (the pipeline exports what the config lists, as
    # `export` does); auto: each where it can run here (its extra installed, or what its own device
    # needs, such as Chromium and the web example's npm packages); on: all required (an error otherwise).
    edge: str = "off"


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    @property
    def teacher_img_size(self) -> int:
        """The image size the teacher runs at: ``teacher.img_size``, else ``data.img_size``."""
        return self.teacher.img_size or self.data.img_size


# ----------------------------------------------------------------------------- coercion


def _suggest(name: str, choices: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if close:
        return f"; did you mean '{prefix}{close[0]}'?"
    return f"; known keys: {', '.join(prefix + c for c in sorted(choices))}"


@functools.lru_cache(maxsize=None)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    # nan and inf would pass every "> 0" check downstream
    return TypeAdapter(tp, config=ConfigDict(allow_inf_nan=False))


_MESSAGES = {"int_parsing": "must be an integer", "int_from_float": "must be an integer", "int_type": "must be an integer",
             "float_parsing": "must be a number", "float_type": "must be a number",
             "finite_number": "must be a finite number", "bool_parsing": "must be true or false",
             "bool_type": "must be true or false", "string_type": "must be a string"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """A YAML or command-line value as the declared field type (pydantic's lax conversion:
    "3" -> 3, "on" -> True, ["0.3", "1"] -> (0.3, 1.0)), or a one-line error naming the key.
    Two spellings are the command line's own: ``a,b`` (or ``[a, b]``) for a tuple, and YAML
    1.1's bare on/off, which reaches a text field as a boolean."""
    is_tuple = typing.get_origin(tp) is tuple
    if is_tuple and isinstance(value, str):
        value = [v.strip() for v in value.strip("()[] ").split(",") if v.strip()]
    elif is_tuple and not isinstance(value, (list, tuple)):
        value = [value]
    if tp is str and isinstance(value, bool):
        value = "on" if value else "off"
    if tp is str and value is None:
        value = ""
    if tp in (int, float) and isinstance(value, bool):  # YAML's true is not a number
        raise EdgeDistillError(f"config key '{key}' must be a number, got '{value}'")
    try:
        return _adapter(tp).validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] in ("too_short", "too_long") and is_tuple:
            raise EdgeDistillError(f"config key '{key}' needs {len(typing.get_args(tp))} values, got "
                                   f"{len(value)}") from None
        what = _MESSAGES.get(error["type"], error["msg"][0].lower() + error["msg"][1:])
        raise EdgeDistillError(f"config key '{key}' {what}, got '{error.get('input', value)}'") from None


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    types_ = _field_types(type(obj))
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise EdgeDistillError(f"unknown config key '{full}'{_suggest(str(key), list(types_), prefix)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise EdgeDistillError(f"config section '{full}' must be a mapping")
            _apply(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, types_[key], full))


# ----------------------------------------------------------------------------- public API


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b=v`` into ``{"a": {"b": "v"}}``; the value stays text until it is coerced to
    the declared type of ``a.b`` (so ``amp=off`` stays the string "off")."""
    if "=" not in text:
        raise EdgeDistillError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise EdgeDistillError(f"--set has an empty key in '{text}'")
    value = raw.strip()
    nested: dict[str, Any] = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EdgeDistillError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise EdgeDistillError(f"config file {path} is not valid YAML{where}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise EdgeDistillError(f"config file {path} must hold a mapping of sections")
    return loaded


def build_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the YAML file, then ``extra`` (CLI options), then ``--set`` overrides."""
    cfg = Config()
    if path is not None:
        _apply(cfg, load_yaml(path))
    if extra:
        _apply(cfg, extra)
    for text in overrides:
        _apply(cfg, parse_override(text))
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, data)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path, header: str = "") -> None:
    """``cfg`` as YAML at ``path``, after ``header`` (a comment line) when given."""
    from edgedistill.utils import atomic_write_text

    atomic_write_text(Path(path), (f"{header}\n" if header else "") + yaml.safe_dump(to_dict(cfg), sort_keys=False))
