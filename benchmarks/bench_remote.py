"""``bench --device ssh://...`` on loopback, and the default rounds.

1. **Fidelity.** One run measures this machine's rows and the device's (``--device
   cpu,ssh://ALIAS``), interleaved round by round: per variant, the device's p50 over this
   machine's, and the same ratio paired round by round (median, min, max). On loopback both
   are the same CPU, so the ratio is what the SSH path itself adds (1.0 within the run's noise).
2. **Rounds.** ``--repeats`` runs of each scheme, alternating, on this machine's rows: many short
   rounds (``--short`` rounds of ``--seconds``/``--short`` s) against 5 long ones, the same timed
   seconds per row. Per scheme: the same-run spread of p50 across rounds ((max - min) / p50 of
   the rounds' medians, as the table reports it), and from run to run the spread of each row's
   p50 and of the INT8/FP32 ratio (what a user comparing two runs sees).

The bundle: ``--bundle``, or the ViT-T/16 224 ONNX bundle of ``bench_vit_t_224.py`` (exported
into ``--work`` when missing). The device: an ``ssh://`` alias with a Python that has numpy and
onnxruntime (``--remote-python``); an sshd on 127.0.0.1 makes it loopback.

Usage: python benchmarks/bench_remote.py --device ssh://ALIAS [--ssh-config FILE]
       [--remote-python PATH] [--bundle DIR | --work runs/bench_vit_t_224] [--threads 1]
       [--seconds 8] [--short 32] [--repeats 3] [--out bench_remote.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def _bench(bundle: Path, args: argparse.Namespace, device: list[str], rounds: int) -> dict:
    from edgedistill.bench.runner import run_bench

    return run_bench(bundle, device=device, backends="onnxruntime", precisions="fp32,int8", threads=[args.threads],
                     batches=[1], seconds=args.seconds, rounds=rounds, progress=False,
                     remote_python=args.remote_python, ssh_config=args.ssh_config)


def _p50(row: dict) -> float:
    return row["batches"]["1"]["p50_ms"]


def fidelity(report: dict) -> dict:
    """Per variant: the device's p50 / this machine's, overall and paired round by round."""
    out = {}
    for remote in (r for r in report["rows"] if r.get("remote")):
        local = next(r for r in report["rows"] if not r.get("remote") and r["variant"] == remote["variant"])
        paired = [a / b for a, b in zip(remote["batches"]["1"]["round_p50_ms"], local["batches"]["1"]["round_p50_ms"])]
        out[remote["variant"]] = {"local_p50_ms": _p50(local), "device_p50_ms": _p50(remote),
                                  "ratio": round(_p50(remote) / _p50(local), 3),
                                  "ratio_by_round": [round(min(paired), 3), round(statistics.median(paired), 3),
                                                     round(max(paired), 3)],
                                  "round_spread": [local["batches"]["1"]["round_spread"],
                                                   remote["batches"]["1"]["round_spread"]]}
    return out


def _spread(values: list[float]) -> float:
    return round((max(values) - min(values)) / statistics.median(values), 3)


def rounds_study(bundle: Path, args: argparse.Namespace) -> dict:
    """Each scheme ``--repeats`` times, alternating; the spreads described above."""
    schemes = {f"{args.short} x {args.seconds / args.short:g} s": args.short,
               f"5 x {args.seconds / 5:g} s": 5}
    runs: dict[str, list[dict]] = {name: [] for name in schemes}
    for _ in range(args.repeats):
        for name, rounds in schemes.items():
            report = _bench(bundle, args, ["cpu"], rounds)
            runs[name].append({r["variant"]: r["batches"]["1"] for r in report["rows"]})
            print(f"{name}: " + ", ".join(f"{v} {s['p50_ms']:.2f} ms (spread {s['round_spread']:.2f})"
                                          for v, s in runs[name][-1].items()), flush=True)
    out = {}
    for name, reports in runs.items():
        variants = list(reports[0])
        out[name] = {
            "same_run_round_spread_median": round(statistics.median(
                s["round_spread"] for rep in reports for s in rep.values()), 3),
            "same_run_round_spread_max": max(s["round_spread"] for rep in reports for s in rep.values()),
            "p50_spread_across_runs": {v: _spread([rep[v]["p50_ms"] for rep in reports]) for v in variants},
            "int8_over_fp32": [round(rep["onnx_int8"]["p50_ms"] / rep["onnx_fp32"]["p50_ms"], 3) for rep in reports],
        }
        out[name]["int8_over_fp32_spread"] = _spread(out[name]["int8_over_fp32"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", required=True, help="ssh://ALIAS (loopback: an sshd on 127.0.0.1)")
    parser.add_argument("--ssh-config", default=None)
    parser.add_argument("--remote-python", default=None)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_vit_t_224")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10-subset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--short", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-rounds", action="store_true", help="the fidelity run only")
    parser.add_argument("--out", type=Path, default=Path("bench_remote.json"))
    args = parser.parse_args()
    bundle = args.bundle
    if bundle is None:
        from bench_vit_t_224 import ensure_bundle

        args.train_per_class, args.val_per_class, args.force_export = 10, 5, False
        bundle = ensure_bundle(args, args.work, "vit_t_224_onnx", formats="onnx", threads=args.threads)
        if bundle is None:
            return 1
    report = _bench(bundle, args, ["cpu", args.device], args.short)
    result = {"bundle": str(bundle), "threads": args.threads, "seconds": args.seconds,
              "machine": report["machine"]["cpu"], "device": report["remotes"],
              "fidelity": fidelity(report), "load_average": report["machine"].get("load_average")}
    print(json.dumps(result["fidelity"], indent=1), flush=True)
    if not args.skip_rounds:
        result["rounds"] = rounds_study(bundle, args)
        print(json.dumps(result["rounds"], indent=1))
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
