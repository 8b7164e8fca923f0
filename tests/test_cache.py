"""Tests for probekit.cache: atomic shard writes, resume, checksums, identity, reading."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit import cache as cache_mod
from probekit.cache import CacheError, CacheMismatchError, CacheWriter, FeatureCache

LAYERS = [("layers.0", 3), ("layers.1", 5), ("layers.2", 4)]
POOLINGS = ["cls", "mean"]
N = 10
SHARD = 4  # -> 3 shards: 4, 4, 2


def make_manifest(**changes):
    manifest = {
        "model": {"id": "tiny", "revision": "abc", "weights_sha256": "0" * 64},
        "layers": [{"name": n, "dim": d} for n, d in LAYERS],
        "poolings": list(POOLINGS),
        "dtype": "float32",
        "precision": "fp32",
        "preprocessing": {"max_length": 16},
        "dataset": {"name": "toy", "fingerprint": "f" * 64, "n": N, "label_names": ["a", "b"]},
    }
    manifest.update(changes)
    return manifest


def make_data(n=N, seed=0):
    """Features {key: (n, D)}, labels (n,), texts."""
    g = torch.Generator().manual_seed(seed)
    feats = {f"{name}.{p}": torch.randn(n, d, generator=g) for name, d in LAYERS for p in POOLINGS}
    labels = np.arange(n) % 2
    texts = [f"text {i}" for i in range(n)]
    return feats, labels, texts


def write(writer, feats, labels, shards=None):
    for i in writer.missing_shards() if shards is None else shards:
        start, stop = writer.shard_range(i)
        writer.write_shard(i, {k: v[start:stop] for k, v in feats.items()}, labels[start:stop])


def build(path, manifest=None, shard_size=SHARD, dtype=None):
    feats, labels, texts = make_data()
    manifest = manifest or make_manifest()
    if dtype:
        manifest["dtype"] = dtype
    writer = CacheWriter.create(path, manifest, N, shard_size=shard_size, texts=texts)
    write(writer, feats, labels)
    return writer.finalize(), feats, labels


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def expected_flat(feats, names, pools):
    """Reference (N, T, D) stack, layer-major, zero-padded."""
    dims = dict(LAYERS)
    width = max(dims[n] for n in names)
    out = torch.zeros(N, len(names) * len(pools), width)
    for li, name in enumerate(names):
        for pi, p in enumerate(pools):
            out[:, li * len(pools) + pi, : dims[name]] = feats[f"{name}.{p}"]
    return out


def expected(feats, names, pools):
    """Reference of ``load()``: (N, L, D) for one pooling, (N, L, P, D) for several."""
    dims = dict(LAYERS)
    width = max(dims[n] for n in names)
    out = torch.zeros(N, len(names), len(pools), width)
    for li, name in enumerate(names):
        for pi, p in enumerate(pools):
            out[:, li, pi, : dims[name]] = feats[f"{name}.{p}"]
    return out[:, :, 0] if len(pools) == 1 else out


# ----------------------------------------------------------------------------- layout and reading


def test_layout_and_manifest(tmp_path):
    cache, _, _ = build(tmp_path / "c")
    root = tmp_path / "c"
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "shards", "texts.json"]
    assert sorted(p.name for p in (root / "shards").iterdir()) == [
        f"00000{i}.{ext}" for i in range(3) for ext in ("json", "safetensors")
    ]
    manifest = json.loads((root / "manifest.json").read_text())
    for key in (
        "format_version",
        "model",
        "layers",
        "poolings",
        "dtype",
        "precision",
        "preprocessing",
        "dataset",
        "fingerprint",
        "shard_size",
        "n_samples",
        "n_shards",
        "probekit_version",
        "complete",
    ):
        assert key in manifest, key
    assert manifest["complete"] is True and manifest["n_shards"] == 3
    meta = json.loads((root / "shards" / "000002.json").read_text())
    assert meta["n"] == 2 and meta["start"] == 8
    assert (
        meta["sha256"]
        == hashlib.sha256((root / "shards/000002.safetensors").read_bytes()).hexdigest()
    )
    assert cache.texts == [f"text {i}" for i in range(N)]


def test_load_parity_and_selection(tmp_path):
    cache, feats, labels = build(tmp_path / "c")
    names = [n for n, _ in LAYERS]
    assert len(cache) == N
    np.testing.assert_array_equal(cache.labels, labels)
    np.testing.assert_array_equal(cache.index, np.arange(N))
    assert cache.layer_names == names and cache.dims == [3, 5, 4] and cache.poolings == POOLINGS
    assert cache.label_names == ["a", "b"]

    torch.testing.assert_close(
        cache.load(pooling="cls"), expected(feats, names, ["cls"]), rtol=0, atol=0
    )
    both = cache.load(pooling=["cls", "mean"])
    torch.testing.assert_close(cache.load(), both, rtol=0, atol=0)  # default: every pooling
    torch.testing.assert_close(cache.load(pooling="cls+mean"), both, rtol=0, atol=0)
    assert both.shape == (N, 3, 2, 5)  # layers and poolings as separate axes
    torch.testing.assert_close(both, expected(feats, names, ["cls", "mean"]), rtol=0, atol=0)
    # every (layer, pooling) cell is that key's array, exactly; zero padding on the right
    for li, name in enumerate(names):
        for pi, p in enumerate(["cls", "mean"]):
            d = dict(LAYERS)[name]
            assert torch.equal(both[:, li, pi, :d], cache[f"{name}.{p}"].float())
            assert torch.equal(both[:, li, pi, :d], cache.load(pooling=p)[:, li, :d])
    assert both[:, 0, :, 3:].abs().sum() == 0
    # flat: layer-major tokens, token 1 is layer 0 / mean, token 2 is layer 1 / cls
    flat = cache.load(flat=True)
    assert flat.shape == (N, 6, 5)
    torch.testing.assert_close(flat, expected_flat(feats, names, ["cls", "mean"]), rtol=0, atol=0)
    torch.testing.assert_close(flat[:, 1, :3], feats["layers.0.mean"])
    torch.testing.assert_close(flat[:, 2, :5], feats["layers.1.cls"])
    assert torch.equal(cache.load(pooling="cls", flat=True), cache.load(pooling="cls"))

    cases = {
        2: ["layers.1", "layers.2"],  # int n = the last n
        1: ["layers.2"],
        (0, -1): ["layers.0", "layers.2"],
        (-2,): ["layers.1"],
        ("layers.2", "layers.0"): ["layers.2", "layers.0"],
        "layers.1": ["layers.1"],
        ("layers.*",): names,
    }
    for sel, want in cases.items():
        sel = list(sel) if isinstance(sel, tuple) else sel
        got = cache.load(layers=sel, pooling="mean")
        torch.testing.assert_close(got, expected(feats, want, ["mean"]), rtol=0, atol=0)
    # width follows the selected layers only
    assert cache.load(layers=[0], pooling="cls").shape == (N, 1, 3)


def test_dict_like_and_repr(tmp_path):
    cache, feats, _ = build(tmp_path / "c")
    assert cache.keys()[:3] == ["layers.0.cls", "layers.0.mean", "layers.1.cls"]
    assert list(cache) == cache.keys()
    assert "layers.1.mean" in cache and "layers.9.cls" not in cache
    torch.testing.assert_close(cache["layers.1.mean"], feats["layers.1.mean"], rtol=0, atol=0)
    with pytest.raises(KeyError):
        cache["nope.cls"]
    text = repr(cache)
    assert text.startswith("FeatureCache(n=10, layers=3 [layers.0..layers.2]")
    assert "poolings=[cls, mean]" in text and "model='tiny'" in text


def test_selection_errors(tmp_path):
    cache, _, _ = build(tmp_path / "c")
    with pytest.raises(ValueError, match=r"1\.\.3"):
        cache.load(layers=4)
    with pytest.raises(ValueError, match=r"1\.\.3"):
        cache.load(layers=0)
    with pytest.raises(IndexError, match=r"-3\.\.2"):
        cache.load(layers=[3])
    with pytest.raises(IndexError, match=r"-3\.\.2"):
        cache.load(layers=[-4])
    with pytest.raises(ValueError, match="layers.0"):
        cache.load(layers=["blocks.1"])
    with pytest.raises(ValueError, match="recorded poolings"):
        cache.load(pooling="last")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_storage_loads_as_requested_dtype(tmp_path, dtype):
    cache, feats, _ = build(tmp_path / "c", dtype=dtype)
    assert cache["layers.0.cls"].dtype == getattr(torch, dtype)
    x = cache.load(layers=[0], dtype=torch.float32)
    assert x.dtype == torch.float32
    ref = feats["layers.0.cls"].to(getattr(torch, dtype)).float()
    torch.testing.assert_close(x[:, 0, 0, :3], ref, rtol=0, atol=0)  # layer 0, cls
    assert cache.load(dtype=torch.float64).dtype == torch.float64


def test_batches_cover_every_sample_once(tmp_path):
    cache, feats, labels = build(tmp_path / "c")
    full = cache.load(pooling=["cls", "mean"])  # (N, L, P, D)
    for shuffle in (False, True):
        seen_x, seen_y, sizes = [], [], []
        for x, y in cache.batches(3, pooling=["cls", "mean"], shuffle=shuffle, seed=1):
            assert x.shape[1:] == (3, 2, 5) and x.dtype == torch.float32
            assert y.dtype == torch.int64
            sizes.append(len(y))
            seen_x.append(x)
            seen_y.append(y)
        assert sizes == [3, 3, 3, 1]
        x, y = torch.cat(seen_x), torch.cat(seen_y)
        # match every batch row to its sample by content: each sample exactly once
        rows = [int(torch.nonzero((full == r).all(dim=(1, 2, 3)))[0]) for r in x]
        assert sorted(rows) == list(range(N))
        np.testing.assert_array_equal(y.numpy(), labels[rows])
        if not shuffle:
            assert rows == list(range(N))
    flat = [x for x, _ in cache.batches(3, pooling=["cls", "mean"], flat=True)]
    assert torch.equal(torch.cat(flat), cache.load(flat=True))  # (N, L * P, D) batches
    assert torch.equal(torch.cat([x for x, _ in cache.batches(4, pooling="mean")]), full[:, :, 1])
    a = [y.tolist() for _, y in cache.batches(4, shuffle=True, seed=5)]
    b = [y.tolist() for _, y in cache.batches(4, shuffle=True, seed=5)]
    assert a == b
    with pytest.raises(ValueError):
        next(cache.batches(0))


# ----------------------------------------------------------------------------- writing safely


def test_finished_cache_is_reused(tmp_path):
    build(tmp_path / "c")
    before = tree_digest(tmp_path / "c")
    writer = CacheWriter.create(tmp_path / "c", make_manifest(), N, shard_size=SHARD)
    assert writer.complete and writer.missing_shards() == []
    # another shard size asks for the same features: the existing cache (and its layout) wins
    writer = CacheWriter.create(tmp_path / "c", make_manifest(), N, shard_size=7)
    assert writer.complete and writer.shard_size == SHARD and writer.missing_shards() == []
    assert tree_digest(tmp_path / "c") == before


def test_resume_writes_only_missing_shards(tmp_path, monkeypatch):
    feats, labels, texts = make_data()
    path = tmp_path / "c"
    writer = CacheWriter.create(path, make_manifest(), N, shard_size=SHARD, texts=texts)
    assert writer.missing_shards() == [0, 1, 2]
    write(writer, feats, labels, shards=[0, 2])
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache.open(path)
    with pytest.raises(CacheError, match=r"\[1\]"):
        writer.finalize()
    kept = {
        name: (path / "shards" / name).read_bytes()
        for name in ("000000.safetensors", "000002.safetensors")
    }

    written = []
    real = cache_mod.files._atomic_write
    monkeypatch.setattr(
        cache_mod.files,
        "_atomic_write",
        lambda p, data: (written.append(Path(p).name), real(p, data))[1],
    )
    resumed = CacheWriter.create(path, make_manifest(), N, shard_size=SHARD, texts=texts)
    assert not resumed.complete
    assert resumed.missing_shards() == [1]
    write(resumed, feats, labels)
    cache = resumed.finalize()
    assert [w for w in written if w.endswith(".safetensors")] == ["000001.safetensors"]
    for name, data in kept.items():
        assert (path / "shards" / name).read_bytes() == data
    torch.testing.assert_close(
        cache.load(pooling=POOLINGS), expected(feats, [n for n, _ in LAYERS], POOLINGS)
    )


def test_crash_leftovers_are_ignored_and_rewritten(tmp_path, monkeypatch):
    feats, labels, _ = make_data()
    path = tmp_path / "c"
    writer = CacheWriter.create(path, make_manifest(), N, shard_size=SHARD)
    write(writer, feats, labels, shards=[0])
    shards = path / "shards"
    # a writer killed mid-write leaves a temp file; one killed between the rename and the
    # .json leaves a whole-looking shard without its checksum; a torn copy has the final name
    (shards / ".000001.safetensors.tmp-999-dead").write_bytes(b"half a shard")
    (shards / "000001.safetensors").write_bytes(b"garbage that looks like a shard")
    write_shard_2 = {k: v[8:10] for k, v in feats.items()}
    writer.write_shard(2, write_shard_2, labels[8:10])
    (shards / "000002.json").unlink()

    resumed = CacheWriter.create(path, make_manifest(), N, shard_size=SHARD)
    assert resumed.missing_shards() == [1, 2]

    # a failure inside the write (here: the rename) leaves no half shard and no temp behind
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.files.os, "replace", boom)
    with pytest.raises(CacheError, match="000001.safetensors.*disk full"):
        resumed.write_shard(1, {k: v[4:8] for k, v in feats.items()}, labels[4:8])
    monkeypatch.undo()
    assert not (shards / "000001.json").exists()
    assert resumed.missing_shards() == [1, 2]

    write(resumed, feats, labels)
    cache = resumed.finalize()
    assert not any(".tmp-" in p.name for p in path.rglob("*"))
    torch.testing.assert_close(cache["layers.2.cls"], feats["layers.2.cls"], rtol=0, atol=0)


def test_corrupted_shard_is_detected(tmp_path):
    cache, feats, labels = build(tmp_path / "c")
    file = tmp_path / "c" / "shards" / "000001.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data: the header still parses
    file.write_bytes(bytes(data))
    # the flipped byte lies in a feature block: a plain open (verify=True by default) reads and
    # checks headers, labels and index; every read of the features rejects the shard
    reopened = FeatureCache.open(tmp_path / "c")
    with pytest.raises(CacheError, match="000001.safetensors"):
        reopened.load()
    with pytest.raises(CacheError, match="000001.safetensors"):
        list(FeatureCache.open(tmp_path / "c").batches(3))
    bad_key = next(
        k
        for k in reopened.keys()
        if not torch.equal(FeatureCache.open(tmp_path / "c", verify=False)[k], feats[k])
    )
    with pytest.raises(CacheError, match="000001.safetensors.*sha256"):
        reopened[bad_key]
    with pytest.raises(CacheError, match="000001"):
        cache.verify()
    # the explicit opt-out reads the altered bytes as they are
    assert not torch.equal(FeatureCache.open(tmp_path / "c", verify=False)[bad_key], feats[bad_key])
    writer = CacheWriter.create(tmp_path / "c", make_manifest(), N, shard_size=SHARD)
    assert writer.missing_shards() == [1]
    # repair: rewriting marks the cache unfinished until finalize
    write(writer, feats, labels)
    with pytest.raises(CacheError, match="incomplete"):
        FeatureCache.open(tmp_path / "c")
    writer.finalize().verify()

    # a truncated shard is caught by a plain open
    file.write_bytes(file.read_bytes()[:-16])
    with pytest.raises(CacheError, match="000001"):
        FeatureCache.open(tmp_path / "c")


def test_fingerprint_mismatch_is_refused_untouched(tmp_path):
    build(tmp_path / "c")
    before = tree_digest(tmp_path / "c")
    other_dataset = make_manifest(
        dataset={"name": "toy", "fingerprint": "e" * 64, "n": N, "label_names": ["a", "b"]}
    )
    cases = [
        (other_dataset, N, "dataset.fingerprint"),
        (make_manifest(poolings=["cls"]), N, "poolings"),
        (
            make_manifest(model={"id": "tiny", "revision": "def", "weights_sha256": "0" * 64}),
            N,
            "model.revision",
        ),
        (make_manifest(dtype="float16"), N, "dtype"),
        (make_manifest(), N + 1, "n_samples"),
    ]
    for manifest, n, field in cases:
        with pytest.raises(CacheMismatchError, match=field) as err:
            CacheWriter.create(tmp_path / "c", manifest, n, shard_size=SHARD)
        message = str(err.value)
        assert "\n" not in message and "other settings" in message
        assert tree_digest(tmp_path / "c") == before
    # free-form info is not identity
    writer = CacheWriter.create(tmp_path / "c", make_manifest(info={"host": "x"}), N)
    assert writer.complete


def test_bad_paths_and_manifests(tmp_path):
    with pytest.raises(CacheError, match="no feature cache"):
        FeatureCache.open(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a probekit cache"):
        CacheWriter.create(other, make_manifest(), N)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt"):
        FeatureCache.open(broken)
    with pytest.raises(CacheError, match="corrupt"):
        CacheWriter.create(broken, make_manifest(), N)
    with pytest.raises(CacheError, match="JSON"):
        CacheWriter.create(tmp_path / "x", make_manifest(model={"id": object()}), N)
    with pytest.raises(CacheError, match="layers"):
        CacheWriter.create(tmp_path / "y", make_manifest(layers=[]), N)
    with pytest.raises(CacheError, match="dtype"):
        CacheWriter.create(tmp_path / "z", make_manifest(dtype="int8"), N)


def test_write_shard_checks_its_input(tmp_path):
    feats, labels, _ = make_data()
    writer = CacheWriter.create(tmp_path / "c", make_manifest(), N, shard_size=SHARD)
    part = {k: v[:4] for k, v in feats.items()}
    with pytest.raises(CacheError, match="missing tensors"):
        writer.write_shard(0, {k: v for k, v in part.items() if k != "layers.1.cls"}, labels[:4])
    with pytest.raises(CacheError, match="shape"):
        writer.write_shard(0, dict(part, **{"layers.1.cls": torch.zeros(4, 6)}), labels[:4])
    with pytest.raises(CacheError, match="labels"):
        writer.write_shard(0, part, labels[:3])
    with pytest.raises(IndexError):
        writer.write_shard(3, part, labels[:4])
    assert writer.missing_shards() == [0, 1, 2]


def test_two_writers_share_one_cache(tmp_path):
    """Two ranks create the same cache at once and write disjoint shards."""
    feats, labels, texts = make_data(n=N)
    path = tmp_path / "c"
    writers, errors = [], []
    barrier = threading.Barrier(2)

    def rank(r):
        try:
            barrier.wait()
            w = CacheWriter.create(path, make_manifest(), N, shard_size=2, texts=texts)
            writers.append(w)
            write(w, feats, labels, shards=[i for i in range(w.n_shards) if i % 2 == r])
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert writers[0].fingerprint == writers[1].fingerprint
    assert writers[0].missing_shards() == []
    cache = writers[1].finalize()
    cache.verify()
    assert cache.manifest["n_shards"] == 5
    torch.testing.assert_close(
        cache.load(pooling=POOLINGS),
        expected(feats, [n for n, _ in LAYERS], POOLINGS),
        rtol=0,
        atol=0,
    )
    np.testing.assert_array_equal(cache.labels, labels)
    assert cache.texts == texts


def test_empty_cache_is_refused(tmp_path):
    with pytest.raises(CacheError, match="empty cache"):
        CacheWriter.create(tmp_path / "c", make_manifest(), 0)
    assert not (tmp_path / "c").exists()


def test_index_and_numpy_inputs(tmp_path):
    feats, labels, _ = make_data()
    writer = CacheWriter.create(tmp_path / "c", make_manifest(), N, shard_size=N)
    positions = np.arange(100, 100 + N)
    writer.write_shard(0, {k: v.numpy() for k, v in feats.items()}, labels.tolist(), positions)
    cache = writer.finalize()
    np.testing.assert_array_equal(cache.index, positions)
    assert os.path.basename(cache.path) == "c"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_and_batches_on_cuda(tmp_path):
    cache, feats, _ = build(tmp_path / "c")
    x = cache.load(pooling=POOLINGS, device="cuda")
    assert x.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), expected(feats, [n for n, _ in LAYERS], POOLINGS))
    xb, yb = next(cache.batches(4, device="cuda"))
    assert xb.device.type == "cuda" and yb.device.type == "cuda"


def test_layer_selection_type_errors(tmp_path):
    cache, _, _ = build(tmp_path / "c")
    with pytest.raises(TypeError):
        cache.load(layers=1.5)
    with pytest.raises(TypeError):
        cache.load(layers=[True])
    with pytest.raises(ValueError, match="empty"):
        cache.load(layers=[])
