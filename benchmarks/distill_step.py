"""Distill-step throughput on this machine: the product's step against a naive baseline.

CIFAR recipe shapes (32 px, patch 4: 64 patches + CLS; ViT-S/4 teacher -> ViT-T/4 student).
Both variants run the same loss, optimizer and batch in the same process, alternating rounds
so that machine noise hits both alike; the ratio is what to read, not the absolute figures.

  naive:   explicit attention (full N x N matrices) in every block of both networks, fp32
           (what a straightforward port of the paper's code does)
  product: the distill defaults on this device: the frozen teacher under inference mode with
           fused SDPA, its last block's CLS attention row computed alone (O(N), not O(N^2));
           the student's attention as distill.attention=auto picks (explicit on CPU, where
           SDPA's backward is slower at 65 tokens; fused on CUDA); bf16 autocast where the
           CPU has native bf16 (``--amp off`` measures fp32 alone)

``--recipe imagenet`` measures the ImageNet shapes instead (224 px, ViT-S/16 -> ViT-T/16);
``--device cuda`` measures on a GPU (the product then uses fused attention for the student).
``--dense`` adds a third row, the product with the dense term on (``distill.w_patch=1``,
``--patch-loss``), in the same rounds: the product row is the step with it off.

``--teachers`` adds, in the same run and rounds, the product step with other teacher families
(random weights; only their shapes and kernels matter here): ``dinov2_s14_reg4`` (DINOv2
ViT-S/14 with 4 registers: at 224 px a 16x16 grid + 5 prefix tokens, attention resized to the
student's 14x14) and ``dinov3_s16`` (DINOv3 ViT-S/16: RoPE in every block, 4 registers,
LayerScale). In the CIFAR recipe every teacher uses patch 4 at 32 px (same grid as DINO there).

Usage: python benchmarks/distill_step.py [--batch 64] [--rounds 5] [--steps 3] [--amp bf16|off]
       [--device cpu|cuda] [--recipe cifar|imagenet] [--teachers dinov2_s14_reg4,dinov3_s16]
       [--dense [--patch-loss cosine|smooth_l1]]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from edgedistill.config import build_config
from edgedistill.models.vit import create_vit
from edgedistill.train.distill import DistillTask
from edgedistill.train.loop import autocast_for
from edgedistill.utils import cpu_has_native_bf16
from edgedistill.train.schedule import param_groups


RECIPES = {"cifar": (32, 4), "imagenet": (224, 16)}  # image size, patch size
# teacher family -> (timm architecture, native patch size)
TEACHERS = {"dino_s16": ("vit_small_patch16_224", 16), "dinov2_s14_reg4": ("vit_small_patch14_reg4_dinov2", 14),
            "dinov3_s16": ("vit_small_patch16_dinov3", 16)}


def make_task(naive: bool, amp: str, device: torch.device, recipe: str = "cifar", teacher_family: str = "dino_s16",
              extra: tuple[str, ...] = ()):
    size, patch = RECIPES[recipe]
    teacher_arch, native_patch = TEACHERS[teacher_family]
    teacher_patch = native_patch if recipe == "imagenet" else patch
    overrides = [
        f"data.img_size={size}", f"teacher.arch={teacher_arch}", f"teacher.patch_size={teacher_patch}",
        "student.arch=vit_tiny_patch16_224", f"student.patch_size={patch}", f"distill.amp={amp}",
        f"distill.attention={'explicit' if naive else 'auto'}", *extra,
    ]
    cfg = build_config(None, overrides)
    torch.manual_seed(0)
    teacher, _ = create_vit(teacher_arch, img_size=size, patch_size=teacher_patch)
    student, kwargs = create_vit("vit_tiny_patch16_224", img_size=size, patch_size=patch)
    task = DistillTask(cfg, teacher, student, kwargs, {"kind": "random"}, device, teacher_explicit=naive)
    task.trainable.to(device)
    optimizer = torch.optim.AdamW(param_groups(task.trainable, 0.05), lr=1e-4, betas=(0.9, 0.95))
    return task, optimizer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: wait before reading the clock


def run_steps(task, optimizer, images: torch.Tensor, steps: int, amp: str) -> float:
    _sync(images.device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast_for(amp, images.device):
            loss = task.loss(task.trainable, images, 0)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(images.device)
    return steps * images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--amp", choices=["bf16", "off", "auto"], default="auto",
                        help="product precision; auto = bf16 when the CPU has native bf16")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cifar")
    parser.add_argument("--teachers", default="", help="other teacher families for the product step, comma-separated: "
                        + ", ".join(t for t in TEACHERS if t != "dino_s16"))
    parser.add_argument("--dense", action="store_true", help="also time the product with distill.w_patch=1")
    parser.add_argument("--patch-loss", choices=["cosine", "smooth_l1"], default="cosine")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    amp = args.amp if args.amp != "auto" else ("bf16" if native_bf16 else "off")

    size, patch = RECIPES[args.recipe]
    others = [t.strip() for t in args.teachers.split(",") if t.strip()]
    unknown = [t for t in others if t not in TEACHERS]
    if unknown:
        parser.error(f"unknown teacher families {unknown}; known: {', '.join(TEACHERS)}")
    images = torch.randn(args.batch, 3, size, size, device=device)
    variants = {"naive": (make_task(True, "off", device, args.recipe), "off"),
                "product": (make_task(False, amp, device, args.recipe), amp)}
    for family in others:
        variants[f"product_{family}"] = (make_task(False, amp, device, args.recipe, family), amp)
    if args.dense:
        dense = ("distill.w_patch=1", f"distill.patch_loss={args.patch_loss}")
        variants["dense"] = (make_task(False, amp, device, args.recipe, extra=dense), amp)
    for (task, optimizer), precision in variants.values():  # warm-up (allocator, oneDNN kernels)
        run_steps(task, optimizer, images, 1, precision)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, ((task, optimizer), precision) in variants.items():
            rates[name].append(run_steps(task, optimizer, images, args.steps, precision))

    naive, product = statistics.median(rates["naive"]), statistics.median(rates["product"])
    result = {
        "batch": args.batch, "threads": torch.get_num_threads(), "product_amp": amp, "device": str(device),
        "recipe": args.recipe, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "naive_img_s": naive, "product_img_s": product, "speedup": product / naive,
        "teachers": {"dino_s16": product, **{f: statistics.median(rates[f"product_{f}"]) for f in others}},
        "rounds": rates,
    }
    if args.dense:
        result.update(dense_img_s=statistics.median(rates["dense"]), patch_loss=args.patch_loss)
    where = result["gpu"] or f"{result['threads']} CPU threads"
    print(f"distill step, {args.recipe} recipe (ViT-S/{patch} -> ViT-T/{patch}, {size} px), batch {args.batch}, {where}")
    print(f"  naive   (explicit attention everywhere, fp32): {naive:8.1f} img/s")
    print(f"  product (distill defaults, amp={amp}):             {product:8.1f} img/s")
    print(f"  speed-up: {product / naive:.2f}x")
    for family in others:
        arch, native = TEACHERS[family]
        shape = f"{arch}, patch {native if args.recipe == 'imagenet' else patch}"
        print(f"  product with {family} teacher ({shape}): {result['teachers'][family]:8.1f} img/s")
    if args.dense:
        dense = result["dense_img_s"]
        print(f"  product + dense term (w_patch=1, {args.patch_loss}): {dense:8.1f} img/s ({dense / product:.2f}x the product)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
