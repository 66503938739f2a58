"""Is the distillation worth it? One teacher, one data set, one training budget per variant:

  attndistill   AttnDistill as published: raw CLS target, no mixing, random projector (the recipe's weights)
  funmatch      the recipe as configured: standardized CLS target, function matching (mixup/cutmix),
                least-squares projector start
  random_head   the recipe with a random projector start (distill.projector_init=random)
  cls_only      the recipe with the CLS term alone (distill.w_attn=0)
  no_mix        the recipe without mixing
  raw_target    the recipe with the raw CLS target
  attn_0.03     the recipe with attention weight 0.03
  attn_0.3      the recipe with attention weight 0.3
  dense         the recipe plus the dense patch-token term (distill.w_patch, --w-patch)
  dino_scratch  the same ViT-Tiny trained by DINO from scratch (`pretrain`, the teacher's recipe)

Every variant trains for the same budget (--clock: CPU seconds of the cell's processes on a CPU,
so other jobs on the machine take nothing from a cell; wall-clock on a GPU): its recipe's schedule
(warmup + cosine) is fitted to the budget from its own measured speed (calibration steps, once per
variant), and the training loop stops at the budget in any case (kept across resumes). Each
(variant, seed) cell is then scored by k-NN on the same split (`eval.evaluate.evaluate_knn`,
DINO protocol, top-1 at k=20), beside the teacher and a random-init student.

Output (--out): table.md (mean ± std over seeds, images/s, wall-clock, and whether the
differences clear the seed spread), knn_vs_time.png, results.json, and one run
directory per cell (cells/<variant>/seed<N>/). Rerunning the same command skips finished
cells and resumes an interrupted one from its checkpoint.

  # the CIFAR table (a 2-core CPU: ~1 h of teacher, then 4 variants x 3 seeds x 4 min), with the
  # evidence student ViT-T/8 with 4 blocks (16 tokens at 32 px, the same for every variant):
  python benchmarks/ablation.py --pretrain-teacher --teacher runs/cifar10_teacher \\
      --data ../shared/data/cifar10-subset --budget-minutes 4 --set student.patch_size=8 \\
      --set student.depth=4 --out runs/ablation_cifar
  # the digits tables (the quickstart's teacher and recipe; 1 and 3 minutes per cell):
  python benchmarks/ablation.py --pretrain-teacher --teacher runs/quickstart_teacher --data digits \\
      --config configs/quickstart.yaml --teacher-config configs/quickstart.yaml --budget-minutes 1 \\
      --variants funmatch,dino_scratch,attndistill,cls_only,no_mix --out runs/ablation_digits_1min
  # minutes on the embedded digits (what the test runs):
  python benchmarks/ablation.py --quick --out runs/ablation_quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablation_report import write_plot, write_table  # beside this script

REPO = Path(__file__).resolve().parents[1]

SAFETY = 0.9  # plan the schedule for 90% of the budget: the hard stop then rarely cuts its tail
CALIBRATION_STEPS = 12  # optimizer steps timed per variant (the first two warm up, not counted): fewer
# left the planned schedule 10-15% off the speed the cell then ran at
WARMUP_STEPS = 2
CURVE_POINTS = 6  # k-NN measurements within each cell (the curve), besides the final one
QUICK = {  # --quick: the embedded digits, 2-block students, a 2-block teacher pretrained for 5 steps,
    # 3 s per cell: the machinery end to end in about a minute of CPU, not a measurement
    "config": "configs/quickstart.yaml", "teacher_config": "configs/quickstart.yaml", "data": "digits",
    "budget_minutes": 0.05, "seeds": "0,1", "calibration_steps": 2,
    "set": ["data.num_workers=0", "student.depth=2", "teacher.depth=2", "pretrain.depth=2"],
    "teacher_set": ["pretrain.total_steps=5", "pretrain.warmup_epochs=0.1"],
}
NO_MIX = ("distill.mixup_alpha=0", "distill.cutmix_alpha=0")
DEFAULT_VARIANTS = ("attndistill", "funmatch", "cls_only", "dino_scratch")


@dataclass(frozen=True)
class Variant:
    name: str
    stage: str  # "distill" or "pretrain"
    overrides: tuple[str, ...]
    label: str
    settings: str = ""  # what it trains with, in words


def describe(d: Any) -> str:
    """What a distillation config trains with, in the table's words."""
    parts = [f"w_attn {d.w_attn:g}", f"{d.cls_target} CLS target"]
    mixes = [f"{k} {a:g}" for k, a in (("mixup", d.mixup_alpha), ("cutmix", d.cutmix_alpha)) if a > 0]
    parts.append(" + ".join(mixes) if mixes and d.mix_prob > 0 else "no mixing")
    if d.w_patch:
        parts.append(f"w_patch {d.w_patch:g} {d.patch_loss}")
    parts.append("least-squares projector start" if d.projector_init == "least_squares" else "random projector")
    return ", ".join(parts)


def variants(build: Any, w_patch: float) -> dict[str, Variant]:
    """The variants, each labelled with the settings it actually trains with. ``build(overrides)``
    gives the recipe's config with those overrides."""
    specs = (
        ("attndistill", "distill", ("distill.cls_target=raw", *NO_MIX, "distill.projector_init=random"),
         "AttnDistill as published"),
        ("funmatch", "distill", (), "AttnDistill, function matching (the recipe)"),
        ("random_head", "distill", ("distill.projector_init=random",), "the recipe, random projector start"),
        ("cls_only", "distill", ("distill.w_attn=0",), "CLS only"),
        ("no_mix", "distill", NO_MIX, "the recipe without mixing"),
        ("raw_target", "distill", ("distill.cls_target=raw",), "the recipe, raw CLS target"),
        ("attn_0.03", "distill", ("distill.w_attn=0.03",), "w_attn 0.03"),
        ("attn_0.3", "distill", ("distill.w_attn=0.3",), "w_attn 0.3"),
        ("dense", "distill", (f"distill.w_patch={w_patch:g}",), "the recipe + dense term"),
    )
    out = {name: Variant(name, stage, o, title, describe(build(o).distill)) for name, stage, o, title in specs}
    out["dino_scratch"] = Variant("dino_scratch", "pretrain", (), "DINO from scratch", "the same ViT-Tiny, "
                                  "the teacher's DINO recipe")
    return out


class Ablation:
    """One ablation directory: its settings, the per-variant plans and the cells."""

    def __init__(self, args: argparse.Namespace):
        from edgedistill.config import build_config

        self.args = args
        self.out = Path(args.out)
        self.student = build_config(args.config, [f"data.path={args.data}", f"teacher.source={args.teacher}", *args.set])
        self.clock = clock_for(args.clock, self.student.run.device)
        # A cell's budget in its clock's seconds: wall-clock, or the CPU seconds the whole machine
        # gives in that time (every core busy), so both mean "minutes of this machine".
        self.machine_seconds = float(args.budget_minutes) * 60
        self.budget = self.machine_seconds * (usable_cpus() if self.clock == "cpu" else 1)
        self.variants = variants(lambda extra: build_config(args.config, [
            f"data.path={args.data}", f"teacher.source={args.teacher}", *args.set, *extra]), args.w_patch)

    # ---- configs
    def config(self, variant: Variant, seed: int, extra: tuple[str, ...] = ()) -> Any:
        """The cell's config: the variant's recipe, seed and schedule overrides."""
        from edgedistill.config import build_config

        a, s = self.args, self.student
        if variant.stage == "distill":
            path, base = a.config, [f"data.path={a.data}", f"teacher.source={a.teacher}"]
        else:  # DINO on the student's architecture, with the teacher's DINO recipe
            path = a.teacher_config
            base = [f"data.path={a.data}", f"data.img_size={s.data.img_size}", f"pretrain.arch={s.student.arch}",
                    f"pretrain.patch_size={s.student.patch_size}", f"pretrain.depth={s.student.depth}"]
        tail = [f"run.seed={seed}", f"run.name={variant.name}_seed{seed}", f"{variant.stage}.knn_every=0",
                f"{variant.stage}.budget_clock={self.clock}"]
        overrides = [*base, *a.set, *variant.overrides, *tail, *extra]
        if variant.stage == "pretrain":  # the student's depth/patch must survive --set's pretrain.* for the teacher
            overrides += [f"pretrain.depth={s.student.depth}", f"pretrain.patch_size={s.student.patch_size}"]
        return build_config(path, overrides)

    def run_stage(self, variant: Variant, cfg: Any, run_dir: Path, resume: bool) -> dict[str, Any]:
        from edgedistill.train.stages import distill, pretrain

        return (distill if variant.stage == "distill" else pretrain)(cfg, run_dir, resume=resume)

    # ---- the plan: each variant's schedule, fitted to the budget from its measured speed
    def plan(self, variant: Variant) -> dict[str, Any]:
        path = self.out / "plans" / f"{variant.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        sec = variant.stage
        cfg = self.config(variant, 0, (f"{sec}.epochs=1", f"{sec}.max_steps={self.args.calibration_steps}",
                                       f"{sec}.log_every=1"))
        scratch = self.out / "plans" / f"{variant.name}.calibration"
        shutil.rmtree(scratch, ignore_errors=True)
        summary = self.run_stage(variant, cfg, scratch, resume=False)
        records = [json.loads(line) for line in (scratch / "metrics.jsonl").read_text().splitlines()]
        shutil.rmtree(scratch)
        recipe = getattr(self.config(variant, 0), sec)
        per_step = recipe.effective_batch or cfg.data.batch_size
        # images per budget-clock second, the warm-up steps (data workers starting) left out
        first = records[min(WARMUP_STEPS, len(records) - 2)]
        seconds = records[-1]["train_seconds"] - first["train_seconds"]
        rate = (records[-1]["step"] - first["step"]) * per_step / max(seconds, 1e-9)
        per_epoch = summary["total_steps"]  # epochs=1: the steps of one epoch
        total = max(1, int(self.budget * SAFETY * rate / per_step))
        plan = {"variant": variant.name, "calibration_img_per_clock_s": rate, "images_per_step": per_step,
                "steps_per_epoch": per_epoch, "total_steps": total,
                "overrides": [*fit_schedule(recipe, sec, total, per_epoch, self.budget),
                              f"{sec}.knn_every={total / per_epoch / CURVE_POINTS:.6g}"]}
        atomic_json(path, plan)
        return plan

    # ---- cells
    def cell(self, variant: Variant, seed: int) -> dict[str, Any]:
        """Train (or resume) one cell and score it; a finished cell is read back."""
        run_dir = self.out / "cells" / variant.name / f"seed{seed}"
        done = run_dir / "knn.json"
        if done.is_file():
            return json.loads(done.read_text())
        from edgedistill.rundir import RunDir

        run = RunDir.of(run_dir)
        started = time.perf_counter()
        if run.backbone_role() is None:
            if not run.has_checkpoint():
                shutil.rmtree(run_dir, ignore_errors=True)  # a start that died before its first checkpoint
            cfg = self.config(variant, seed, tuple(self.plan(variant)["overrides"]))
            self.run_stage(variant, cfg, run_dir, resume=run.has_checkpoint())
        summary = json.loads(run.summary.read_text())
        knn = self.knn(str(run_dir))
        per_step = self.plan(variant)["images_per_step"]
        records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
        curve = [[r["train_seconds"], r["knn_top1"]] for r in records if "knn_top1" in r and "train_seconds" in r]
        result = {"variant": variant.name, "label": variant.label, "settings": variant.settings, "seed": seed,
                  "top1": knn["top1"],
                  "per_k": knn["per_k"], "steps": summary["steps"], "total_steps": summary["total_steps"],
                  "train_seconds": summary["train_seconds"], "clock": self.clock,
                  "wall_seconds": time.perf_counter() - started, "budget_reached": summary["budget_reached"],
                  "img_s": summary["steps"] * per_step / max(summary["train_seconds"], 1e-9),
                  "curve": [*curve, [summary["train_seconds"], knn["top1"]]]}
        atomic_json(done, result)
        return result

    def check_inputs(self, teacher_ready: bool) -> None:
        """Bad data or a missing teacher fail here, before anything is written."""
        from edgedistill.eval.evaluate import load_splits

        d = self.student.data
        self.splits = load_splits(data=d.path, img_size=d.img_size, max_bad_images=d.max_bad_images)
        if teacher_ready:
            from edgedistill.models.teacher import build_teacher

            build_teacher(self.student.teacher, self.student.teacher_img_size)

    def knn(self, source: str, **model: Any) -> dict[str, Any]:
        from edgedistill.eval.evaluate import evaluate_knn
        from edgedistill.eval.models import open_model

        e = self.student.eval
        return evaluate_knn(open_model(source, device=self.student.run.device, **model), self.splits, ks=e.k,
                            temperature=e.temperature, batch_size=e.batch_size,
                            num_workers=self.student.data.num_workers, progress=False)

    def references(self, seeds: list[int]) -> dict[str, Any]:
        """k-NN of the teacher, of the raw pixels and of random-init students (the floors every
        variant must clear)."""
        path = self.out / "references.json"
        refs = json.loads(path.read_text()) if path.is_file() else {}
        t, s = self.student.teacher, self.student.student
        if "teacher" not in refs:
            refs["teacher"] = self.knn(t.source, arch=t.arch, img_size=self.student.teacher_img_size,
                                       patch_size=t.patch_size, depth=t.depth)["top1"]
        if "pixels" not in refs:
            refs["pixels"] = pixel_knn(self.splits, self.student)
        for seed in seeds:
            key = f"random_student_seed{seed}"
            if key not in refs:
                refs[key] = self.knn("random", arch=s.arch, img_size=s.img_size or self.student.data.img_size,
                                     patch_size=s.patch_size, depth=s.depth, seed=seed)["top1"]
            atomic_json(path, refs)
        return refs


def pixel_knn(splits: Any, cfg: Any) -> float:
    """k-NN top-1 (k = 20) of the preprocessed pixels themselves (the eval transform's tensor,
    flattened): what a learned feature has to beat to be worth computing."""
    import numpy as np

    from edgedistill.data.transforms import eval_transform
    from edgedistill.eval.features import knn_classify

    transform = eval_transform(cfg.data.img_size, cfg.data.mean, cfg.data.std)

    def flat(split: Any) -> tuple[Any, Any]:
        split.transform = transform
        items = [split[i] for i in range(len(split))]
        return (np.stack([np.asarray(x, np.float32).reshape(-1) for x, _ in items]),
                np.asarray([int(y) for _, y in items]))

    (bank, bank_y), (query, query_y) = flat(splits.bank), flat(splits.query)
    return float(knn_classify(bank, bank_y, query, len(splits.bank.classes), ks=(20,),
                              temperature=cfg.eval.temperature, val_labels=query_y, headline_k=20)["top1"])


def clock_for(choice: str, device: str) -> str:
    """``auto``: CPU seconds on a CPU (other jobs on the machine then cost a cell nothing),
    wall-clock on a GPU (whose work is not CPU time)."""
    if choice != "auto":
        return choice
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "wall" if on_gpu else "cpu"


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fit_schedule(recipe: Any, section: str, total_steps: int, steps_per_epoch: int, budget: float) -> list[str]:
    """Overrides that compress the recipe's schedule into ``total_steps``: every epoch-based
    knob (warmup, DINO's last-layer freezing and temperature warmup) keeps its share."""
    share = total_steps / steps_per_epoch / recipe.epochs
    out = [f"{section}.total_steps={total_steps}", f"{section}.epochs={-(-total_steps // steps_per_epoch)}",
           f"{section}.warmup_epochs={recipe.warmup_epochs * share:.6g}", f"{section}.max_seconds={budget:g}"]
    if section == "pretrain":
        out += [f"pretrain.freeze_last_layer={round(recipe.freeze_last_layer * share)}",
                f"pretrain.warmup_teacher_temp_epochs={round(recipe.warmup_teacher_temp_epochs * share)}"]
    return out


def atomic_json(path: Path, data: Any) -> None:
    from edgedistill.utils import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """An interrupted run resumes only with the settings it started with (seeds and variants may grow)."""
    from edgedistill.errors import EdgeDistillError

    path = out / "ablation.json"
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in settings if k not in ("seeds", "variants") and before.get(k) != settings[k]]
        if changed:
            raise EdgeDistillError(f"{out} holds an ablation with other settings ({', '.join(changed)}): "
                                   "rerun it with the same ones, or choose another --out")
    atomic_json(path, settings)


def pretrain_teacher(args: argparse.Namespace) -> None:
    """``--pretrain-teacher``: DINO-pretrain the teacher into ``--teacher`` unless it is there."""
    from edgedistill.config import build_config
    from edgedistill.rundir import RunDir
    from edgedistill.train.stages import pretrain

    run = RunDir.of(args.teacher)
    if run.has_backbone("teacher"):
        return
    print(f"pretraining the teacher into {run.path} ({args.teacher_config})", flush=True)
    cfg = build_config(args.teacher_config, [f"data.path={args.data}", *args.set, *args.teacher_set])
    pretrain(cfg, run.path, resume=run.has_checkpoint())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="the teacher (a pretrain run directory, a checkpoint, 'random', ...)")
    parser.add_argument("--pretrain-teacher", action="store_true",
                        help="first DINO-pretrain the teacher into --teacher with --teacher-config (skipped when there)")
    parser.add_argument("--data", help="an image folder with train/ and val/, or 'digits'")
    parser.add_argument("--config", help="the distillation recipe (default configs/cifar10_vit_t.yaml)")
    parser.add_argument("--teacher-config", help="the DINO recipe, for the teacher and for DINO from scratch "
                        "(default configs/cifar10_teacher.yaml)")
    parser.add_argument("--budget-minutes", type=float,
                        help="training time per cell, in minutes of this machine (default 8; see --clock)")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                        help="what the budget counts: wall-clock, or the CPU seconds of the cell's processes "
                             "(budget x usable cores; other jobs on the machine then take nothing from a cell). "
                             "auto: cpu on a CPU, wall on a GPU")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--variants", help=f"comma-separated variants, or 'all' (default {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--w-patch", type=float, default=1.0, help="the dense variant's distill.w_patch")
    parser.add_argument("--calibration-steps", type=int, help=f"timed steps per variant (default {CALIBRATION_STEPS})")
    parser.add_argument("--set", action="append", default=[], help="a config override for every run (repeatable)")
    parser.add_argument("--teacher-set", action="append", default=[],
                        help="a config override for --pretrain-teacher only (repeatable)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite table.md, results.json and the plot from the finished cells; train nothing")
    parser.add_argument("--quick", action="store_true", help="seconds per cell on the embedded digits (the test)")
    args = parser.parse_args(argv)
    defaults = {"config": "configs/cifar10_vit_t.yaml", "teacher_config": "configs/cifar10_teacher.yaml",
                "data": "../shared/data/cifar10-subset", "budget_minutes": 8.0, "seeds": "0,1,2",
                "calibration_steps": CALIBRATION_STEPS}
    if args.quick:
        defaults.update({k: v for k, v in QUICK.items() if k not in ("set", "teacher_set")})
        args.set, args.teacher_set = QUICK["set"] + args.set, QUICK["teacher_set"] + args.teacher_set
        if args.teacher is None:
            args.teacher, args.pretrain_teacher = str(Path(args.out) / "teacher"), True
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("config", "teacher_config"):
        path = Path(getattr(args, key))
        if not path.is_file() and (REPO / path).is_file():
            setattr(args, key, str(REPO / path))
    return args


def main(argv: list[str] | None = None) -> int:
    from edgedistill.cleanup import remove_temporaries  # imported now: a SIGTERM handler must not import
    from edgedistill.errors import EdgeDistillError
    from edgedistill.options import parse_list

    args = parse_args(argv)
    if args.clock != "wall":
        # Before torch loads: OpenMP threads that spin while they wait burn CPU seconds doing
        # nothing when other jobs share the cores (measured here: 12 images per CPU second
        # instead of 130 under 4x oversubscription), which a CPU-second budget would charge.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main_pid = os.getpid()

    def on_sigterm(signum: int, frame: Any) -> None:
        # exit from here rather than raise into whatever runs (see edgedistill.cli's handler)
        if os.getpid() == main_pid:
            remove_temporaries()
            os.write(2, b"error: terminated (SIGTERM); rerun the same command to resume (finished cells are kept)\n")
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if not args.teacher:
            raise EdgeDistillError("--teacher is required (or --quick)")
        seeds = parse_list(args.seeds, "seeds", int, minimum=0)
        if not (math.isfinite(args.budget_minutes) and 0 < args.budget_minutes <= 7 * 24 * 60):
            raise EdgeDistillError(f"--budget-minutes must be a positive number of minutes (at most a week), "
                                   f"got {args.budget_minutes}")
        if args.calibration_steps < 2:
            raise EdgeDistillError(f"--calibration-steps must be at least 2, got {args.calibration_steps}")
        out = Path(args.out)
        ablation = Ablation(args)
        wanted = ",".join(ablation.variants) if args.variants == "all" else (args.variants or ",".join(DEFAULT_VARIANTS))
        names = parse_list(wanted, "variants", str, choices=list(ablation.variants), noun="variant")
        ablation.check_inputs(teacher_ready=not args.pretrain_teacher)
        check_settings(out, {k: v for k, v in vars(args).items()
                             if k not in ("out", "quick", "pretrain_teacher", "report_only")})
        if args.pretrain_teacher and not args.report_only:
            pretrain_teacher(args)
        refs = ablation.references(seeds)
        write_report(out, ablation, refs, trained_here=not args.report_only)
        if not args.report_only:
            run_cells(ablation, names, seeds, refs)
    except EdgeDistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the same command to resume (finished cells are kept)", file=sys.stderr)
        return 130
    print((out / "table.md").read_text())
    return 0


def run_cells(ablation: Ablation, names: list[str], seeds: list[int], refs: dict[str, Any]) -> None:
    """Train (or read back) every (variant, seed) cell, rewriting the report after each."""
    for name in names:
        for seed in seeds:
            print(f"== {name} seed {seed}", flush=True)
            started = time.perf_counter()
            cell = ablation.cell(ablation.variants[name], seed)
            print(f"   k-NN {cell['top1']:.2f} after {cell['steps']}/{cell['total_steps']} steps, "
                  f"{cell['train_seconds']:.0f} s of training, {time.perf_counter() - started:.0f} s in all",
                  flush=True)
            write_report(ablation.out, ablation, refs)


def finished_cells(out: Path, order: list[str]) -> list[dict[str, Any]]:
    """Every scored cell in the directory (also those of earlier invocations), in variant order."""
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*/seed*/knn.json")]
    return sorted(cells, key=lambda c: (order.index(c["variant"]) if c["variant"] in order else len(order), c["seed"]))


def write_report(out: Path, ablation: Ablation, refs: dict[str, Any], trained_here: bool = True) -> None:
    """table.md, results.json and the plot from every finished cell. ``trained_here`` False
    (``--report-only``): the machine and date stay those of the run that trained the cells."""
    results = finished_cells(out, list(ablation.variants))
    header = {"data": ablation.args.data, "teacher": ablation.args.teacher,
              "budget_s": ablation.machine_seconds, "clock": ablation.clock, "clock_budget_s": ablation.budget,
              "device": describe_device(ablation.student.run.device), "date": time.strftime("%Y-%m-%d"),
              "student": student_words(ablation.student.student)}
    previous = out / "results.json"
    if not trained_here and previous.is_file():
        header.update({k: v for k, v in json.loads(previous.read_text()).items() if k in ("device", "date")})
    atomic_json(out / "results.json", {**header, "references": refs, "cells": results})
    write_table(out / "table.md", header, results, refs)
    write_plot(out / "knn_vs_time.png", header, results, refs)


def student_words(student: Any) -> str:
    """The evidence student in the table's words: its timm name, patch and depth where overridden."""
    overridden = [f"patch {student.patch_size}" if student.patch_size else "",
                  f"{student.depth} blocks" if student.depth else ""]
    return " ".join([f"`{student.arch}`", ", ".join(o for o in overridden if o)]).strip()


def describe_device(device: str) -> str:
    import torch

    from edgedistill.bench.machine import cpu_model

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {threads} thread{'s' if threads != 1 else ''}"


if __name__ == "__main__":
    sys.exit(main())
