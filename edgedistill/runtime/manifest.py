"""The bundle manifest (``manifest.json``, the contract with apps and ``bench``) as a typed
model: :class:`Manifest`, its parts, reading and verifying it. The writer
(``export.manifest``) builds the same model, so what is written is what every reader checks;
its JSON Schema is generated from the model and shipped beside this module
(``manifest.schema.json``; ``python -m edgedistill.runtime.manifest`` prints it, a test keeps
the shipped file equal to it), for apps that validate a bundle without edgedistill.

Opening a manifest validates it against the model and reports the first problem on one
line (``bad bundle manifest <path>: <where>: <what>``). Files are relative to the bundle
directory and may not leave it, not even through a symlink. A ``-1`` (or a string) in a
shape is a dynamic axis. Runtime-specific fields of a variant beyond the typed ones are kept
as they are (``model_extra``), and so are additive fields of newer writers at the top level.

Integrity: :func:`verify_variant` compares a variant's files with their recorded sha256;
``open_embedder`` and ``bench`` call it by default before loading (``verify=False`` /
``--no-verify`` for apps that verified the bundle when they installed it).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgedistill.errors import EdgeDistillError
from edgedistill.limits import MAX_IMAGE_SIDE
from edgedistill.runtime import registry
from edgedistill.runtime.preprocessing import INTERPOLATIONS, validate_spec
from edgedistill.utils import read_json, sha256_file

if TYPE_CHECKING:
    from edgedistill.runtime.preprocessing import PreprocessSpec

__all__ = [
    "MANIFEST_NAME", "FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "FORMATS", "VARIANTS", "PRECISIONS",
    "SCHEMA_PATH", "Manifest", "VariantEntry", "InputSpec", "OutputSpec", "Preprocessing", "Sample",
    "manifest_schema", "read_manifest", "validate_manifest", "verify_variant", "variant_path", "variant_files",
    "missing_file", "default_variant", "pick_variant",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1  # what `edgedistill export` writes
SUPPORTED_FORMAT_VERSIONS = (1,)  # what this reader accepts
FORMATS = registry.formats()
# the variants `edgedistill export` writes, in manifest order (a reader accepts any name)
VARIANTS = tuple(v.name for _, v in registry.variants())
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")


def _inside(value: str) -> str:
    pure = PurePosixPath(value.replace("\\", "/"))
    if not value or pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"{value!r} must be a path inside the bundle")
    return value


RelativeFile = Annotated[str, AfterValidator(_inside), Field(description="a path relative to the bundle directory")]
Dim = Union[int, str]  # a string (or -1) is a dynamic axis


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")

    def as_json(self) -> dict[str, Any]:
        """The JSON object this part is written as (what was set, nothing filled in)."""
        return self.model_dump(mode="json", exclude_unset=True)


class InputSpec(_Model):
    """The model input: name, layout, shape (``-1``: the dynamic batch), dtype."""

    name: str
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    shape: list[Dim] = Field(min_length=4, max_length=4, description="like [-1, 3, H, W]")
    dtype: Literal["float32", "float16"] = "float32"

    @field_validator("shape")
    @classmethod
    def _sizes(cls, shape: list[Dim]) -> list[Dim]:
        if any(isinstance(v, int) and (v == 0 or v < -1 or v > MAX_IMAGE_SIDE) for v in shape):
            raise ValueError(f"input.shape {shape} has a dimension outside 1..{MAX_IMAGE_SIDE} (-1: dynamic)")
        return shape


class OutputSpec(_Model):
    name: str
    dims: list[Dim] | None = None
    description: str | None = None


class Preprocessing(_Model):
    """The eval transform the model was validated with (export/README.md, "Preprocessing")."""

    resize: int | list[int] | None = Field(description="short side (int), exact [h, w], or null: no resize")
    crop: int | list[int] = Field(description="center crop: an int, or [h, w]")
    interpolation: Literal[tuple(INTERPOLATIONS)] = "bicubic"  # type: ignore[valid-type]
    scale: float = 1 / 255
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "float16"] = "float32"

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, data: Any) -> Any:
        try:
            validate_spec(data)  # the runtime's own checks: finite numbers, sizes, known values
        except EdgeDistillError as exc:
            raise ValueError(str(exc)) from None
        return data

    @property
    def spec(self) -> PreprocessSpec:
        """The normalized dict ``runtime.preprocessing.preprocess`` takes."""
        return validate_spec(self.model_dump(mode="json"))


class VariantEntry(_Model):
    """One model of the bundle. Beyond these fields a runtime records what it needs (its
    build settings: ``conversion``, ``lowering``, ``exporter``, ...)."""

    file: RelativeFile
    format: Literal[FORMATS]  # type: ignore[valid-type]
    precision: Literal[PRECISIONS]  # type: ignore[valid-type]
    sha256: str | None = None
    size_bytes: int | None = Field(default=None, ge=0)
    total_size_bytes: int | None = Field(default=None, ge=0, description="every file of the variant")
    weights_file: RelativeFile | None = None
    weights_sha256: str | None = None
    weights_size_bytes: int | None = Field(default=None, ge=0)
    inference_precision_hint: Literal["f32", "bf16", "f16"] | None = Field(
        default=None, description="the precision to compile with; what the gates validated")
    runtimes: list[str] | None = Field(default=None, description="the runtimes that load this file")
    graph: str | None = None
    batch: int | None = Field(default=None, ge=1, description=(
        "images per call: the model's static batch, or the batch a dynamic-INT8 model (activation ranges "
        "taken over the whole call) was validated at; absent: any batch"))
    runtime: dict[str, Any] | None = Field(default=None, description="the runtime library, version, how apps load it")
    quantization: dict[str, Any] | None = None


class Sample(_Model):
    """One real image and the torch FP32 outputs for it: an app's self-test."""

    file: RelativeFile | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    source: str | None = None
    outputs: dict[str, list[float]] = Field(default_factory=dict)
    note: str | None = None


class Manifest(_Model):
    """``manifest.json``, format version 1."""

    format_version: int = Field(description="1; additive changes keep the number")
    name: str = Field(min_length=1)
    input: InputSpec
    outputs: list[OutputSpec] = Field(min_length=1)
    preprocessing: Preprocessing
    variants: dict[str, VariantEntry] = Field(min_length=1)
    default_variant: str | None = Field(default=None, description=(
        "the variant to ship: the fastest whose k-NN is within the accuracy gate (export/README.md)"))
    recommended: dict[str, str] | None = Field(default=None, description=(
        "per format, the variant to ship for an app of that format, by the same rule"))
    sample: Sample | None = None
    provenance: dict[str, Any] | None = Field(default=None, description="free-form: who made it, from what")
    validation: dict[str, Any] | None = Field(default=None, description="free-form: the gate figures")

    @field_validator("format_version", mode="before")
    @classmethod
    def _supported(cls, version: Any) -> Any:
        if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(f"format_version {version!r} is not supported by this edgedistill (supported: "
                             f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); upgrade edgedistill")
        return version

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        shape, layout = self.input.shape, self.input.layout
        hw = shape[2:] if layout == "NCHW" else shape[1:3]
        crop = self.preprocessing.spec["crop"]
        if all(isinstance(v, int) and v > 0 for v in hw) and list(hw) != crop:
            raise ValueError(f"preprocessing.crop {crop} does not match input.shape {shape}")
        if self.default_variant is not None and self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not among the variants "
                             f"({', '.join(self.variants)})")
        for fmt, name in (self.recommended or {}).items():
            if name not in self.variants or self.variants[name].format != fmt:
                raise ValueError(f"recommended[{fmt!r}] names {name!r}, which is no variant of format {fmt} "
                                 "in the bundle")
        return self


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Manifest` (what ``manifest.schema.json`` holds)."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edgedistill bundle manifest (format_version 1)"
    return schema


# ----------------------------------------------------------------------------- errors


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "the top level"


def _one_line(error: dict[str, Any]) -> str:
    """Pydantic's first error as this project's one line."""
    where, kind = _where(error["loc"]), error["type"]
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "missing":
        return f"no {where}"
    if kind == "literal_error":
        expected = error["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{where} {error['input']!r} is not one of {expected}"
    if kind in ("too_short", "too_long") and isinstance(error.get("input"), dict):
        return f"{where} must be a non-empty object"
    if kind in ("too_short", "too_long"):
        return f"{where} must be {'a non-empty list' if kind == 'too_short' and where == 'outputs' else error['msg'].lower()}"
    return f"{where}: {error['msg'][0].lower()}{error['msg'][1:]} (got {error.get('input')!r})"


def _fail(where: Path, message: str) -> EdgeDistillError:
    return EdgeDistillError(f"bad bundle manifest {where}: {message}")


def validate_manifest(manifest: Any, where: Path = Path(MANIFEST_NAME)) -> Manifest:
    """The manifest (a parsed JSON object, or a :class:`Manifest`) validated against the model;
    a one-line EdgeDistillError naming the first problem otherwise. Files are not checked."""
    if isinstance(manifest, Manifest):
        manifest = manifest.as_json()
    if not isinstance(manifest, dict):
        raise _fail(where, "the top level must be a JSON object")
    try:
        return Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise _fail(where, _one_line(exc.errors()[0])) from None


# ----------------------------------------------------------------------------- files


def variant_files(manifest: Manifest, bundle_dir: Path | str, name: str) -> list[tuple[Path, str | None]]:
    """Every file a variant needs, with its expected sha256 (None when not recorded)."""
    entry = manifest.variants[name]
    return registry.for_format(entry.format).variant_files(entry, Path(bundle_dir))


def missing_file(manifest: Manifest, bundle_dir: Path | str, name: str) -> str | None:
    """The first file variant ``name`` needs that is not in the bundle (None: all there)."""
    return next((p.name for p, _ in variant_files(manifest, bundle_dir, name) if not p.is_file()), None)


def _check_file(path: Path, bundle_dir: Path, where: Path, name: str, *, present: bool = True) -> None:
    """The file is inside the bundle once symlinks are followed and (``present``) exists."""
    if not path.is_file():
        if not present and not path.is_symlink():
            return
        raise _fail(where, f"variant {name!r} needs {path.name}, which is missing")
    real, root = os.path.realpath(path), os.path.realpath(bundle_dir)
    if os.path.commonpath([real, root]) != root:
        raise _fail(where, f"{path.name} of variant {name!r} is a link to {real}, outside the bundle")


def verify_variant(manifest: Manifest, bundle_dir: Path | str, name: str) -> list[str]:
    """Compare the files of variant ``name`` with their recorded sha256 (a flipped byte in a
    model otherwise yields finite but wrong embeddings). Returns the digests computed."""
    bundle_dir = Path(bundle_dir)
    where = bundle_dir / MANIFEST_NAME
    digests = []
    for path, digest in variant_files(manifest, bundle_dir, name):
        _check_file(path, bundle_dir, where, name)
        actual = sha256_file(path)
        if digest is not None and actual != str(digest).lower():
            raise _fail(where, f"{path.name} of variant {name!r} does not match its sha256 "
                               "(corrupted or modified; export the bundle again)")
        digests.append(actual)
    return digests


def read_manifest(bundle_dir: Path | str, verify: bool = False) -> Manifest:
    """Read ``<bundle_dir>/manifest.json``, validate it and check that its files lie inside
    the bundle. A missing variant file fails only the reader of that variant
    (:func:`variant_path`, :func:`verify_variant`; :func:`missing_file` tells): the others stay
    usable.

    With ``verify=True`` also compare every file's sha256 with the recorded one; readers that
    load one variant verify just that one (:func:`verify_variant`, which ``open_embedder``
    calls). Raises EdgeDistillError naming the problem.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise EdgeDistillError(f"bundle directory not found: {bundle_dir}")
    where = bundle_dir / MANIFEST_NAME
    if not where.is_file():
        raise EdgeDistillError(f"{bundle_dir} is not a bundle: it has no {MANIFEST_NAME}")
    manifest = validate_manifest(read_json(where), where)
    for name in manifest.variants:
        if verify:
            verify_variant(manifest, bundle_dir, name)
            continue
        for path, _ in variant_files(manifest, bundle_dir, name):
            _check_file(path, bundle_dir, where, name, present=False)
    sample = manifest.sample.file if manifest.sample is not None else None
    if sample and (bundle_dir / sample).exists():
        _check_file(bundle_dir / sample, bundle_dir, where, "sample")
    return manifest


# ----------------------------------------------------------------------------- choosing a variant


def default_variant(manifest: Manifest) -> str:
    """``default_variant`` if set, else the first fp32 variant, else the first one."""
    if manifest.default_variant:
        return manifest.default_variant
    return next((n for n, v in manifest.variants.items() if v.precision == "fp32"), next(iter(manifest.variants)))


def variant_path(manifest: Manifest, bundle_dir: Path | str, name: str | None = None) -> Path:
    """The model file of variant ``name`` (default: :func:`default_variant`)."""
    name = name or default_variant(manifest)
    if name not in manifest.variants:
        raise EdgeDistillError(f"bundle {manifest.name!r} has no variant {name!r} "
                               f"(available: {', '.join(manifest.variants)})")
    for path, _ in variant_files(manifest, bundle_dir, name):
        _check_file(path, Path(bundle_dir), Path(bundle_dir) / MANIFEST_NAME, name)
    return Path(bundle_dir) / manifest.variants[name].file


def pick_variant(manifest: Manifest, fmt: str, wanted: str | None = None) -> str:
    """The variant an app running ``fmt`` (a manifest format) uses: ``wanted`` (which must be
    of that format), else the one ``recommended`` for that format, else the default variant
    when it is of it, else the first fp32 variant of that format, else any of it."""
    variants = manifest.variants
    if wanted:
        if wanted not in variants:
            raise EdgeDistillError(f"the bundle has no variant {wanted!r} (it has {', '.join(variants)})")
        if variants[wanted].format != fmt:
            raise EdgeDistillError(f"variant {wanted!r} is {variants[wanted].format}, this app runs {fmt}")
        return wanted
    ours = [v for v in variants if variants[v].format == fmt]
    if not ours:
        raise EdgeDistillError(f"the bundle has no {fmt} variant (it has {', '.join(variants)})")
    recommended = (manifest.recommended or {}).get(fmt)
    if recommended in ours:
        return str(recommended)
    if manifest.default_variant in ours:
        return str(manifest.default_variant)
    return next((v for v in ours if variants[v].precision == "fp32"), ours[0])


if __name__ == "__main__":  # python -m edgedistill.runtime.manifest > manifest.schema.json
    json.dump(manifest_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
