"""The quickstart, end to end, as `make demo` runs it (about 4 minutes on 2 cores: `pytest -m
slow`). It checks what the README promises: DINO pretraining beats its random init, the
distilled student beats its random init, and every INT8 variant passed the 1-point gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli


@pytest.mark.slow
def test_quickstart_pipeline_learns_and_exports(tmp_path):
    done = run_cli("pipeline", str(REPO / "configs" / "quickstart.yaml"), "--runs", str(tmp_path / "runs"),
                   "--export-root", str(tmp_path / "export"), cwd=tmp_path, timeout=1500,
                   env={"OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    knn = {name: result["top1"] for name, result in
           json.loads((tmp_path / "runs" / "quickstart" / "eval.json").read_text()).items()}
    assert knn["teacher"] > knn["random_teacher"] + 5, knn
    assert knn["student"] > knn["random_student"] + 5, knn
    manifest = json.loads(Path(tmp_path / "export" / "quickstart" / "manifest.json").read_text())
    gates = manifest["validation"]["knn"]["variants"]
    assert all(gates[v]["passed"] for v in ("onnx_int8", "openvino_int8")), gates
    print(f"\nquickstart k-NN top-1: {knn}")
