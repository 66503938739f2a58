"""Why does a distilled student drift? Train one student and measure, every epoch:

- k-NN top-1 (k = 20) of the student's CLS, of its projector output, and of the teacher;
- the distillation loss (each term) on the training images and on the validation images,
  both through the eval transform: the train/val gap says whether the student fits the
  teacher's outputs on the training images rather than its function;
- the effective rank (exp of the entropy of the normalized singular values) of the centred
  student, projector and teacher features on the validation images;
- R^2 of the projector output against the teacher's CLS on the validation images, around the
  data set's mean (how much of the image-specific part of the target the student reproduces).

  python benchmarks/distill_diagnostics.py --teacher runs/quickstart/teacher --data digits \\
      --config configs/quickstart.yaml --epochs 16 --out runs/diag_digits [--set distill.cls_target=raw]
  python benchmarks/distill_diagnostics.py --plot runs/diag_raw runs/diag_std --out drift.png

Writes ``diagnostics.jsonl`` (one record per evaluation, epoch 0 = the random init) and
``diagnostics.png`` into --out; ``--plot`` draws several such runs side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def effective_rank(features: torch.Tensor) -> float:
    """exp(entropy of the normalized singular values) of the centred features (Roy & Vetterli)."""
    s = torch.linalg.svdvals(features.double() - features.double().mean(0))
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


@torch.no_grad()
def outputs(task: Any, loader: Any) -> dict[str, torch.Tensor]:
    """Student CLS, projector output, student attention row and the teacher's, over ``loader``."""
    from edgedistill.models.vit import forward_with_cls_attention

    student, projector = task.trainable.student, task.trainable.projector
    was_training = task.trainable.training
    task.trainable.eval()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("cls", "proj", "attn", "t_cls", "t_attn", "labels")}
    for images, labels in loader:
        tokens, attn = forward_with_cls_attention(student, images)
        teacher_in = images
        if images.shape[-1] != task.teacher_size:
            teacher_in = F.interpolate(images, size=task.teacher_size, mode="bicubic", align_corners=False)
        t_tokens, t_attn = forward_with_cls_attention(task.teacher, teacher_in)
        out["cls"].append(tokens[:, 0].float())
        out["proj"].append(projector(tokens[:, :1])[:, 0].float())
        out["attn"].append(attn.float())
        out["t_cls"].append(task.teacher_target(t_tokens[:, 0].float()))
        out["t_attn"].append(t_attn.float())
        out["labels"].append(labels)
    task.trainable.train(was_training)
    return {k: torch.cat(v) for k, v in out.items()}


def knn_top1(bank: torch.Tensor, bank_y: torch.Tensor, query: torch.Tensor, query_y: torch.Tensor) -> float:
    from edgedistill.eval.knn import knn_classify

    return float(knn_classify(bank, bank_y, query, int(bank_y.max()) + 1, ks=(20,), val_labels=query_y)["top1"])


def measure(task: Any, bank_loader: Any, query_loader: Any, mean_t: torch.Tensor | None) -> dict[str, float]:
    from edgedistill.losses.attndistill import attention_kl, cls_loss

    d = task.cfg.distill
    bank, query = outputs(task, bank_loader), outputs(task, query_loader)
    rec: dict[str, float] = {}
    for name, o in (("train", bank), ("val", query)):
        rec[f"{name}_cls"] = float(cls_loss(o["proj"], o["t_cls"]))
        rec[f"{name}_attn"] = float(attention_kl(o["t_attn"], o["attn"], aggregate=d.aggregate_heads,
                                                 temperature=d.temperature))
        rec[f"{name}_cos"] = float(F.cosine_similarity(o["proj"], o["t_cls"]).mean())
    centre = bank["t_cls"].mean(0) if mean_t is None else mean_t
    sst = ((query["t_cls"] - centre) ** 2).sum()
    rec["val_r2"] = float(1 - ((query["proj"] - query["t_cls"]) ** 2).sum() / sst)
    rec["train_r2"] = float(1 - ((bank["proj"] - bank["t_cls"]) ** 2).sum() / ((bank["t_cls"] - centre) ** 2).sum())
    for key in ("cls", "proj", "t_cls"):
        rec[f"knn_{key}"] = knn_top1(bank[key], bank["labels"], query[key], query["labels"])
        rec[f"rank_{key}"] = effective_rank(query[key])
    # the image-specific share of the target: per-dimension spread against the common part
    rec["t_var_over_mean2"] = float(query["t_cls"].var(0).mean() / (query["t_cls"].mean(0) ** 2).mean())
    return rec


PANELS = (("knn_cls", "k-NN top-1 of the student's CLS (%)"), ("val_r2", "R² of the target, val images"),
          ("rank_cls", "effective rank of the student's CLS"), ("gap", "CLS loss, val / train images"))


def plot_runs(runs: list[Path], out: Path) -> None:
    """k-NN, R², effective rank and the val/train loss ratio (above 1: fitting the training
    images' targets) against epochs, one line per run; the teacher's k-NN dashed (on the run's
    target: standardizing the teacher's features changes its own k-NN)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import yaml

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for run in runs:
        records = [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]
        d = yaml.safe_load((run / "config.yaml").read_text())["distill"]
        label = f"{run.name}: {d.get('cls_target', 'raw')} target, blr {d['blr']:g}"
        for ax, (key, _) in zip(axes, PANELS):
            points = [(r["epoch"], r["val_cls"] / r["train_cls"] if key == "gap" else r[key])
                      for r in records if r["epoch"] > 0 or key == "knn_cls"]
            ax.plot(*zip(*points), marker=".", label=label)
        axes[0].axhline(records[0]["knn_t_cls"], color=axes[0].lines[-1].get_color(), linestyle="--", linewidth=1)
    for ax, (key, title) in zip(axes, PANELS):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(-0.2, 1.0)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plot", nargs="+", type=Path, help="draw these runs' diagnostics into --out (a .png)")
    parser.add_argument("--teacher")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=1, help="epochs between measurements")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.plot:
        plot_runs(args.plot, Path(args.out))
        return
    if not args.teacher:
        parser.error("--teacher is required (or --plot)")

    from edgedistill import distributed as distmod
    from edgedistill.config import build_config
    from edgedistill.data import build_knn_loaders, build_train_loader
    from edgedistill.data.transforms import train_transform
    from edgedistill.models.teacher import build_teacher
    from edgedistill.rundir import RunDir
    from edgedistill.train.distill import DistillTask, build_student, loop_settings
    from edgedistill.train.loop import train
    from edgedistill.train.stages import seed_everything, configure_threads

    cfg = build_config(args.config, [f"data.path={args.data}", f"teacher.source={args.teacher}",
                                     f"distill.epochs={args.epochs}", f"distill.knn_every={args.eval_every}",
                                     "distill.checkpoint_every=1000", *args.set])
    out = Path(args.out)
    run = RunDir.of(out)
    run.check_writable(False, "student")
    run.save_config(cfg)
    info = distmod.setup("cpu")
    configure_threads(cfg)
    d = cfg.data
    from edgedistill.data.mixing import MixSettings

    k = cfg.distill
    loader = build_train_loader(cfg, train_transform(d.img_size, d.crop_scale, d.mean, d.std, hflip=d.hflip),
                                distributed=False, seed=cfg.run.seed,
                                mix=MixSettings(k.mixup_alpha, k.cutmix_alpha, k.mix_prob))
    seed_everything(cfg.run.seed)
    teacher, teacher_info = build_teacher(cfg.teacher, cfg.teacher_img_size)
    student, kwargs = build_student(cfg)
    task = DistillTask(cfg, teacher, student, kwargs, teacher_info, info.device)
    from edgedistill.train.stages import target_statistics_loader

    task.prepare_targets(target_statistics_loader(cfg))
    bank_loader, query_loader = build_knn_loaders(cfg, batch_size=256)
    log = out / "diagnostics.jsonl"
    state = {"epoch": -args.eval_every}

    def evaluate(_backbone: Any) -> dict[str, float]:
        state["epoch"] += args.eval_every
        rec = {"epoch": state["epoch"], **measure(task, bank_loader, query_loader, None)}
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(" ".join(f"{k}={v:.4g}" for k, v in rec.items()), file=sys.stderr, flush=True)
        return {"knn_top1": rec["knn_cls"]}

    log.write_text("")
    evaluate(None)  # epoch 0: the random-init student
    train(task, loader, loop_settings(cfg), run, info, knn_fn=evaluate)
    plot_runs([out], out / "diagnostics.png")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
