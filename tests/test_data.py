"""edgedistill.data: folders, bad images, colour modes, digits, transforms, loader determinism."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgedistill.config import config_from_dict
from edgedistill.data import (
    BadImagesError,
    build_dataset,
    build_eval_loader,
    build_knn_loaders,
    build_train_loader,
    eval_preprocessing,
    eval_transform,
    has_split_layout,
    train_transform,
)
from edgedistill.data.digits import split_indices
from edgedistill.data.folders import verify_image
from edgedistill.data.transforms import seeded_call
from edgedistill.errors import EdgeDistillError

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


def noise(size=(12, 10), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) + ((channels,) if channels else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode)


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def make_labeled(root: Path, per_class: int = 3, classes=("cat", "dog")) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save(root / name / f"{i}.png", noise(seed=10 * c + i))
    return root


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ----------------------------------------------------------------------------- folders


@pytest.mark.filterwarnings("error::UserWarning")
def test_labeled_nested_mixed_formats_and_modes(tmp_path):
    root = tmp_path / "data"
    save(root / "dog" / "a.png", noise(seed=1))
    save(root / "dog" / "gray.png", noise(seed=2, mode="L"))
    save(root / "dog" / "alpha.png", noise(seed=3, mode="RGBA"))
    save(root / "dog" / "pal.gif", noise(seed=4).convert("P"))
    save(root / "dog" / "pal_t.png", noise(seed=4).convert("P"), transparency=bytes([0, 128]))
    save(root / "dog" / "cmyk.jpg", noise(seed=5).convert("CMYK"))
    save(root / "dog" / "la.png", noise(seed=6).convert("LA"))
    save(root / "dog" / "deep16.png", Image.fromarray(np.full((6, 6), 65535, np.uint16)))
    save(root / "cat" / "sub" / "deeper" / "b.JPG", noise(seed=7), quality=95)
    save(root / "cat" / "c.jpeg", noise(seed=8))
    save(root / "cat" / "d.webp", noise(seed=9))
    save(root / "cat" / "e.bmp", noise(seed=10))
    save(root / "cat" / "f.TIFF", noise(seed=11))
    save(root / ".hidden" / "x.png", noise())  # hidden folder: skipped
    save(root / "cat" / "._b.png", noise())  # macOS resource fork: skipped
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()  # no images: not a class

    ds = build_dataset(str(root), "train", require_labels=True)
    assert ds.classes == ["cat", "dog"] and ds.labeled
    assert len(ds) == 13 and ds.labels == [0] * 5 + [1] * 8
    rel = [Path(p).relative_to(root).as_posix() for p in ds.paths]
    assert rel[:5] == ["cat/c.jpeg", "cat/d.webp", "cat/e.bmp", "cat/f.TIFF", "cat/sub/deeper/b.JPG"]
    assert rel[5:] == sorted(rel[5:])
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and label == ds.labels[i]
    img16, _ = ds[rel.index("dog/deep16.png")]
    assert np.asarray(img16).min() == 255  # 16-bit white stays white (scaled, not clipped)

    ds.transform = eval_transform(16)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0


def test_unlabeled_flat_and_nested(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        save(flat / f"{i}.jpg", noise(seed=i))
    ds = build_dataset(str(flat), "train")
    assert not ds.labeled and ds.classes == [] and ds.labels == [-1, -1, -1]

    nested = tmp_path / "nested"  # loose images beside subfolders -> unlabeled, every image counts
    save(nested / "top.png", noise())
    save(nested / "a" / "b" / "c.png", noise())
    save(nested / "z" / "d.jpg", noise())
    ds = build_dataset(str(nested), "train")
    assert [Path(p).relative_to(nested).as_posix() for p in ds.paths] == ["a/b/c.png", "top.png", "z/d.jpg"]
    assert set(ds.labels) == {-1}
    x, y = build_dataset(str(nested), "train", train_transform(8))[0]
    assert x.shape == (3, 8, 8) and y == -1

    with pytest.raises(EdgeDistillError) as exc:
        build_dataset(str(nested), "train", require_labels=True)
    assert "not a labeled image folder" in one_line(exc) and "directly at its top level" in str(exc.value)


def test_missing_not_a_directory_and_empty(tmp_path):
    with pytest.raises(EdgeDistillError) as exc:
        build_dataset(str(tmp_path / "nope"), "train")
    assert "not found" in one_line(exc)

    afile = tmp_path / "file.png"
    save(afile, noise())
    with pytest.raises(EdgeDistillError) as exc:
        build_dataset(str(afile), "train")
    assert "not a directory" in one_line(exc)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("x")
    save(empty / ".hidden.png", noise())
    with pytest.raises(EdgeDistillError) as exc:
        build_dataset(str(empty), "train")
    msg = one_line(exc)
    assert "no images found" in msg and ".jpg" in msg and ".webp" in msg


# ----------------------------------------------------------------------------- bad images


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    noise((64, 64), seed=42).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def test_corrupt_file_is_skipped_and_counted(tmp_path):
    root = make_labeled(tmp_path / "d")
    bad = root / "cat" / "1b_corrupt.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(500))
    ds = build_dataset(str(root), "train", max_bad_images=1)
    assert len(ds) == 6 and str(bad) not in ds.paths and ds.bad_images == [str(bad)]


def test_truncated_jpeg_passes_scan_then_is_substituted(tmp_path):
    root = make_labeled(tmp_path / "d")
    trunc = truncated_jpeg(root / "cat" / "1_trunc.jpg")
    assert verify_image(str(trunc)) is None  # the cheap scan cannot see it
    ds = build_dataset(str(root), "train", max_bad_images=1)
    i = ds.paths.index(str(trunc))
    img, label = ds[i]
    expected, _ = ds[i + 1]  # the next index stands in, deterministically
    assert np.array_equal(np.asarray(img), np.asarray(expected)) and label == ds.labels[i + 1]
    assert ds.bad_images == [str(trunc)]
    ds[i]  # a known-bad index is skipped without being counted again
    assert len(ds.bad_images) == 1

    strict = build_dataset(str(root), "train", max_bad_images=0)
    with pytest.raises(BadImagesError) as exc:
        strict[i]
    assert "1 corrupt or truncated image(s)" in one_line(exc) and "1_trunc.jpg" in str(exc.value)


def test_over_budget_fails_with_count_and_names(tmp_path):
    root = make_labeled(tmp_path / "d")
    for k in range(3):
        (root / "dog" / f"bad{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(BadImagesError) as exc:
        build_dataset(str(root), "train", max_bad_images=2)
    msg = one_line(exc)
    assert "3 corrupt or truncated image(s)" in msg and "max_bad_images=2" in msg and "bad0.png" in msg
    assert len(build_dataset(str(root), "train", max_bad_images=3)) == 6


def test_over_budget_in_a_worker_stays_one_line(tmp_path):
    root = make_labeled(tmp_path / "d")
    truncated_jpeg(root / "cat" / "0_trunc.jpg")
    loader = build_eval_loader(str(root), "train", 8, batch_size=4, num_workers=1)
    loader.dataset.max_bad_images = 0
    with pytest.raises(BadImagesError) as exc:
        next(iter(loader))
    assert one_line(exc).startswith("1 corrupt or truncated image(s)")


# ----------------------------------------------------------------------------- layouts


def test_train_val_layout_and_val_path(tmp_path):
    root = tmp_path / "ds"
    make_labeled(root / "train")
    make_labeled(root / "val", per_class=1)
    assert has_split_layout(root) and not has_split_layout(root / "train")
    train = build_dataset(str(root), "train")
    val = build_dataset(str(root), "val")
    assert Path(train.root) == root / "train" and len(train) == 6
    assert Path(val.root) == root / "val" and len(val) == 2 and val.classes == train.classes

    (root / "labels").mkdir()  # an extra folder beside train/ and val/ does not break the layout
    assert has_split_layout(root)
    only_train = make_labeled(tmp_path / "only" / "train")
    assert Path(build_dataset(str(only_train.parent), "train").root) == only_train

    flat = make_labeled(tmp_path / "flat")
    with pytest.raises(EdgeDistillError) as exc:
        build_dataset(str(flat), "val")
    assert "data.val_path" in one_line(exc)
    assert Path(build_dataset(str(flat), "val", val_path=str(root)).root) == root / "val"
    assert Path(build_dataset(str(flat), "val", val_path=str(root / "train")).root) == root / "train"

    cfg = config_from_dict({"data": {"path": str(flat), "val_path": str(root), "img_size": 8, "num_workers": 0}})
    bank, query = build_knn_loaders(cfg, batch_size=4)
    x, y = next(iter(bank))
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 0, 1]
    assert Path(bank.dataset.root) == root / "train" and Path(query.dataset.root) == root / "val"


def test_knn_class_mismatch_and_unlabeled_errors(tmp_path):
    train = make_labeled(tmp_path / "train_dir")
    other = make_labeled(tmp_path / "other", per_class=1, classes=("cat", "cow"))
    cfg = config_from_dict({"data": {"path": str(train), "val_path": str(other), "num_workers": 0}})
    with pytest.raises(EdgeDistillError) as exc:
        build_knn_loaders(cfg)
    msg = one_line(exc)
    assert "only in train: dog" in msg and "only in val: cow" in msg

    unlabeled = tmp_path / "unl"
    save(unlabeled / "a.png", noise())
    cfg = config_from_dict({"data": {"path": str(unlabeled), "val_path": str(other), "num_workers": 0}})
    with pytest.raises(EdgeDistillError) as exc:
        build_knn_loaders(cfg)
    assert "not a labeled image folder" in one_line(exc)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_labels_and_split():
    train, val = split_indices("train"), split_indices("val")
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert not set(train) & set(val)
    assert np.array_equal(split_indices("val"), val)  # fixed split

    ds = build_dataset("digits", "train", img_size=24)
    dv = build_dataset("digits", "val", img_size=24)
    assert len(ds) == 1438 and ds.paths is None and ds.classes == [str(c) for c in range(10)]
    counts_tr, counts_va = np.bincount(ds.labels, minlength=10), np.bincount(dv.labels, minlength=10)
    assert (counts_va > 0).all() and np.allclose(counts_va / (counts_tr + counts_va), 0.2, atol=0.01)
    assert dv.labels == build_dataset("digits", "val").labels

    img, y = ds[0]
    arr = np.asarray(img)
    assert img.mode == "RGB" and img.size == (24, 24) and arr.dtype == np.uint8 and 0 <= y <= 9
    assert arr.max() > 200 and arr.min() < 20 and np.array_equal(arr[..., 0], arr[..., 2])
    ds.transform = train_transform(24)
    x, _ = ds[0]
    assert x.shape == (3, 24, 24)


# ----------------------------------------------------------------------------- transforms


def test_transforms_shapes_and_normalization():
    torch.manual_seed(0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    img = noise((40, 30))
    assert train_transform(16, (0.2, 1.0), mean, std)(img).shape == (3, 16, 16)
    assert eval_transform(16)(img).shape == (3, 16, 16)

    color = (200, 100, 0)
    x = eval_transform(16, mean, std)(Image.new("RGB", (30, 20), color))
    expected = (torch.tensor(color) / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(x, expected[:, None, None].expand(3, 16, 16), atol=1e-5)

    pre = eval_preprocessing(32, mean, std)
    assert pre == {
        "resize": 37, "crop": 32, "interpolation": "bicubic", "mean": list(mean), "std": list(std),
        "channel_order": "RGB", "layout": "NCHW", "dtype": "float32", "scale": 1 / 255,
    }
    assert eval_preprocessing(224)["resize"] == 256


def test_seeded_call_is_repeatable_and_leaves_global_rng_alone():
    t = train_transform(8)
    img = noise((20, 20))
    torch.manual_seed(123)
    a = seeded_call(t, img, 7)
    after = torch.rand(3)
    torch.manual_seed(123)
    b = seeded_call(t, img, 7)
    assert torch.equal(a, b) and torch.equal(torch.rand(3), after)
    assert not all(torch.equal(a, seeded_call(t, img, s)) for s in range(8, 12))


# ----------------------------------------------------------------------------- loaders


def batches(cfg, seed, epoch=0, start=0, n=3, distributed=False):
    loader = build_train_loader(cfg, train_transform(cfg.data.img_size), distributed=distributed, seed=seed)
    loader.sampler.set_epoch(epoch, start)
    out = []
    for x, y in loader:
        out.append((x, y))
        if len(out) == n:
            break
    return out


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_train_loader_is_deterministic(tmp_path):
    root = make_labeled(tmp_path / "d", per_class=8)
    cfg0 = config_from_dict({"data": {"path": str(root), "img_size": 8, "batch_size": 4, "num_workers": 0}})
    cfg2 = config_from_dict({"data": {"path": str(root), "img_size": 8, "batch_size": 4, "num_workers": 2}})
    ref = batches(cfg0, seed=3)
    assert len(ref) == 3 and ref[0][0].shape == (4, 3, 8, 8)
    assert same(ref, batches(cfg0, seed=3))
    two = batches(cfg2, seed=3)
    assert same(two, batches(cfg2, seed=3))
    assert same(ref, two)  # views do not depend on the worker count
    assert not same(ref, batches(cfg0, seed=4))
    assert not same(ref, batches(cfg0, seed=3, epoch=1))
    assert same(ref[1:], batches(cfg0, seed=3, start=4, n=2))  # mid-epoch resume
    loader = build_train_loader(cfg0, train_transform(8), distributed=False, seed=3)
    assert len(loader) == 4 and loader.sampler.epoch == 0


def test_train_loader_distributed_single_rank(tmp_path):
    import torch.distributed as dist

    root = make_labeled(tmp_path / "d", per_class=4)
    cfg = config_from_dict({"data": {"path": str(root), "img_size": 8, "batch_size": 2, "num_workers": 0}})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert same(batches(cfg, seed=0, distributed=True), batches(cfg, seed=0))
    finally:
        dist.destroy_process_group()


def test_train_loader_digits_and_too_small(tmp_path):
    cfg = config_from_dict({"data": {"path": "digits", "img_size": 16, "batch_size": 8, "num_workers": 0}})
    x, y = batches(cfg, seed=0, n=1)[0]
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64 and y.min() >= 0
    small = make_labeled(tmp_path / "s", per_class=1)
    cfg = config_from_dict({"data": {"path": str(small), "batch_size": 8, "num_workers": 0}})
    with pytest.raises(EdgeDistillError) as exc:
        build_train_loader(cfg, train_transform(8), distributed=False, seed=0)
    assert "fewer than one batch" in one_line(exc)


def test_cifar10_subset_if_present():
    if not CIFAR.is_dir():
        pytest.skip(f"{CIFAR} not present (shared dev data; not part of the project)")
    val = build_dataset(str(CIFAR), "val", eval_transform(32), require_labels=True)
    assert len(val) == 2000 and len(val.classes) == 10 and val.classes[0] == "airplane"
    for i in (0, 1999):
        x, y = val[i]
        assert x.shape == (3, 32, 32) and y == val.labels[i]
    assert os.path.basename(os.path.dirname(val.paths[-1])) == "truck"


def test_hflip_off_removes_every_flip():
    """data.hflip=false: neither the distill view nor DINO's crops mirror an image (digits, text)."""
    from torchvision import transforms as T

    from edgedistill.config import build_config
    from edgedistill.train.pretrain import multicrop_for

    def flips(transform) -> int:
        found = 0
        for t in getattr(transform, "transforms", []):
            found += isinstance(t, T.RandomHorizontalFlip) + flips(t)
        return found

    assert flips(train_transform(8)) == 1 and flips(train_transform(8, hflip=False)) == 0
    on = multicrop_for(build_config(None, ["pretrain.local_crops=1"]))
    off = multicrop_for(build_config(None, ["pretrain.local_crops=1", "data.hflip=false"]))
    assert [flips(t) for t in (on.global1, on.global2, on.local)] == [1, 1, 1]
    assert [flips(t) for t in (off.global1, off.global2, off.local)] == [0, 0, 0]
