"""Teacher sources and checkpoint layouts (edgedistill.models.teacher/checkpoints): every layout
loads exactly, every wrong checkpoint fails with a message naming the problem, no pickle code runs."""

from __future__ import annotations

import argparse
import pathlib
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgedistill.errors import EdgeDistillError
from edgedistill.models.backbone_io import save_backbone
from edgedistill.models.checkpoints import load_checkpoint_into, read_checkpoint, read_state_dict
from edgedistill.models.teacher import load_teacher
from edgedistill.models.vit import create_vit

ARCH = "vit_tiny_patch16_224"
SMALL = dict(patch_size=8, depth=2)
IMG = 32


def make(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_vit(ARCH, IMG, **{**SMALL, **overrides})[0].eval()


@pytest.fixture(scope="module")
def source():
    return make(seed=0)


@pytest.fixture(scope="module")
def other():
    return make(seed=1)  # the "student"/"online" network stored beside the teacher


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))


def sd(model, prefix=""):
    return {prefix + k: v.clone() for k, v in model.state_dict().items()}


def dino_head(prefix):
    return {f"{prefix}mlp.0.weight": torch.randn(64, 192), f"{prefix}mlp.0.bias": torch.randn(64),
            f"{prefix}last_layer.weight_g": torch.randn(100, 1), f"{prefix}last_layer.weight_v": torch.randn(100, 64)}


def relation_block(prefix):
    """Mugs's relation block (``num_relation_blocks=1``): one pre-norm block, used in training only."""
    shapes = {"norm1.weight": (192,), "norm1.bias": (192,), "attn.qkv.weight": (576, 192), "attn.qkv.bias": (576,),
              "attn.proj.weight": (192, 192), "attn.proj.bias": (192,), "norm2.weight": (192,), "norm2.bias": (192,),
              "mlp.fc1.weight": (768, 192), "mlp.fc1.bias": (768,), "mlp.fc2.weight": (192, 768), "mlp.fc2.bias": (192,)}
    return {f"{prefix}relation_blocks.0.{k}": torch.randn(v) for k, v in shapes.items()}


def mugs_heads(prefix):
    return {f"{prefix}instance_head.projector.0.weight": torch.randn(32, 192),
            f"{prefix}local_group_head.projector.0.weight": torch.randn(32, 192),
            f"{prefix}group_head.projector.0.weight": torch.randn(32, 192),
            f"{prefix}group_head.last_layer.weight_g": torch.randn(100, 1)}


def mugs_memory():
    return {f"block.queue_{n}": torch.randn(8, 192) for n in "qkv"} | {"block.queue_ptr": torch.zeros(1, dtype=torch.long)}


def layouts(src, other):
    """Checkpoint objects as the projects publish them, keyed by a readable name."""
    args = argparse.Namespace(arch="vit_small", patch_size=16, output_dir=pathlib.PosixPath("/ckpt"))
    return {
        "timm.safetensors": sd(src),
        "timm.pth": sd(src),
        # DINO's released backbone-only weights: plain keys
        "dino_backbone.pth": sd(src),
        # DINO full training checkpoint: DDP student, bare teacher, heads, optimizer, args
        "dino_full.pth": {
            "student": {**sd(other, "module.backbone."), **dino_head("module.head.")},
            "teacher": {**sd(src, "backbone."), **dino_head("head.")},
            "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
            "epoch": 100, "args": args, "dino_loss": {"center": torch.zeros(1, 100)},
        },
        # the same with DDP-wrapped teacher too
        "dino_full_ddp.pth": {
            "student": {**sd(other, "module.backbone."), **dino_head("module.head.")},
            "teacher": {**sd(src, "module.backbone."), **dino_head("module.head.")},
        },
        # MAE: encoder + decoder + mask token under "model"
        "mae.pth": {
            "model": {**sd(src), "mask_token": torch.zeros(1, 1, 128), "decoder_embed.weight": torch.randn(128, 192),
                      "decoder_blocks.0.norm1.weight": torch.ones(128), "decoder_pred.weight": torch.randn(192, 128)},
            "optimizer": {}, "epoch": 799, "scaler": {"scale": 65536.0}, "args": args,
        },
        # Mugs's main.py: DDP student and bare teacher, each a backbone with its training-only
        # relation block, instance/local-group/group heads; memory queues, loss buffers, args
        "mugs_full.pth": {
            "student": {**sd(other, "module.backbone."), **relation_block("module.backbone."),
                        **mugs_heads("module.")},
            "teacher": {**sd(src, "backbone."), **relation_block("backbone."), **mugs_heads("")},
            "student_mem": mugs_memory(), "teacher_mem": mugs_memory(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, "epoch": 3, "args": args,
            "instance-sup.": {"queue": torch.randn(16, 32), "queue_ptr": torch.zeros(1, dtype=torch.long)},
            "local-group-sup.": {"queue": torch.randn(16, 32), "queue_ptr": torch.zeros(1, dtype=torch.long)},
            "group-sup.": {"center": torch.zeros(1, 100)},
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                            "_growth_tracker": 0},
        },
        # Mugs's extraction script: the teacher's backbone keys, relation block included
        "mugs_backbone.pth": {**sd(src), **relation_block("")},
        # iBOT's main_ibot.py: the student backbone has masked_embed (masked image modeling)
        "ibot_full.pth": {
            "student": {**sd(other, "module.backbone."), "module.backbone.masked_embed": torch.zeros(1, 192),
                        **dino_head("module.head.")},
            "teacher": {**sd(src, "backbone."), **dino_head("head.")},
            "optimizer": {}, "epoch": 3, "args": args, "ibot_loss": {"center": torch.zeros(1, 100)},
        },
        # iBOT's extract_backbone_weights.py --checkpoint_key student: {"state_dict": backbone}
        "ibot_student_backbone.pth": {"state_dict": {**sd(src), "masked_embed": torch.zeros(1, 192)}},
        # MSN: online encoder and EMA target encoder, both DDP, with fc head and prototypes
        "msn.pth": {
            "encoder": {**sd(other, "module."), "module.fc.fc1.weight": torch.randn(8, 192)},
            "target_encoder": {**sd(src, "module."), "module.fc.fc1.weight": torch.randn(8, 192)},
            "prototypes": torch.randn(10, 8), "epoch": 2, "loss": np.float64(1.25), "lr": np.float32(0.1),
        },
        # a supervised timm checkpoint with its classifier head (dropped: num_classes=0)
        "timm_with_head.pt": {**sd(src), "head.weight": torch.randn(10, 192), "head.bias": torch.randn(10)},
    }


def write(path, obj):
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, path)
    return path


def test_every_layout_loads_and_reproduces_the_source(tmp_path, source, other, x):
    expected = source.forward_features(x)
    for name, obj in layouts(source, other).items():
        path = write(tmp_path / name, obj)
        teacher, info = load_teacher(str(path), ARCH, IMG, **SMALL)
        assert info["kind"] == "file" and info["arch"] == ARCH and len(info["sha256"]) == 64, name
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters()), name
        with torch.no_grad():
            assert torch.equal(teacher.forward_features(x), expected), f"{name} did not load the teacher/EMA weights"


def test_mugs_and_ibot_training_parts_are_reported_as_ignored(tmp_path, source, other):
    mugs = write(tmp_path / "mugs_full.pth", layouts(source, other)["mugs_full.pth"])
    info = load_checkpoint_into(make(seed=5), mugs)
    assert info["prefix"] == "teacher.backbone." and len(info["ignored"]) == 12
    assert all(k.startswith("relation_blocks.0.") for k in info["ignored"])
    ibot = write(tmp_path / "ibot_student.pth", layouts(source, other)["ibot_student_backbone.pth"])
    assert load_checkpoint_into(make(seed=5), ibot)["ignored"] == ["masked_embed"]


def test_extraction_reports_prefix_and_ignored_heads(tmp_path, source, other):
    path = write(tmp_path / "dino_full.pth", layouts(source, other)["dino_full.pth"])
    info = load_checkpoint_into(make(seed=5), path)
    assert info["prefix"] == "teacher.backbone."
    assert info["ignored"] == [] and info["dropped"] > 0  # heads outside backbone. were dropped
    flat = read_state_dict(path)
    assert "teacher.backbone.cls_token" in flat and "student.module.backbone.cls_token" in flat


def test_missing_weight_is_named(tmp_path, source):
    state = sd(source)
    del state["blocks.1.mlp.fc2.bias"]
    path = write(tmp_path / "missing.pth", {"model": state})
    with pytest.raises(EdgeDistillError, match=r"missing.*blocks\.1\.mlp\.fc2\.bias") as err:
        load_teacher(str(path), ARCH, IMG, **SMALL)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_misshapen_weight_is_named_with_shapes(tmp_path, source):
    state = sd(source)
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(10, 192)
    path = write(tmp_path / "misshapen.safetensors", state)
    with pytest.raises(EdgeDistillError, match=r"blocks\.0\.mlp\.fc1\.weight expected \(768, 192\) found \(10, 192\)"):
        load_teacher(str(path), ARCH, IMG, **SMALL)


@pytest.mark.parametrize("ckpt_depth, model_depth, message", [(3, 2, r"unexpected.*blocks\.2\."), (2, 3, r"missing.*blocks\.2\.")])
def test_wrong_architecture_fails(tmp_path, ckpt_depth, model_depth, message):
    path = write(tmp_path / "deep.pth", sd(make(depth=ckpt_depth)))
    with pytest.raises(EdgeDistillError, match=message):
        load_teacher(str(path), ARCH, IMG, patch_size=8, depth=model_depth)


def test_wrong_width_and_patch_size_fail(tmp_path, source):
    path = write(tmp_path / "tiny.pth", sd(source))
    with pytest.raises(EdgeDistillError, match=r"wrong shape.*expected \(1, 1, 384\) found \(1, 1, 192\)"):
        load_teacher(str(path), "vit_small_patch16_224", IMG, **SMALL)
    with pytest.raises(EdgeDistillError, match="has patch size 8 but the model patch size 4"):
        load_teacher(str(path), ARCH, IMG, patch_size=4, depth=2)


def test_other_resolution_resamples_position_embedding(tmp_path, source):
    path = write(tmp_path / "t.pth", sd(source))
    teacher, info = load_teacher(str(path), ARCH, 48, **SMALL)
    assert info["load"]["pos_embed_resampled"] == [[1, 17, 192], [1, 37, 192]]
    assert teacher.forward_features(torch.zeros(1, 3, 48, 48)).shape == (1, 37, 192)


class NotData:
    """A class from outside the allowed plain-data set."""


class Payload:
    """Unpickling this would create a file: proof that no pickle code runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_with_code_is_refused(tmp_path, source):
    custom = write(tmp_path / "custom.pth", {"model": sd(source), "config": NotData()})
    with pytest.raises(EdgeDistillError, match=r"refusing to unpickle code .*NotData.*safetensors"):
        load_teacher(str(custom), ARCH, IMG, **SMALL)
    marker = tmp_path / "pwned"
    evil = write(tmp_path / "evil.pth", {"model": sd(source), "x": Payload(marker)})
    with pytest.raises(EdgeDistillError, match="refusing to unpickle code"):
        read_checkpoint(evil)
    assert not marker.exists()


def test_corrupt_and_foreign_files_fail_naming_the_file(tmp_path, source):
    good = write(tmp_path / "good.pth", sd(source)).read_bytes()
    cases = {
        "truncated.pth": good[: len(good) // 2],
        "noise.pt": bytes(range(256)) * 4,
        "text.bin": b"not a checkpoint at all\n",
        "broken.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage",
        "empty.pth": b"",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(EdgeDistillError, match=name):
            load_teacher(str(path), ARCH, IMG, **SMALL)
    not_vit = write(tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})
    with pytest.raises(EdgeDistillError, match="no ViT backbone weights found"):
        load_teacher(str(not_vit), ARCH, IMG, **SMALL)


def test_run_directory_sources(tmp_path, source, x):
    kwargs = {"img_size": IMG, **SMALL}
    pretrain_dir, distill_dir = tmp_path / "pretrain", tmp_path / "distill"
    save_backbone(source, pretrain_dir, "teacher", ARCH, kwargs, "teacher")
    save_backbone(source, distill_dir, "student", ARCH, kwargs, "student")
    for run_dir, role in ((pretrain_dir, "teacher"), (distill_dir, "student")):
        # the config's arch differs: the run's JSON wins, and it says so
        with pytest.warns(UserWarning, match="teacher.arch=vit_small_patch16_224 ignored"):
            teacher, info = load_teacher(str(run_dir), "vit_small_patch16_224", IMG)
        assert info["kind"] == "run_dir" and info["role"] == role and info["arch"] == ARCH
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        with torch.no_grad():
            assert torch.equal(teacher.forward_features(x), source.forward_features(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same arch and size: nothing to warn about
        _, info = load_teacher(str(pretrain_dir / "teacher.json"), ARCH, IMG)
    assert info["kind"] == "backbone"
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(EdgeDistillError, match="holds no saved backbone.*is the run finished"):
        load_teacher(str(tmp_path / "unfinished"), ARCH, IMG)


def test_random_teacher_is_announced():
    with pytest.warns(UserWarning, match="randomly initialized"):
        teacher, info = load_teacher("random", ARCH, IMG, **SMALL)
    assert info == {"kind": "random", "source": "random", "arch": ARCH, "kwargs": {"img_size": IMG, **SMALL}}
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_hub_name_offline_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EdgeDistillError) as err:
        load_teacher("vit_small_patch16_224.dino", "vit_small_patch16_224", 224)
    message = str(err.value)
    assert "could not download" in message and "vit_small_patch16_224.dino" in message
    assert "--teacher path/to/dino_deitsmall16_pretrain.pth --set teacher.arch=vit_small_patch16_224" in message
    assert "\n" not in message


def test_hub_name_uses_weights_already_in_the_local_cache(tmp_path, monkeypatch):
    """Offline with the weights cached (laid out as huggingface_hub stores them): timm loads
    that file strictly, position embedding resampled to the requested size."""
    import timm

    torch.manual_seed(0)
    hub = timm.create_model("vit_small_patch16_224", num_classes=0).eval()
    repo = tmp_path / "hf" / "models--timm--vit_small_patch16_224.dino"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    save_file(hub.state_dict(), str(repo / "snapshots" / "abc" / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    teacher, info = load_teacher("vit_small_patch16_224.dino", "vit_small_patch16_224", 224)
    assert info["kind"] == "hub" and info["arch"] == "vit_small_patch16_224" and len(info["sha256"]) == 64
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(teacher.forward_features(x), hub.forward_features(x))
    small, _ = load_teacher("vit_small_patch16_224.dino", "vit_small_patch16_224", 32)
    assert small.pos_embed.shape == (1, 5, 384)


@pytest.mark.parametrize(
    "name, message",
    [
        ("./teachers/dino.pth", "teacher not found"),
        ("runs/pretrain-42", "teacher not found"),
        ("missing.safetensors", "teacher not found"),
        ("vit_smal_patch16_224.dino", "did you mean vit_small_patch16_224.dino"),
        ("vit_small_patch16_224.nonexistent", "no pretrained weights named"),
        ("resnet50.a1_in1k", "not a timm VisionTransformer"),
    ],
)
def test_bad_sources_fail_clearly(name, message, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EdgeDistillError, match=message):
        load_teacher(name, ARCH, IMG, **SMALL)
