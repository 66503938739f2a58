"""Which ONNX Runtime INT8 to ship: every option side by side, in one process, interleaved.

    python benchmarks/ort_int8_options.py [--run runs/NAME] [--data ../shared/data/cifar10-subset]
                                          [--threads 2] [--rounds 40] [--burst 8] [--knn 1000]

A ViT-T/16 at 224 px (random init, or the student of ``--run``) is exported twice, the plain
graph and the fused-attention one (``runtime.onnxruntime.fused``), then quantized every way ONNX Runtime
offers: static or dynamic; QDQ or QOperator; S8S8 or U8S8; with or without ``quant_pre_process``;
per-channel or not. Each candidate's p50 at batch 1 is measured in rounds that alternate the
candidates (machine noise hits them alike), its cosine against torch FP32 on real images, and,
with ``--data``, its k-NN top-1 through ``eval.features`` (the export gate's own pipeline).
The winner goes into ``export/quantize.py``; the table goes into ``export/README.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def export_mha_graph(graph: object, path: Path, size: int) -> None:
    """The alternative fused graph: q, k and v as three linears (three quantizable MatMuls)
    feeding ``com.microsoft.MultiHeadAttention`` (ORT's CPU kernel takes no packed QKV)."""
    import copy
    import warnings

    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgedistill.export.onnx import exporter_settings

    class MHAOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, heads):  # noqa: ANN001, ANN205
            b, n, c = q.shape
            split = [t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v)]
            return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, n, c)

        @staticmethod
        def symbolic(g, q, k, v, heads):  # noqa: ANN001, ANN205
            return g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=int(heads)).setType(q.type())

    class ThreeLinears(nn.Module):
        def __init__(self, attn: nn.Module) -> None:
            super().__init__()
            self.q, self.k, self.v = (nn.Linear(attn.qkv.in_features, attn.qkv.in_features) for _ in range(3))
            for i, linear in enumerate((self.q, self.k, self.v)):
                rows = slice(i * linear.out_features, (i + 1) * linear.out_features)
                linear.weight.data.copy_(attn.qkv.weight.data[rows])
                linear.bias.data.copy_(attn.qkv.bias.data[rows])
            self.proj, self.heads = attn.proj, attn.num_heads

        def forward(self, x: torch.Tensor, attn_mask: object = None, is_causal: bool = False) -> torch.Tensor:
            return self.proj(MHAOp.apply(self.q(x), self.k(x), self.v(x), self.heads))

    model = copy.deepcopy(graph).eval()
    for block in model.backbone.blocks:
        block.attn = ThreeLinears(block.attn)
    kwargs = dict(exporter_settings(18, model.output_names), training=torch.onnx.TrainingMode.EVAL,
                  custom_opsets={"com.microsoft": 1})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(path), verbose=False, **kwargs)


def build_graphs(run: str | None, work: Path) -> tuple[object, Path, Path]:
    import timm
    import torch

    from edgedistill.export.onnx import EmbeddingModel, export_onnx
    from edgedistill.runtime.onnxruntime.fused import export_fused_onnx

    if run:
        from edgedistill.models.backbone_io import load_backbone

        model, _ = load_backbone(run, role="student")
    else:
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    graph = EmbeddingModel(model).eval()
    size = int(model.patch_embed.img_size[0])
    plain, fused = work / "plain.onnx", work / "fused.onnx"
    export_onnx(graph, plain, size, 18)
    export_fused_onnx(graph, fused, lambda module, path, extra: export_onnx(module, path, size, 18, **extra))
    return graph, plain, fused


def candidates(graph: object, plain: Path, fused: Path, calib: np.ndarray, work: Path) -> dict[str, Path]:
    """Every ONNX Runtime quantization worth trying, by name."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers import optimizer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgedistill.runtime.onnxruntime.quantize import ArrayCalibrationReader

    out: dict[str, Path] = {"fp32 plain": plain, "fp32 fused": fused}
    pre = work / "plain_pre.onnx"
    quant_pre_process(str(plain), str(pre), skip_symbolic_shape=True)

    def static(name: str, source: Path, fmt: object, act: object, ops: list[str] | None, per_channel: bool = True):
        path = work / (name.replace(" ", "_").replace(",", "") + ".onnx")
        quantize_static(str(source), str(path), ArrayCalibrationReader(calib, "pixel_values"), quant_format=fmt,
                        op_types_to_quantize=ops, per_channel=per_channel, activation_type=act,
                        weight_type=QuantType.QInt8)
        out[name] = path

    def dynamic(name: str, source: Path, per_channel: bool, ops: list[str] | None = None):
        path = work / (name.split(" (")[0].replace(" ", "_").replace(",", "") + ".onnx")
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=ops)
        out[name] = path

    mm = ["MatMul", "Gemm", "Conv"]
    static("static QDQ S8S8 plain (previous)", plain, QuantFormat.QDQ, QuantType.QInt8, mm)
    static("static QDQ U8S8 preprocessed", pre, QuantFormat.QDQ, QuantType.QUInt8, mm)
    static("static QOperator U8S8 plain", plain, QuantFormat.QOperator, QuantType.QUInt8, mm)
    dynamic("dynamic plain (quantize_dynamic's defaults)", plain, per_channel=False)
    dynamic("dynamic plain per-channel", plain, per_channel=True)
    dynamic("dynamic plain, Conv float (onnx_int8)", plain, per_channel=False, ops=["MatMul", "Attention"])
    dynamic("dynamic fused (QAttention)", fused, per_channel=False)
    dynamic("dynamic fused per-channel", fused, per_channel=True)
    dynamic("dynamic fused, Conv float (onnx_fused_int8)", fused, per_channel=False, ops=["MatMul", "Attention"])
    dynamic("dynamic fused, MatMul only (Attention float)", fused, per_channel=False, ops=["MatMul"])
    static("static QDQ S8S8 fused", fused, QuantFormat.QDQ, QuantType.QInt8, mm)
    conv_float = ["MatMul", "Attention"]
    mha = work / "mha.onnx"
    export_mha_graph(graph, mha, int(graph.backbone.patch_embed.img_size[0]))
    dynamic("dynamic MultiHeadAttention graph, Conv float", mha, per_channel=False, ops=conv_float)
    optimized = work / "mha_optimized.onnx"
    optimizer.optimize_model(str(mha), model_type="vit", num_heads=int(graph.backbone.blocks[0].attn.num_heads),
                             hidden_size=int(graph.backbone.embed_dim), opt_level=0).save_model_to_file(str(optimized))
    path = work / "optimized_dynamic.onnx"
    quantize_dynamic(str(optimized), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=conv_float,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    out["transformers optimizer (SkipLayerNorm, BiasGelu) + dynamic, MHA graph"] = path
    nbits = MatMulNBitsQuantizer(onnx.load(str(plain)), bits=8, block_size=64, is_symmetric=True, accuracy_level=4)
    nbits.process()
    nbits.model.save_model_to_file(str(work / "nbits8.onnx"))
    out["MatMulNBits 8-bit, block 64, int8 compute"] = work / "nbits8.onnx"
    return out


def measure(paths: dict[str, Path], image: np.ndarray, threads: int, rounds: int, burst: int) -> dict[str, float]:
    """p50 ms at batch 1 per candidate: ``rounds`` rounds of ``burst`` runs each, the candidates
    alternating in short bursts (order rotated) so the host's slow spells hit them alike."""
    from edgedistill.runtime.onnxruntime.engine import open_session

    sessions = {name: open_session(str(path), threads=threads)[0] for name, path in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            session = sessions[name]
            session.run(None, {"pixel_values": image})
            for _ in range(burst):
                start = time.perf_counter()
                session.run(None, {"pixel_values": image})
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def fidelity(paths: dict[str, Path], graph: object, images: np.ndarray) -> dict[str, float]:
    """Smallest cosine against torch FP32 over ``images``."""
    import torch

    from edgedistill.runtime.knn import compare
    from edgedistill.runtime import OnnxEmbedder

    with torch.inference_mode():
        ref = graph(torch.from_numpy(images)).numpy()
    return {name: compare(ref, OnnxEmbedder(path, threads=2).embed(images))["min_cosine"]
            for name, path in paths.items()}


def knn(paths: dict[str, Path], data: str, count: int, size: int) -> dict[str, float]:
    from edgedistill.data import eval_preprocessing
    from edgedistill.eval.features import InMemorySplit, knn_of
    from edgedistill.export.images import labeled_pair
    from edgedistill.runtime import OnnxEmbedder

    bank, queries = labeled_pair(data, eval_preprocessing(size))
    pick = np.random.default_rng(0)
    bank.paths, bank.labels = _subset(bank, pick, count)
    queries.paths, queries.labels = _subset(queries, pick, count)
    bank, queries = InMemorySplit(bank), InMemorySplit(queries)
    return {name: knn_of(OnnxEmbedder(path, threads=2), bank, queries, num_classes=len(bank.classes),
                         progress=False)["top1"] for name, path in paths.items()}


def _subset(dataset: object, rng: np.random.Generator, count: int) -> tuple[list, list]:
    idx = np.sort(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False))
    return [dataset.paths[i] for i in idx], [dataset.labels[i] for i in idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a distill run directory (default: random-init ViT-T/16)")
    parser.add_argument("--data", default=None, help="labeled train/val folder for calibration and k-NN")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--burst", type=int, default=8, help="runs per candidate per round")
    parser.add_argument("--knn", type=int, default=1000, help="bank and query images for the k-NN (with --data)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graph, plain, fused = build_graphs(args.run, work)
        size = int(graph.backbone.patch_embed.img_size[0])
        images = _images(args.data, size)
        paths = candidates(graph, plain, fused, images[:32], work)
        p50 = measure(paths, images[:1], args.threads, args.rounds, args.burst)
        cosine = fidelity(paths, graph, images[32:48])
        top1 = knn(paths, args.data, args.knn, size) if args.data else {}
    base, peer = p50["fp32 plain"], p50["dynamic plain (quantize_dynamic's defaults)"]
    print("\n| option | p50 ms | vs fp32 plain | vs quantize_dynamic | cosine | k-NN top-1 |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for name in sorted(paths, key=p50.get):
        k = f"{top1[name]:.2f}" if name in top1 else "-"
        print(f"| {name} | {p50[name]:.2f} | {p50[name] / base:.3f} | {p50[name] / peer:.3f} | {cosine[name]:.5f} | {k} |")


def _images(data: str | None, size: int) -> np.ndarray:
    """48 preprocessed real images (calibration 32, fidelity 16), or seeded noise without data."""
    if data is None:
        return np.random.default_rng(0).standard_normal((48, 3, size, size)).astype(np.float32)
    from edgedistill.data import eval_preprocessing
    from edgedistill.export.images import load_arrays, open_split, pick_indices

    spec = eval_preprocessing(size)
    split = open_split(data, "train", spec)
    return load_arrays(split, pick_indices(len(split), 48, seed=0), spec)[0]


if __name__ == "__main__":
    main()
