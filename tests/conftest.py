"""Shared fixtures: tiny image folders made by the tests, tiny configs, the CIFAR subset when present."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10-subset"

# Tests share two cores with each other's subprocesses: one intra-op thread each keeps them honest.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Third-party warnings of the commands the tests run go to a log of their own, not the user's.
os.environ.setdefault("EDGEDISTILL_LOG", os.path.join(tempfile.gettempdir(), f"edgedistill-tests-{os.getpid()}.log"))


def make_image_folder(root: Path, classes: int = 2, per_class: int = 16, size: int = 16, seed: int = 0,
                      labeled: bool = True) -> Path:
    """Colored-noise PNGs whose class decides the dominant channel: learnable, tiny, real files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}" if labeled else root / f"part_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] += np.uint8(120)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture
def cifar_subset() -> Path:
    if not CIFAR.is_dir():
        pytest.skip(f"the CIFAR-10 subset is not at {CIFAR} (only on the development machine)")
    return CIFAR


def tiny_overrides(data: Path, **extra) -> list[str]:
    """A distillation small enough for a test: 16 px, patch 4, 2-block ViTs."""
    values = {
        "data.path": str(data), "data.img_size": 16, "data.batch_size": 8, "data.num_workers": 0,
        "teacher.arch": "vit_small_patch16_224", "teacher.patch_size": 4, "teacher.depth": 2,
        "student.arch": "vit_tiny_patch16_224", "student.patch_size": 4, "student.depth": 2,
        "distill.epochs": 2, "distill.warmup_epochs": 1, "distill.log_every": 1, "distill.blr": 1e-3,
        "run.threads": 1,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgedistill", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


TINY_ARCH = "vit_tiny_patch16_224"
TINY_TEACHER_DIM = 384


def tiny_student_run(root: Path, projector: bool = True) -> Path:
    """A run directory as `distill` leaves it (student pair + projector): a random ViT-Tiny at
    16 px, patch 4, 2 blocks."""
    import torch

    from edgedistill.models.backbone_io import save_backbone
    from edgedistill.models.projector import Projector, save_projector
    from edgedistill.models.vit import create_vit

    torch.manual_seed(0)
    model, kwargs = create_vit(TINY_ARCH, img_size=16, patch_size=4, depth=2)
    root.mkdir(parents=True)
    save_backbone(model, root, "student", TINY_ARCH, kwargs, "student")
    if projector:
        save_projector(Projector(model.embed_dim, TINY_TEACHER_DIM, depth=1), root / "projector.safetensors")
    return root


@pytest.fixture(scope="session")
def student_run(tmp_path_factory) -> Path:
    return tiny_student_run(tmp_path_factory.mktemp("runs") / "tiny_student")


@pytest.fixture(scope="session")
def labeled(tmp_path_factory) -> Path:
    """train/ and val/ with 3 classes of 20 px images (resized to 18, cropped to 16)."""
    root = tmp_path_factory.mktemp("labeled")
    make_image_folder(root / "train", classes=3, per_class=10, size=20, seed=0)
    make_image_folder(root / "val", classes=3, per_class=4, size=20, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(student_run, labeled, tmp_path_factory) -> dict:
    """The one full export the export, bench and deploy-example tests share: every variant
    (FP16 too), both gates, on the tiny data. ``export_bundle``'s result, plus ``run``/``data``."""
    from edgedistill.export import export_bundle

    out = tmp_path_factory.mktemp("export")
    result = export_bundle(student_run, out_root=out, name="tiny", formats="onnx,openvino", int8=True, fp16=True,
                           data=str(labeled), calib_size=12, threads=1, progress=False)
    return {**as_dict(result), "run": student_run, "data": labeled}


def as_dict(result) -> dict:
    """An ``ExportResult`` as the tests read it: the manifest as the JSON an app reads."""
    return {"bundle": str(result.bundle), "name": result.name, "manifest": result.manifest.as_json(),
            "validation": result.validation, "rows": result.rows, "default_variant": result.default_variant}
