"""ExecuTorch XNNPACK INT8 on a ViT-T/16 at 224 px: which PT2E quantization scheme keeps the
export gates (how the ``executorch_int8`` variant's scheme was chosen; figures in
``export/README.md``).

Every scheme quantizes the same random-init ViT-T/16 (seed 0, as ``bench_vit_t_224.py``),
calibrated on the same 64 train images, lowered to XNNPACK and run through the runtime's
``ExecuTorchEmbedder`` (ExecuTorch's Python runtime). For each, against torch FP32 on the
same images: the smallest and mean embedding cosine over the val images, the k-NN top-1
(k = 20, DINO weighting; CIFAR-10 subset upsampled to 224 px through the bundle's
preprocessing) and its knn_delta (minus torch FP32's), and the p50 latency at batch 1 (interleaved with the FP32
program's, so both see the same machine).

Schemes (the XNNPACKQuantizer's knobs):

* ``default``: ``set_global(get_symmetric_quantization_config())``: per-tensor weights,
  every pattern it knows (linear, conv, add, mul, ...), static activations;
* ``per_channel_all``: the same with per-channel weights;
* ``per_channel_linear_conv`` (chosen): per-channel weights, only linear and conv2d;
* ``per_tensor_linear_conv``: per-tensor weights, only linear and conv2d;
* ``dynamic_linear``: per-channel weights, activations quantized at run time (dynamic), linear only;
* ``per_channel_linear``: per-channel, linear only (the patch-embedding conv in float).

Usage: python benchmarks/executorch_int8.py [--data ../shared/data/cifar10-subset]
       [--train-per-class 100] [--val-per-class 100] [--threads 2] [--runs 30] [--schemes a,b]
       [--out runs/executorch_int8.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ARCH = "vit_tiny_patch16_224"
SCHEMES = ("default", "per_channel_all", "per_channel_linear_conv", "per_tensor_linear_conv", "dynamic_linear",
           "per_channel_linear")


def quantizer_for(scheme: str):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    from edgedistill.runtime.executorch.build import int8_quantizer

    if scheme == "default":
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    if scheme == "per_channel_all":
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if scheme == "per_channel_linear_conv":
        return int8_quantizer()  # the product's scheme
    if scheme == "per_tensor_linear_conv":
        return int8_quantizer(per_channel=False)
    if scheme == "per_channel_linear":
        return int8_quantizer(ops=("linear",))
    if scheme == "dynamic_linear":
        import torch

        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        return XNNPACKQuantizer().set_operator_type(torch.ops.aten.linear.default, config)
    raise SystemExit(f"unknown scheme {scheme}")


def load_images(data: Path, per_class: int, split: str, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    from edgedistill.runtime.preprocessing import preprocess_batch

    paths, labels = [], []
    for c, folder in enumerate(sorted(p for p in (data / split).iterdir() if p.is_dir())):
        for image in sorted(folder.iterdir())[:per_class]:
            paths.append(image)
            labels.append(c)
    return preprocess_batch(paths, spec), np.asarray(labels)


def embed(fn, images: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def knn_top1(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> float:
    from edgedistill.runtime.knn import knn_predict

    preds = knn_predict(bank, bank_labels, queries, k=20, num_classes=int(bank_labels.max()) + 1)
    return float((preds == labels).mean() * 100)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def p50s(embedders: dict, image: np.ndarray, runs: int, rounds: int = 5) -> dict[str, float]:
    """p50 ms at batch 1 of each embedder, in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for r in range(rounds):
        for name, e in embedders.items():
            e.embed(image)
            for _ in range(max(runs // rounds, 1)):
                start = time.perf_counter()
                e.embed(image)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(float(np.median(t)), 2) for name, t in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-subset")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "executorch_int8")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from edgedistill.data import eval_preprocessing
    from edgedistill.runtime.executorch.build import export_executorch_fp32, export_executorch_int8
    from edgedistill.export.images import pick_indices
    from edgedistill.export.onnx import EmbeddingModel
    from edgedistill.models.vit import create_vit
    from edgedistill.runtime.executorch.embedder import ExecuTorchEmbedder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = create_vit(ARCH, img_size=224)
    graph = EmbeddingModel(model.eval()).eval()
    spec = eval_preprocessing(224)
    bank_x, bank_y = load_images(args.data, args.train_per_class, "train", spec)
    val_x, val_y = load_images(args.data, args.val_per_class, "val", spec)
    calib = bank_x[pick_indices(len(bank_x), args.calib, 0)]
    print(f"images: bank {len(bank_x)}, val {len(val_x)}, calibration {len(calib)}", flush=True)

    with torch.inference_mode():
        ref_bank = embed(lambda x: graph(torch.from_numpy(x)).numpy(), bank_x)
        ref_val = embed(lambda x: graph(torch.from_numpy(x)).numpy(), val_x)
    ref_top1 = knn_top1(ref_bank, bank_y, ref_val, val_y)
    print(f"torch fp32 k-NN top-1 {ref_top1:.2f}", flush=True)

    args.work.mkdir(parents=True, exist_ok=True)
    fp32_path = args.work / "fp32.pte"
    if not fp32_path.is_file():
        export_executorch_fp32(graph, fp32_path, 224)
    fp32 = ExecuTorchEmbedder(fp32_path, threads=args.threads)
    results = []
    for scheme in args.schemes.split(","):
        started = time.perf_counter()
        path = args.work / f"int8_{scheme}.pte"
        export_executorch_int8(graph, path, 224, calib, quantizer=quantizer_for(scheme))
        seconds = time.perf_counter() - started
        int8 = ExecuTorchEmbedder(path, threads=args.threads)
        val = embed(int8.embed, val_x)
        top1 = knn_top1(embed(int8.embed, bank_x), bank_y, val, val_y)
        cos = cosines(val, ref_val)
        lat = p50s({"fp32": fp32, "int8": int8}, val_x[:1], args.runs)
        row = {"scheme": scheme, "min_cosine": round(float(cos.min()), 4), "mean_cosine": round(float(cos.mean()), 4),
               "top1": round(top1, 2), "knn_delta": round(top1 - ref_top1, 2), "p50_ms": lat["int8"],
               "fp32_p50_ms": lat["fp32"], "size_mb": round(path.stat().st_size / 1e6, 2),
               "export_seconds": round(seconds, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| scheme | min cosine | mean cosine | k-NN top-1 | knn_delta | p50 ms | FP32 p50 ms | MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['scheme']} | {r['min_cosine']} | {r['mean_cosine']} | {r['top1']:.2f} | {r['knn_delta']:+.2f} "
              f"| {r['p50_ms']} | {r['fp32_p50_ms']} | {r['size_mb']} |")
    print(f"torch fp32 k-NN top-1 {ref_top1:.2f}; fp32 program {fp32_path.stat().st_size / 1e6:.1f} MB")
    if args.out:
        args.out.write_text(json.dumps({"torch_fp32_top1": ref_top1, "schemes": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
