"""What dropping the register columns from the attention target does, measured on digits.

No released DINOv2-reg/DINOv3 weights can be downloaded here, so the teacher with registers is
trained here: DINO pretraining of the quickstart teacher (ViT-S, patch 8, 4 blocks) with 4
register tokens after CLS, unembedded as in DINOv2 (``reg_tokens=4, no_embed_class=True``), on
scikit-learn's digits with the quickstart settings. (The pretrain config has no register key,
so this script adds them to the architecture it builds; the kwargs are saved in teacher.json.
timm's ``vit_small_patch14_reg4_dinov2`` at these settings collapsed to the uniform DINO
solution: its LayerScale starts at 1e-5.) Then, for each seed, students are distilled from it with the quickstart distill
settings and scored by k-NN on the digits val split:

  drop        ViT-T, target over CLS + patches (registers dropped, row renormalized; the default)
  keep        ViT-T with 4 registers, target over CLS + registers + patches (distill.keep_registers)
  reg4_drop   ViT-T with 4 registers, target as in ``drop``

It also reports the share of the teacher's last-block CLS attention that lands on its
registers (mean over heads and val images): the mass the ``drop`` target redistributes.

Usage: python benchmarks/register_targets.py [--out runs/register_targets] [--seeds 0 1]
Results go to <out>/results.json (about 10 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
TEACHER = ["pretrain.knn_every=0", "data.num_workers=0"]
REGISTERS = {"reg_tokens": 4, "no_embed_class": True}
STUDENTS = {
    "drop": [],
    "keep": ["student.reg_tokens=4", "distill.keep_registers=true"],
    "reg4_drop": ["student.reg_tokens=4"],
}


def register_mass(teacher_dir: Path, img_size: int) -> float:
    """Mean share of the last-block CLS attention on the registers, over heads and val images."""
    from edgedistill.data.transforms import eval_transform
    from edgedistill.eval.evaluate import load_splits
    from edgedistill.models.backbone_io import load_backbone
    from edgedistill.models.vit import forward_with_cls_attention, register_count

    model, _ = load_backbone(teacher_dir, role="teacher")
    splits = load_splits(data="digits", img_size=img_size)  # fresh: k-NN attaches its transform to its splits
    transform = eval_transform(img_size)
    images = torch.stack([transform(splits.query[i][0]) for i in range(len(splits.query))])
    with torch.inference_mode():
        _, row = forward_with_cls_attention(model, images, keep_registers=True)
    return row[..., 1:1 + register_count(model)].sum(-1).mean().item()


def main() -> None:
    from edgedistill.config import build_config
    from edgedistill.eval.evaluate import evaluate_knn, load_splits
    from edgedistill.eval.models import open_model
    from edgedistill.train.stages import distill, pretrain

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/register_targets"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    out = args.out
    teacher_dir = out / "teacher"
    if not (teacher_dir / "teacher.json").is_file():
        import edgedistill.train.pretrain as dino

        plain = dino.create_vit
        dino.create_vit = lambda arch, **kw: plain(arch, **kw, **REGISTERS)
        try:
            pretrain(build_config(QUICKSTART, TEACHER), teacher_dir)
        finally:
            dino.create_vit = plain
    splits = load_splits(data="digits", img_size=32)

    def knn(source) -> float:
        return evaluate_knn(open_model(source), splits, progress=False, num_workers=0)["top1"]

    results = {"teacher_knn": knn(teacher_dir), "teacher_register_mass": register_mass(teacher_dir, 32),
               "students": {}}
    print(f"teacher k-NN {results['teacher_knn']:.2f}, CLS attention on registers "
          f"{results['teacher_register_mass']:.3f}")
    for name, overrides in STUDENTS.items():
        scores = []
        for seed in args.seeds:
            run = out / f"{name}_seed{seed}"
            if not (run / "student.json").is_file():
                cfg = build_config(QUICKSTART, [f"teacher.source={teacher_dir}", f"run.seed={seed}",
                                                "data.num_workers=0", *overrides])
                distill(cfg, run)
            scores.append(knn(run))
        results["students"][name] = {"seeds": args.seeds, "knn": scores, "mean": statistics.mean(scores)}
        print(f"{name:10s} k-NN {', '.join(f'{s:.2f}' for s in scores)} (mean {statistics.mean(scores):.2f})")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
