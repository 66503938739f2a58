"""Chunked weighted k-NN (DINO protocol) against a brute-force reference, memory bound,
feature gathering across ranks, and feature extraction from a timm ViT."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgedistill.errors import EdgeDistillError
from edgedistill.eval.features import TorchEmbedder, extract_features
from edgedistill.eval.knn import knn_accuracy, knn_classify

KS = (1, 10, 20, 100, 200)


def brute_force_ranking(train, train_labels, val, num_classes, k, temperature=0.07):
    """Class ranking (Nv, C) from the full (Nv, Nt) similarity matrix.

    Written independently of the chunked code: normalize, one big matmul, a stable
    descending sort of every row (equal similarities keep bank order: lower index first),
    one-hot votes weighted by exp(sim / T) (float64 exp rounded to float32, as specified),
    then a stable descending sort of the votes (equal votes: lower class first).
    """
    train = F.normalize(torch.as_tensor(train).float(), dim=1)
    val = F.normalize(torch.as_tensor(val).float(), dim=1)
    sims = val @ train.T
    k = min(k, train.shape[0])
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
    weights = torch.exp(sims.gather(1, order).double() / temperature).float().double()
    one_hot = F.one_hot(torch.as_tensor(train_labels).long()[order], num_classes).double()
    votes = (one_hot * weights[..., None]).sum(dim=1)
    return torch.sort(votes, dim=1, descending=True, stable=True).indices


def reference_accuracy(ranking, val_labels, top):
    hit = (ranking[:, :top] == torch.as_tensor(val_labels)[:, None]).any(dim=1)
    return 100.0 * hit.double().mean().item()


def check_against_reference(train, train_labels, val, val_labels, num_classes, ks=KS, **chunks):
    result = knn_classify(train, train_labels, val, num_classes, ks=ks, val_labels=val_labels, **chunks)
    for k in ks:
        ranking = brute_force_ranking(train, train_labels, val, num_classes, k)
        entry = result["per_k"][k]
        assert entry["k_used"] == min(k, len(train))
        assert entry["top1"] == pytest.approx(reference_accuracy(ranking, val_labels, 1), abs=1e-9), k
        if num_classes >= 5:
            assert entry["top5"] == pytest.approx(reference_accuracy(ranking, val_labels, 5), abs=1e-9), k
        else:
            assert entry["top5"] is None
        # per-sample predictions of this k (the headline k is a parameter)
        preds = knn_classify(train, train_labels, val, num_classes, ks=(k,), headline_k=k, **chunks)
        np.testing.assert_array_equal(preds["predictions"], ranking[:, 0].numpy(), err_msg=f"k={k}")
    return result


def test_matches_brute_force_on_random_features():
    torch.manual_seed(0)
    num_classes = 10
    centers = torch.randn(num_classes, 16)
    train_labels = torch.randint(0, num_classes, (700,))
    val_labels = torch.randint(0, num_classes, (300,))
    # clustered features with varied norms: normalization matters, accuracies are neither 0 nor 100
    train = (centers[train_labels] + 1.5 * torch.randn(700, 16)) * torch.rand(700, 1).add(0.1) * 5
    val = centers[val_labels] + 1.5 * torch.randn(300, 16)
    # chunks smaller than both sides and not dividing them
    result = check_against_reference(train, train_labels, val, val_labels, num_classes,
                                     chunk_size=64, bank_chunk_size=100)
    assert 20 < result["top1"] < 100
    assert result["top1"] == result["per_k"][20]["top1"]
    assert result["headline_k"] == 20 and result["predictions"].shape == (300,)
    assert result["predictions"].dtype == np.int64
    # numpy in, one chunk each way: same answer
    whole = knn_classify(train.numpy(), train_labels.numpy(), val.numpy(), num_classes,
                         val_labels=val_labels.numpy(), chunk_size=10_000)
    np.testing.assert_array_equal(whole["predictions"], result["predictions"])
    assert whole["per_k"] == {k: result["per_k"][k] for k in (10, 20, 100, 200)}


def lattice_features(count, dim, generator):
    """Rows with exactly four entries of +-1 (norm 2): normalized entries are 0 or +-0.5, so
    every cosine similarity is a multiple of 0.25, exact in any summation order. Many exact
    ties by construction."""
    rows = torch.zeros(count, dim)
    for i in range(count):
        cols = torch.randperm(dim, generator=generator)[:4]
        rows[i, cols] = torch.randint(0, 2, (4,), generator=generator).float() * 2 - 1
    return rows


def test_exact_ties_follow_the_documented_rule():
    g = torch.Generator().manual_seed(1)
    num_classes = 7
    base = lattice_features(40, 12, g)
    # 500 bank rows drawn from 40 distinct vectors: duplicates everywhere, with different labels
    train = base[torch.randint(0, 40, (500,), generator=g)]
    train_labels = torch.randint(0, num_classes, (500,), generator=g)
    val = torch.cat([base[:20], lattice_features(60, 12, g)])
    val_labels = torch.randint(0, num_classes, (80,), generator=g)
    # the test must actually exercise ties at the top-k boundary
    sims = F.normalize(val, dim=1) @ F.normalize(train, dim=1).T
    ordered = sims.sort(dim=1, descending=True).values
    assert (ordered[:, 19] == ordered[:, 20]).float().mean() > 0.5
    assert (ordered[:, 9] == ordered[:, 10]).float().mean() > 0.5
    check_against_reference(train, train_labels, val, val_labels, num_classes,
                            chunk_size=16, bank_chunk_size=37)


def test_equal_votes_lower_class_wins_and_no_top5_below_five_classes():
    # bank in dims 0-3, queries in dims 4-7: every similarity is exactly 0, every weight 1,
    # so the k neighbours are the k lowest bank indices and the votes are plain counts
    train = torch.zeros(8, 8)
    train[torch.arange(8), torch.arange(8) % 4] = 1.0
    train_labels = torch.tensor([3, 1, 1, 3, 0, 2, 2, 0])
    val = torch.zeros(2, 8)
    val[0, 4] = 1.0
    val[1, 5:7] = 1.0
    result = knn_classify(train, train_labels, val, 4, ks=(1, 2, 4, 8), headline_k=4,
                          val_labels=torch.tensor([1, 3]), chunk_size=1, bank_chunk_size=3)
    # k=4: neighbours 0..3 -> classes 3,1,1,3: a 2-2 tie between 1 and 3 -> class 1
    np.testing.assert_array_equal(result["predictions"], [1, 1])
    assert result["per_k"][4]["top1"] == 50.0
    # k=1: neighbour 0 only (class 3); k=2: 3 and 1 tie 1-1 -> class 1; k=8: all classes 2-2 -> class 0
    assert result["per_k"][1]["top1"] == 50.0
    assert result["per_k"][2]["top1"] == 50.0
    assert result["per_k"][8]["top1"] == 0.0
    assert all(entry["top5"] is None for entry in result["per_k"].values())
    assert knn_classify(train, train_labels, val, 4, ks=(8,), headline_k=8)["predictions"].tolist() == [0, 0]


def test_absent_class_and_k_larger_than_the_bank():
    torch.manual_seed(2)
    num_classes = 6
    train = torch.randn(30, 8)
    train_labels = torch.arange(30) % num_classes
    val = torch.randn(50, 8)
    val_labels = torch.randint(0, num_classes - 1, (50,))  # class 5 never appears in val
    result = check_against_reference(train, train_labels, val, val_labels, num_classes,
                                     ks=(10, 20, 100, 200), chunk_size=7, bank_chunk_size=4)
    assert [result["per_k"][k]["k_used"] for k in (10, 20, 100, 200)] == [10, 20, 30, 30]
    assert result["per_k"][100] == result["per_k"][200]
    assert result["per_k"][10]["top5"] is not None


def test_fewer_than_five_classes_and_convenience():
    torch.manual_seed(3)
    train, val = torch.randn(200, 8), torch.randn(40, 8)
    train_labels, val_labels = torch.randint(0, 3, (200,)), torch.randint(0, 3, (40,))
    result = check_against_reference(train, train_labels, val, val_labels, 3, chunk_size=9, bank_chunk_size=33)
    assert result["top5"] is None
    assert knn_accuracy(train, train_labels, val, val_labels, 3, k=10, chunk_size=9) == result["per_k"][10]["top1"]


def test_bad_inputs_raise_clear_errors():
    train, labels, val = torch.randn(10, 4), torch.arange(10) % 2, torch.randn(3, 4)
    with pytest.raises(EdgeDistillError, match="empty"):
        knn_classify(train[:0], labels[:0], val, 2)
    with pytest.raises(EdgeDistillError, match=r"labels must lie in \[0, 2\)"):
        knn_classify(train, labels + 1, val, 2)
    bad = train.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(EdgeDistillError, match="NaN"):
        knn_classify(bad, labels, val, 2)
    with pytest.raises(TypeError, match="val_labels"):
        knn_classify(train, labels, val, torch.zeros(3, dtype=torch.long))


MEMORY_SCRIPT = textwrap.dedent("""
    import json, psutil, torch
    from edgedistill.eval.knn import knn_classify

    def peak_rss():  # VmHWM: this process's own peak (ru_maxrss is inherited across fork/exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    torch.set_num_threads(2)
    nt, nv, d, c = 262_144, 512, 16, 100
    train, labels = torch.randn(nt, d), torch.randint(0, c, (nt,))
    val, val_labels = torch.randn(nv, d), torch.randint(0, c, (nv,))
    # warm up every code path on a small problem (allocator pools, thread pools)
    knn_classify(train[:4096], labels[:4096], val[:300], c, val_labels=val_labels[:300],
                 chunk_size=256, bank_chunk_size=1024)
    rss_before = psutil.Process().memory_info().rss
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak to the current RSS
    result = knn_classify(train, labels, val, c, val_labels=val_labels, chunk_size=128, bank_chunk_size=4096)
    peak = peak_rss()
    print(json.dumps({"increase": peak - rss_before, "full_matrix": nv * nt * 4, "top1": result["top1"]}))
""")


def test_memory_is_bounded_by_the_chunks():
    """512 queries against a 262k bank in blocks of 128 x 4096 (2 MiB of similarities).

    The full similarity matrix would take 512 MiB, and chunking only the queries (128 x 262k)
    still 128 MiB: both blow the 64 MiB bound, which leaves the chunked code (~10-20 MiB
    measured, allocator slack included) ample room. Peak RSS growth is measured in a fresh
    process."""
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["full_matrix"] == 512 * 1024**2
    assert stats["increase"] < 64 * 1024**2, f"peak grew by {stats['increase'] / 2**20:.0f} MiB"


GATHER_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from edgedistill.distributed import gather_features

    def worker(rank, path):
        dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=2)
        n = 3 if rank == 0 else 5  # unequal shards
        feats = torch.full((n, 4), float(rank)) + torch.arange(n)[:, None] / 10
        labels = torch.arange(n) + 100 * rank
        all_feats, all_labels = gather_features(feats, labels)
        if rank == 0:
            print(json.dumps({"feats": all_feats.tolist(), "labels": all_labels.tolist()}), flush=True)
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.start_processes(worker, args=(sys.argv[1],), nprocs=2, start_method="fork")
""")


def test_gather_features_with_unequal_shards(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "rendezvous")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["labels"] == [0, 1, 2, 100, 101, 102, 103, 104]
    assert [row[0] for row in out["feats"]] == pytest.approx([0, 0.1, 0.2, 1, 1.1, 1.2, 1.3, 1.4])


def test_gather_features_without_process_group_is_identity():
    from edgedistill.distributed import gather_features

    feats, labels = torch.randn(3, 2), torch.arange(3)
    out_feats, out_labels = gather_features(feats, labels)
    assert out_feats is feats and out_labels is labels


def test_torch_embedder_and_extract_features():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=16,
                              patch_size=8, embed_dim=32, depth=1, num_heads=2)
    model.train()
    images, labels = torch.randn(10, 3, 16, 16), torch.arange(10) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    embedder = TorchEmbedder(model)
    assert embedder.dim == 32 and embedder.name == "torch"
    feats, got_labels = extract_features(embedder, loader, progress=False)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = model.forward_features(images)[:, 0]
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got_labels, labels)
    out = embedder.embed(images[:2].numpy())
    assert isinstance(out, np.ndarray) and out.shape == (2, 32) and out.dtype == np.float32
    # the progress bar path runs too
    feats2, _ = extract_features(embedder, loader, progress=True)
    torch.testing.assert_close(feats2, feats)


@pytest.mark.parametrize("classes", [3, 7])
def test_numpy_knn_gives_the_torch_figures(classes):
    """runtime.knn (no torch) and eval.knn (chunked torch) on the same features: the same
    per-k top-1/top-5 and predictions, duplicated bank rows (exact ties) included."""
    from edgedistill.runtime.knn import knn_classify as numpy_classify

    rng = np.random.default_rng(3)
    bank = rng.standard_normal((150, 12)).astype(np.float32)
    bank[100:120] = bank[:20]  # ties between gallery items
    labels = rng.integers(0, classes, 150)
    queries = np.concatenate([rng.standard_normal((40, 12)), bank[:10] + 1e-3]).astype(np.float32)
    truth = rng.integers(0, classes, 50)
    ks = (1, 10, 20, 100, 200)
    ref = knn_classify(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries), classes, ks=ks,
                       val_labels=torch.from_numpy(truth), chunk_size=7, bank_chunk_size=33)
    got = numpy_classify(bank, labels, queries, classes, ks=ks, val_labels=truth, chunk_size=11)
    assert got["per_k"] == ref["per_k"]
    assert (got["top1"], got["top5"], got["headline_k_used"]) == (ref["top1"], ref["top5"], ref["headline_k_used"])
    np.testing.assert_array_equal(got["predictions"], ref["predictions"])
    assert 100 / classes / 3 < ref["top1"] < 100  # a number that could have come out otherwise
