"""Embedders without torch: ONNX Runtime and OpenVINO, behind one small interface (and
ExecuTorch, whose Python runtime loads torch when a program is opened).

An embedder maps a float32 NCHW batch (already preprocessed, see ``runtime.preprocess``) to
(B, D) float32 embeddings, for any batch size. ``eval.features.TorchEmbedder`` is the torch
one; the k-NN, the export gates and the deploy examples take any of them. Sessions come from
``runtime.sessions``, the one place runtimes are configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from edgedistill.errors import EdgeDistillError

__all__ = ["Embedder", "OnnxEmbedder", "OpenVinoEmbedder", "ExecuTorchEmbedder", "open_embedder"]


@runtime_checkable
class Embedder(Protocol):
    """``embed((B, 3, H, W) float32) -> (B, D) float32``; ``name`` and ``dim`` (D, or None when
    the model does not declare it)."""

    name: str
    dim: int | None

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


def _as_batch(batch: np.ndarray, dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim != 4:
        raise ValueError(f"an embedder takes a (B, C, H, W) batch, got shape {batch.shape}")
    return np.ascontiguousarray(batch, dtype=dtype)


def _static(dim: Any) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and dim > 0 else None


class OnnxEmbedder:
    """An ONNX model in an ONNX Runtime session (``runtime.sessions``).

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
        providers: execution providers in priority order (default CPU only).
        output: the output to return; a model with a single output may name it otherwise.
    """

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: Sequence[str] | None = None, output: str = "embedding",
                 name: str | None = None) -> None:
        from edgedistill.runtime.sessions import onnxruntime_session

        self.path = Path(path)
        self.session, self.settings = onnxruntime_session(self.path, threads=threads, providers=providers)
        self.threads = threads
        self.load_seconds = self.settings["load_seconds"]
        self.providers = self.session.get_providers()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise EdgeDistillError(f"{self.path} has {len(inputs)} inputs; an embedder takes one image input")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self._input_dtype = np.dtype(np.float16 if inputs[0].type == "tensor(float16)" else np.float32)
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        if output in names:
            chosen = outputs[names.index(output)]
        elif len(outputs) == 1:
            chosen = outputs[0]
        else:
            raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {', '.join(names)})")
        self.output_name = chosen.name
        self.dim = _static(chosen.shape[-1]) if chosen.shape else None
        self.name = name or f"onnxruntime:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        x = _as_batch(batch, self._input_dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        return np.asarray(out, dtype=np.float32)


class OpenVinoEmbedder:
    """An OpenVINO IR (.xml + .bin) compiled for a device (``runtime.sessions``).

    Args:
        path_xml: the .xml file (the .bin beside it unless ``weights`` says otherwise).
        threads: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).
        precision: ``INFERENCE_PRECISION_HINT``: "f32" (default: true fp32; on CPUs with bf16
            OpenVINO would otherwise run an FP32 model in bf16), "bf16", "f16", or None to
            leave the device default.
        device: "CPU", "GPU", "NPU", "AUTO", ...
        config: further compile properties (e.g. {"PERFORMANCE_HINT": "THROUGHPUT"}).
    """

    def __init__(self, path_xml: str | Path, threads: int | None = None, precision: str | None = "f32",
                 device: str = "CPU", output: str = "embedding", name: str | None = None,
                 config: dict[str, Any] | None = None, weights: str | Path | None = None) -> None:
        from edgedistill.runtime.sessions import openvino_compiled

        self.path = Path(path_xml)
        self.compiled, self.settings = openvino_compiled(self.path, weights, threads=threads, precision=precision,
                                                         device=device, properties=config)
        self.threads, self.precision, self.device = threads, precision, device
        self.properties = self.settings["properties"]
        self.load_seconds = self.settings["load_seconds"]
        if len(self.compiled.inputs) != 1:
            raise EdgeDistillError(f"{self.path} has {len(self.compiled.inputs)} inputs; "
                                   "an embedder takes one image input")
        self.input_name = self.compiled.inputs[0].get_any_name()
        outputs = list(self.compiled.outputs)
        chosen = next((o for o in outputs if output in o.get_names()), None)
        if chosen is None:
            if len(outputs) != 1:
                names = ", ".join(o.get_any_name() for o in outputs)
                raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {names})")
            chosen = outputs[0]
        self._output = chosen
        self.output_name = chosen.get_any_name()
        last = chosen.get_partial_shape()[-1]
        self.dim = last.get_length() if last.is_static else None
        self._request = self.compiled.create_infer_request()
        self.name = name or f"openvino-{precision or 'default'}:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        result = self._request.infer({0: _as_batch(batch)})
        return np.array(result[self._output], dtype=np.float32, copy=True)


class ExecuTorchEmbedder:
    """An ExecuTorch program (``.pte``, XNNPACK delegate) through ExecuTorch's Python runtime.

    A ``.pte`` does not name its outputs: ``outputs`` lists them in order (the manifest's), and
    ``output`` picks one. ``threads`` sizes ExecuTorch's thread pool, which is per process.
    """

    def __init__(self, path: str | Path, threads: int | None = None, output: str = "embedding",
                 outputs: Sequence[str] = ("embedding",), name: str | None = None) -> None:
        from edgedistill.runtime.sessions import executorch_method

        self.path = Path(path)
        if output not in outputs:
            raise EdgeDistillError(f"{self.path} has no output {output!r} (outputs: {', '.join(outputs)})")
        self.method, self.settings = executorch_method(self.path, threads=threads)
        self.threads, self.load_seconds = threads, self.settings["load_seconds"]
        self._index = list(outputs).index(output)
        meta = self.method.metadata
        # a dynamic batch axis is planned up to a bound: larger batches go in chunks
        self.max_batch = int(meta.input_tensor_meta(0).sizes()[0])
        self.dim = _static(meta.output_tensor_meta(self._index).sizes()[-1])
        self.name = name or f"executorch:{self.path.name}"

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 -> (B, D) float32."""
        import torch  # the runtime takes and returns torch tensors

        x = torch.from_numpy(_as_batch(batch))
        parts = [self.method.execute((x[i:i + self.max_batch],))[self._index] for i in range(0, len(x), self.max_batch)]
        return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts]) if parts else \
            np.zeros((0, self.dim or 0), np.float32)


def open_embedder(path_or_bundle: str | Path, variant: str | None = None, *, verify: bool = True,
                  **kwargs: Any) -> Any:
    """An embedder for an .onnx file, an OpenVINO .xml, or a bundle directory (``variant``
    picks the model; default: the manifest's default variant). ``kwargs`` go to the embedder
    (threads, providers, precision, device...).

    ``verify``: a bundle variant's files are checked against the manifest's sha256 first
    (hashing costs a fraction of loading the model); pass False in an app that verified the
    bundle when it installed it."""
    from edgedistill.runtime.manifest import default_variant, read_manifest, variant_path, verify_variant

    path = Path(path_or_bundle)
    if path.is_dir():
        manifest = read_manifest(path)
        variant = variant or default_variant(manifest)
        model = variant_path(manifest, path, variant)
        if verify:
            verify_variant(manifest, path, variant)
        fmt = manifest["variants"][variant]["format"]
        kwargs.setdefault("output", manifest["outputs"][0]["name"])
        kwargs.setdefault("name", f"{manifest['name']}:{variant}")
        if fmt == "onnx":
            return OnnxEmbedder(model, **kwargs)
        if fmt == "executorch":
            kwargs.setdefault("outputs", [o["name"] for o in manifest["outputs"]])
            return ExecuTorchEmbedder(model, **kwargs)
        from edgedistill.runtime.manifest import variant_files

        kwargs.setdefault("weights", variant_files(manifest, path, variant)[1][0])
        hint = manifest["variants"][variant].get("inference_precision_hint")
        if hint:  # what the export validated with (f32: OpenVINO would otherwise pick bf16 here)
            kwargs.setdefault("precision", hint)
        return OpenVinoEmbedder(model, **kwargs)
    if variant is not None:
        raise EdgeDistillError(f"variant={variant!r} needs a bundle directory, got the file {path}")
    if not path.exists():
        raise EdgeDistillError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxEmbedder(path, **kwargs)
    if suffix == ".xml":
        return OpenVinoEmbedder(path, **kwargs)
    if suffix == ".pte":
        return ExecuTorchEmbedder(path, **kwargs)
    raise EdgeDistillError(f"cannot tell the model format of {path}: expected a .onnx file, "
                           "an OpenVINO .xml, an ExecuTorch .pte or a bundle directory with a manifest.json")
