"""``--model`` as an embedder: one interface over torch and every runtime of the registry.

A model argument is one of

- a run directory (``student.*`` from ``distill``, ``teacher.*`` from ``pretrain``), a saved
  backbone ``.safetensors``/``.json`` pair                         -> torch;
- a model file a runtime of the registry opens (``registry.suffixes()``) -> that runtime;
- a bundle directory (``manifest.json``), ``variant`` picks a model -> the variant's runtime;
- anything ``--teacher`` accepts besides (a checkpoint file with ``arch``, a timm hub name,
  ``random``)                                                      -> torch.

Whatever the backend, the preprocessing is described by one spec dict (the manifest's
``preprocessing`` format): a bundle brings its own, a model file inside a bundle directory
takes the bundle's, a run directory takes ``data.mean``/``data.std`` from its
``config.yaml``, and everything else the eval transform at the model's input size with
ImageNet mean and std.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from edgedistill.errors import EdgeDistillError

if TYPE_CHECKING:
    from edgedistill.runtime.preprocessing import PreprocessSpec
    from edgedistill.runtime.manifest import Manifest

__all__ = ["EvalModel", "open_model", "open_torch_module", "spec_transform", "standard_spec", "model_help"]

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


def model_help() -> str:
    """What ``--model`` takes (the runtimes' model files from the registry)."""
    from edgedistill.runtime import registry

    return (f"run directory, student/teacher .safetensors, a model file ({registry.model_files()}), bundle "
            "directory (with --variant), checkpoint file (with --arch), timm hub name, or 'random'")


@dataclass
class EvalModel:
    """An opened ``--model``.

    ``embedder.embed((B, 3, H, W) float32) -> (B, D) float32``; a torch model also has
    ``embed_torch`` and ``module`` (the ``nn.Module``, for attention maps).
    """

    embedder: Any
    backend: str  # "torch" or the name of the runtime that runs it
    source: str
    preprocessing: PreprocessSpec
    module: Any = None  # the torch nn.Module (torch backend only)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(getattr(self.embedder, "name", self.source))

    @property
    def dim(self) -> int | None:
        return getattr(self.embedder, "dim", None)

    @property
    def img_size(self) -> int:
        return int(self.preprocessing["crop"][0])

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (what a ``--json`` report records about the model)."""
        import json

        summary = {"source": self.source, "backend": self.backend, "name": self.name, "dim": self.dim,
                   "preprocessing": self.preprocessing, **self.info}
        return json.loads(json.dumps(summary, default=str))  # loader details may hold paths, tuples


def standard_spec(img_size: int, mean: Any = None, std: Any = None) -> PreprocessSpec:
    """The eval transform at ``img_size`` as a validated preprocessing spec (ImageNet mean/std
    unless given)."""
    from edgedistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_preprocessing
    from edgedistill.runtime.preprocessing import validate_spec

    return validate_spec(eval_preprocessing(int(img_size), mean or IMAGENET_MEAN, std or IMAGENET_STD))


def _is_standard(spec: PreprocessSpec) -> bool:
    """True when torchvision's eval transform reproduces ``spec`` (then it is used as is)."""
    from edgedistill.data.transforms import resize_size

    crop = spec["crop"]
    return (crop[0] == crop[1] and spec["resize"] == resize_size(crop[0]) and spec["interpolation"] == "bicubic"
            and spec["channel_order"] == "RGB" and spec["layout"] == "NCHW" and spec["dtype"] == "float32"
            and abs(spec["scale"] - 1 / 255) < 1e-12)


def spec_transform(spec: Mapping[str, Any]) -> Callable[[Any], Any]:
    """PIL RGB image -> model input, per a preprocessing spec.

    The standard spec (what ``export`` writes for the eval transform) maps to
    :func:`edgedistill.data.eval_transform` itself; anything else (BGR, NHWC, another resize
    rule) to the torch-free :func:`edgedistill.runtime.preprocessing.preprocess`, which a bundle's
    apps use too. The two agree bit for bit on the standard spec.
    """
    from edgedistill.runtime.preprocessing import validate_spec

    spec = validate_spec(spec)
    if _is_standard(spec):
        from edgedistill.data.transforms import eval_transform

        return eval_transform(spec["crop"][0], spec["mean"], spec["std"])
    return _NumpyTransform(spec)


class _NumpyTransform:
    """Picklable (DataLoader workers) wrapper around ``runtime.preprocessing.preprocess``."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, img: Any) -> Any:
        import torch

        from edgedistill.runtime.preprocessing import preprocess

        return torch.from_numpy(preprocess(img, self.spec))


def _run_mean_std(folder: Path) -> tuple[Any, Any]:
    """``data.mean``/``data.std`` of the run in ``folder``, else (None, None)."""
    from edgedistill.rundir import RunDir

    cfg = RunDir.of(folder).config_or_none()
    return (list(cfg.data.mean), list(cfg.data.std)) if cfg is not None else (None, None)


def _bundle_of(path: Path) -> tuple[Manifest, str] | None:
    """(manifest, variant) when ``path`` is a model file listed in the bundle it sits in."""
    from edgedistill.runtime.manifest import MANIFEST_NAME, read_manifest

    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    try:
        manifest = read_manifest(path.parent)
    except EdgeDistillError:
        return None
    for name, var in manifest.variants.items():
        if (path.parent / var.file).resolve() == path.resolve():
            return manifest, name
    return None


def open_torch_module(module: Any, source: str, spec: PreprocessSpec | None = None, device: str = "auto",
                      threads: int | None = None, info: dict[str, Any] | None = None) -> EvalModel:
    """An :class:`EvalModel` of a timm ViT already built (``spec``: the eval transform at its
    input size unless given)."""
    from edgedistill.eval.features import TorchEmbedder
    from edgedistill.distributed import resolve_device

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    module.eval()
    embedder = TorchEmbedder(module, device=resolve_device(device), name=f"torch:{Path(source).name or source}")
    spec = spec if spec is not None else standard_spec(_module_img_size(module))
    return EvalModel(embedder, "torch", source, spec, module=module, info=dict(info or {}))


def _module_img_size(module: Any) -> int:
    size = module.patch_embed.img_size
    return int(size[0]) if size is not None else 224


def open_model(
    source: str | Path,
    *,
    variant: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    arch: str = "",
    img_size: int = 0,
    patch_size: int = 0,
    depth: int = 0,
    precision: str | None = "f32",
    seed: int = 0,
    verify: bool = True,
) -> EvalModel:
    """Open ``--model`` (see the module docstring) as an :class:`EvalModel`.

    Args:
        variant: the bundle variant (bundle directories only; default: the manifest's default).
        device: torch device (``auto`` | ``cpu`` | ``cuda[:N]``); exported models run on CPU.
        threads: intra-op threads for any backend (None: the backend's default).
        arch, img_size, patch_size, depth: the architecture of a checkpoint file, ``random``
            or a hub name (as for ``--teacher``); ``img_size`` also sets the input size of an
            exported model whose input size is dynamic.
        precision: the inference precision hint of a runtime that takes one (``f32`` = true
            fp32, ``bf16``, ``f16``; None: the manifest's, else the runtime's default).
        seed: initialization seed of ``random`` (a reproducible random-init baseline).
        verify: check a bundle variant's files against the manifest's sha256 before loading.
    """
    from edgedistill.limits import check_device
    from edgedistill.runtime import registry
    from edgedistill.runtime.manifest import MANIFEST_NAME

    device = check_device(device, "--device")

    text = str(source).strip()
    if not text:
        raise EdgeDistillError(f"--model is empty (expected a {model_help()})")
    path = Path(text).expanduser()
    is_bundle = path.is_dir() and (path / MANIFEST_NAME).is_file()
    if variant is not None and not is_bundle:
        raise EdgeDistillError(f"--variant {variant} needs a bundle directory (with {MANIFEST_NAME}), got {text}")

    if is_bundle or (path.is_file() and registry.for_suffix(path.suffix) is not None):
        if device not in ("auto", "cpu"):
            raise EdgeDistillError(f"--device {device}: exported models are evaluated on the CPU "
                                   "(`edgedistill bench --device` measures them on accelerators)")
        return _open_exported(path, text, is_bundle, variant, threads, img_size, precision, verify)
    if path.is_dir() or (path.is_file() and (path.suffix == ".json" or (
            path.suffix == ".safetensors" and path.with_suffix(".json").is_file()))):
        return _open_saved(path, text, device, threads, img_size)
    return _open_loadable(path, text, device, threads, arch, img_size, patch_size, depth, seed)


def _open_exported(path: Path, text: str, is_bundle: bool, variant: str | None, threads: int | None,
                   img_size: int, precision: str | None, verify: bool) -> EvalModel:
    """A bundle variant, or a model file (the bundle it sits in supplies the preprocessing)."""
    from edgedistill.runtime import registry
    from edgedistill.runtime.embedders import open_embedder
    from edgedistill.runtime.manifest import default_variant, read_manifest

    kwargs: dict[str, Any] = {"threads": threads, "verify": verify}
    if precision is not None:
        kwargs["precision"] = precision  # for a runtime that takes a precision hint; the others ignore it
    if is_bundle:
        manifest = read_manifest(path)
        variant = variant or default_variant(manifest)
        if variant not in manifest.variants:
            raise EdgeDistillError(f"bundle {manifest.name!r} has no variant {variant!r} "
                                   f"(available: {', '.join(manifest.variants)})")
        bundle: tuple[Manifest, str] | None = (manifest, variant)
    else:
        bundle = _bundle_of(path)
        if bundle is not None and verify:  # a model file of a bundle: checked like the bundle
            from edgedistill.runtime.manifest import verify_variant

            verify_variant(bundle[0], path.parent, bundle[1])
        kwargs.pop("verify")
    runtime = (registry.for_format(bundle[0].variants[bundle[1]].format) if bundle
               else registry.for_suffix(path.suffix))
    assert runtime is not None  # open_model dispatched on the suffix
    embedder = open_embedder(path, variant, **kwargs) if is_bundle else open_embedder(path, **kwargs)
    if bundle:
        manifest, variant = bundle
        spec = manifest.preprocessing.spec
        if img_size and spec["crop"] != [img_size, img_size]:
            raise EdgeDistillError(f"--img-size {img_size} contradicts the bundle's preprocessing "
                                   f"(crop {spec['crop']}); leave it out")
        var = manifest.variants[variant]
        info: dict[str, Any] = {"bundle": manifest.name, "variant": variant, "format": var.format,
                                "precision": var.precision}
    else:
        size = runtime.input_size(embedder)
        if size and img_size and size != img_size:
            raise EdgeDistillError(f"--img-size {img_size} contradicts {path.name}, whose input is {size}x{size}")
        size = size or img_size
        if not size:
            raise EdgeDistillError(f"{path.name} has a dynamic input size: pass --img-size")
        spec = standard_spec(size)
        info = {"format": runtime.format}
    if precision is not None and getattr(embedder, "precision", None) is not None:
        info["inference_precision"] = embedder.precision
    return EvalModel(embedder, runtime.name, text, spec, info=info)


def _open_saved(path: Path, text: str, device: str, threads: int | None, img_size: int) -> EvalModel:
    """A saved backbone: a run directory or a .safetensors/.json pair (torch)."""
    from edgedistill.models.backbone_io import load_backbone

    module, meta = load_backbone(path)
    folder = path if path.is_dir() else path.parent
    mean, std = _run_mean_std(folder)
    size = _module_img_size(module)
    if img_size and img_size != size:
        raise EdgeDistillError(f"--img-size {img_size} contradicts the saved backbone, "
                               f"which takes {size}-px images")
    info = {"arch": meta["arch"], "kwargs": meta["kwargs"], "role": meta.get("role"),
            "weights": meta["weights_path"], "sha256": meta["sha256"]}
    return open_torch_module(module, text, standard_spec(size, mean, std), device, threads, info)


def _registry_suffixes() -> tuple[str, ...]:
    from edgedistill.runtime import registry

    return registry.suffixes()


def _open_loadable(path: Path, text: str, device: str, threads: int | None, arch: str, img_size: int,
                   patch_size: int, depth: int, seed: int) -> EvalModel:
    """What ``--teacher`` accepts besides: a checkpoint file with ``arch``, a hub name, ``random``."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in _CHECKPOINT_SUFFIXES + (".safetensors",):
            raise EdgeDistillError(f"cannot tell the model format of {path}: expected a {model_help()}")
        if not arch:
            raise EdgeDistillError(f"{path.name} is a bare checkpoint: pass its architecture with --arch "
                                   "(e.g. --arch vit_small_patch16_224 --patch-size 16)")
    elif text.lower() != "random" and ("/" in text or "\\" in text or text.startswith((".", "~"))
                                       or path.suffix.lower() in (*_CHECKPOINT_SUFFIXES, ".safetensors", ".json",
                                                                  *_registry_suffixes())):
        raise EdgeDistillError(f"model not found: {text}")

    # --- torch: checkpoint file + arch, timm hub name, random
    from edgedistill.models.teacher import load_teacher

    size = img_size
    if not size and "." in text and not path.exists() and text.lower() != "random":
        import timm

        cfg = timm.models.get_pretrained_cfg(text) if timm.is_model(text.split(".")[0]) else None
        size = int(cfg.input_size[-1]) if cfg is not None else 0
    size = size or 224
    import torch

    # fork_rng: a seeded random init that leaves the caller's RNG where it was
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # load_teacher's warning about a random *teacher* does not apply to an evaluated model
        warnings.filterwarnings("ignore", message=".*randomly initialized.*")
        module, tinfo = load_teacher(text, arch or "vit_tiny_patch16_224", size, patch_size,
                                     **({"depth": depth} if depth else {}))
    return open_torch_module(module, text, standard_spec(_module_img_size(module)), device, threads, dict(tinfo))
