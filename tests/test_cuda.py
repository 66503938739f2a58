"""The CUDA paths: fused attention, bf16 autocast, NCCL DDP, GPU k-NN.

CI has no GPU, so these skip there; run them on a CUDA machine with
``pytest -m cuda tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from edgedistill.eval.knn import knn_classify
from edgedistill.models.vit import create_vit, forward_with_cls_attention

from conftest import REPO, run_cli, tiny_overrides

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _sets(*overrides: str) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def test_fused_and_explicit_attention_agree_on_cuda():
    torch.manual_seed(0)
    model, _ = create_vit("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=3)
    model = model.cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        fused_tokens, fused_row = forward_with_cls_attention(model, x)
        explicit_tokens, explicit_row = forward_with_cls_attention(model, x, explicit_all_blocks=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16_tokens, bf16_row = forward_with_cls_attention(model, x)
    # fp32 SDPA on CUDA may use TF32-free kernels with a different summation order
    assert (fused_tokens - explicit_tokens).abs().max().item() < 1e-3
    assert (fused_row - explicit_row).abs().max().item() < 1e-4
    torch.testing.assert_close(fused_row.sum(-1), torch.ones_like(fused_row.sum(-1)))
    relative = (bf16_tokens.float() - fused_tokens).norm() / fused_tokens.norm()
    assert relative.item() < 2e-2, relative.item()


def test_distill_on_cuda_runs_bf16_with_fused_student(tiny_folder, tmp_path):
    out = tmp_path / "run"
    result = run_cli("distill", "--out", str(out),
                     *_sets(*tiny_overrides(tiny_folder, **{"run.device": "cuda", "distill.epochs": 3})))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["bf16"] is True
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert all(map(lambda v: v == v and abs(v) < 1e6, losses)) and losses[-1] < losses[0], losses


def test_torchrun_nccl_single_gpu_matches_plain_run(tiny_folder, tmp_path):
    """torchrun with one process takes the multi-GPU path (NCCL group, DDP); fp32 so the
    two runs can be compared to a tight tolerance."""
    overrides = tiny_overrides(tiny_folder, **{"run.device": "cuda", "distill.epochs": 1, "distill.amp": "off"})
    plain = tmp_path / "plain"
    assert run_cli("distill", "--out", str(plain), *_sets(*overrides)).returncode == 0
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "edgedistill",
         "distill", "--out", str(ddp), *_sets(*overrides)],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((ddp / "summary.json").read_text())["process_group"] == "nccl"
    a, b = load_file(str(plain / "student.safetensors")), load_file(str(ddp / "student.safetensors"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-3, worst


def test_knn_on_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(5000, 64, generator=generator)
    labels = torch.randint(0, 10, (5000,), generator=generator)
    queries = bank[:700] + 0.5 * torch.randn(700, 64, generator=generator)
    cpu = knn_classify(bank, labels, queries, 10, ks=(10, 20), val_labels=labels[:700], chunk_size=256)
    gpu = knn_classify(bank.cuda(), labels.cuda(), queries.cuda(), 10, ks=(10, 20), val_labels=labels[:700].cuda(),
                       chunk_size=256)
    assert gpu["top1"] == cpu["top1"] and gpu["top1"] > 50
    assert torch.equal(torch.as_tensor(gpu["predictions"]).cpu(), torch.as_tensor(cpu["predictions"]).cpu())


def test_eval_knn_on_cuda_matches_cpu(tmp_path):
    """`edgedistill eval knn --device cuda` and `--device cpu` on the same random model (bf16-free)."""
    figures = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        result = run_cli("eval", "knn", "--model", "random", "--arch", "vit_tiny_patch16_224", "--img-size", "32",
                         "--patch-size", "8", "--depth", "2", "--data", "digits", "--device", device,
                         "--no-progress", "--json", str(out), "--k", "20", env={"PYTHONHASHSEED": "0"})
        assert result.returncode == 0, result.stderr[-2000:]
        figures[device] = json.loads(out.read_text())
    assert abs(figures["cpu"]["top1"] - figures["cuda"]["top1"]) <= 2.0, figures
