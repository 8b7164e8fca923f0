"""Out-of-core training: rows gathered from the memory-mapped cache, one-pass statistics, the
memory budget, and the streamed fit against the in-memory fit (same split, selection, refit)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from probekit._utils.memory import parse_size
from probekit._utils.transfer import host_empty, pinned_for, to_device, to_host, to_host_all
from probekit.cache import CacheWriter, cache_subset
from probekit.cache.rows import CacheRows, stream_stats
from probekit.errors import CacheError, ConfigError, DataError
from probekit.estimator import ProbeClassifier
from probekit.estimator.stream import NormalisedRows
from probekit.runs.config import RunConfig

from .test_estimator import _make_cache

TINY = "32KB"  # streams the 120-sample test cache (3x its 19 KB of cls+mean features)


def _write_cache(
    path, n, layers, dtype="float32", shard_size=50, seed=0, poolings=("cls",), nan=None
):
    """A synthetic cache written shard by shard (never all of it in memory); ``nan=(row,
    layer)`` puts a NaN there."""
    manifest = {
        "model": {"id": "synthetic"},
        "layers": [{"name": f"layers.{i}", "dim": d} for i, d in enumerate(layers)],
        "poolings": list(poolings),
        "dtype": dtype,
        "dataset": {
            "name": "synthetic",
            "fingerprint": str(seed),
            "n": n,
            "label_names": ["a", "b"],
        },
    }
    w = CacheWriter.create(path, manifest, n, shard_size=shard_size)
    for i in w.missing_shards():
        start, stop = w.shard_range(i)
        rng = np.random.default_rng([seed, i])
        y = (np.arange(start, stop) % 2).astype(np.int64)
        feats = {}
        for li, d in enumerate(layers):
            for p in poolings:
                x = rng.normal(size=(stop - start, d)).astype(np.float32)
                x[:, 0] += (li + 1) * 0.5 * (y - 0.5)
                if nan is not None and nan[1] == li and start <= nan[0] < stop:
                    x[nan[0] - start, 1] = np.nan
                feats[f"layers.{li}.{p}"] = x
        w.write_shard(i, feats, y)
    return w.finalize()


def test_gather_equals_load_in_any_order(tmp_path):
    for dtype in ("float32", "float16", "bfloat16"):
        cache = _write_cache(
            tmp_path / dtype, 130, [5, 9, 7], dtype=dtype, poolings=("cls", "mean")
        )
        sel, pools = cache.select([0, 2], ["mean", "cls"])
        full = cache.load(layers=sel, pooling=pools, flat=True)  # (N, 4, 7), layer 0 padded
        assert torch.equal(cache.load(layers=sel, pooling=pools), full.unflatten(1, (2, 2)))
        rows = CacheRows(cache, sel, pools)
        idx = np.random.default_rng(0).permutation(130)[:77]
        assert torch.equal(rows.gather(idx), full[idx])
        assert torch.equal(rows.gather(idx, layers=[1]), full[idx][:, 2:4])
        assert torch.equal(torch.cat(list(rows.chunks(40))), full)
        sub = cache_subset(cache, idx)
        assert torch.equal(sub.load(layers=sel, pooling=pools, flat=True), full[idx])
        assert torch.equal(sub.load(layers=sel, pooling=pools), full[idx].unflatten(1, (2, 2)))
        np.testing.assert_array_equal(sub.labels, cache.labels[idx])
        rows.close()


def test_gather_of_runs_repeats_and_shard_crossings(tmp_path):
    """The gather reads in file order and takes one slice per block for consecutive rows: rows
    that only look like a run (a repeat and a gap), runs read backwards or across shards, and
    a reused output buffer full of stale values must all give the loaded rows."""
    for dtype in ("float32", "bfloat16"):
        cache = _write_cache(
            tmp_path / dtype, 130, [5, 9, 7], dtype=dtype, poolings=("cls", "mean")
        )
        sel, pools = cache.select([0, 2], None)
        full = cache.load(layers=sel, pooling=pools, flat=True)  # (N, 4, 7), layer 0 padded
        rows = CacheRows(cache, sel, pools)
        cases = [
            [3, 3, 5],
            [5, 3, 3],
            [49, 50, 51],
            [51, 50, 49],
            list(range(40, 110)),
            [0, 1, 2, 99, 100, 101],
            [129, 0],
            [],
        ]
        for idx in cases:
            idx = np.asarray(idx, dtype=np.int64)
            stale = torch.full((idx.size, 4, 7), 7.0)
            assert torch.equal(rows.gather(idx, out=stale), full[idx]), (dtype, idx)
            assert torch.equal(rows.gather(idx, layers=[0]), full[idx][:, :2])
        sub = cache_subset(cache, np.r_[60:130, 0:60])  # consecutive here, not in the file
        srows = CacheRows(sub, sel, pools)
        assert torch.equal(srows.gather(np.arange(130)), full[sub.parent_rows])
        rows.close()
        srows.close()


def test_one_pass_statistics_match_two_pass(tmp_path):
    cache = _write_cache(tmp_path / "c", 173, [6, 4])
    x = cache.load().double().numpy()
    rows = CacheRows(cache, [0, 1], ["cls"])
    mean, std, finite = stream_stats(rows, chunk=17)
    assert finite
    np.testing.assert_allclose(mean.numpy(), x.mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(std.numpy(), x.std(0), rtol=0, atol=1e-13)


@pytest.mark.parametrize("head", ["linear", "laya", "diff-means"])
def test_streamed_fit_equals_in_memory_fit(tmp_path, head):
    cache = _make_cache(tmp_path / "cache")
    kw = {"random_state": 0, "pooling": ["cls", "mean"], "layers": [0, 2]}
    if head == "laya":
        kw.update(epochs=3, patience=2)
    mem = ProbeClassifier(head, stream=False, **kw).fit(cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # linear: one layer's block fits, no minibatch fallback
        out = ProbeClassifier(head, memory_budget=TINY, **kw).fit(cache)  # streams: over budget
    assert out._should_stream(cache, out._budget())
    assert not ProbeClassifier(head, **kw)._should_stream(cache, 2**30)
    assert out.best_score_ == pytest.approx(mem.best_score_, abs=1e-12)
    if head in ("linear", "diff-means"):  # diff-means: one layer's block at a time
        np.testing.assert_allclose(out.layer_scores_, mem.layer_scores_, atol=1e-12)
        assert out.selected_layer_ == mem.selected_layer_
    else:  # same epochs scored on the same validation split, same early-stopping epoch
        assert out.best_epoch_ == mem.best_epoch_
        val = [r.get("val_balanced_accuracy") for r in mem.history_]
        assert [r.get("val_balanced_accuracy") for r in out.history_] == pytest.approx(val)
    assert [r["phase"] for r in out.history_] == [r["phase"] for r in mem.history_]
    if head == "diff-means":  # raw features (no norm): the per-layer centres and directions
        for name in ("center", "direction", "threshold", "scale"):
            a, b = getattr(out.model_.head, name), getattr(mem.model_.head, name)
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    else:
        np.testing.assert_allclose(out.model_.norm.mean, mem.model_.norm.mean, atol=1e-6)
        np.testing.assert_allclose(out.model_.norm.std, mem.model_.norm.std, rtol=1e-6)
    # out predicts chunk by chunk from disk (its budget), mem from the loaded cache
    np.testing.assert_allclose(out.predict_proba(cache), mem.predict_proba(cache), atol=1e-4)
    np.testing.assert_array_equal(out.predict(cache), mem.predict(cache))
    if head in ("linear", "diff-means"):
        np.testing.assert_array_equal(out.predict_layers(cache), mem.predict_layers(cache))


def test_streamed_fit_on_a_subset_equals_arrays(tmp_path):
    cache = _make_cache(tmp_path / "cache")
    pos = np.r_[0:120:3, 1:120:4]
    ref = ProbeClassifier(random_state=0).fit(
        cache.load(pooling="cls")[pos].numpy(), cache.labels[pos]
    )
    out = ProbeClassifier(random_state=0, memory_budget=TINY, pooling="cls")
    out.fit(cache_subset(cache, pos))
    np.testing.assert_allclose(out.layer_scores_, ref.layer_scores_, atol=1e-12)
    x = cache.load(pooling="cls").numpy()
    np.testing.assert_allclose(out.predict_proba(x), ref.predict_proba(x), atol=1e-4)


def test_linear_falls_back_to_minibatches_when_a_layer_does_not_fit(tmp_path):
    cache = _make_cache(tmp_path / "cache")
    kw = {"random_state": 0, "epochs": 2}
    with pytest.warns(UserWarning, match="does not fit"):
        out = ProbeClassifier(memory_budget="2KB", **kw).fit(cache)  # a layer block is ~4.8 KB
    ref = ProbeClassifier(solver="adamw", stream=False, **kw).fit(cache)
    assert out.best_params_ == ref.best_params_ and out.best_score_ == ref.best_score_
    x = ref.as_tensor(cache)
    np.testing.assert_allclose(out.predict_proba(x), ref.predict_proba(x), atol=1e-5)


def test_streamed_fit_refuses_nan(tmp_path):
    cache = _write_cache(tmp_path / "c", 120, [6, 4], nan=(70, 1))  # shard 1, layer 1
    with pytest.raises(DataError, match="NaN"):
        ProbeClassifier(memory_budget=TINY).fit(cache)


def test_a_corrupt_block_is_refused(tmp_path):
    cache = _write_cache(tmp_path / "c", 120, [6, 4])
    path = cache._shards[1][0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a byte of the last block (layer 1)
    path.write_bytes(bytes(data))
    reopened = type(cache).open(tmp_path / "c")
    with pytest.raises(CacheError, match="sha256"):
        ProbeClassifier(memory_budget=TINY).fit(reopened)


def test_memory_sizes():
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("4GiB") == 4 * 2**30 and parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size(2e9) == 2 * 10**9
    for bad in ("lots", "-3MB", 0, True, "5 parsecs"):
        with pytest.raises(ConfigError):
            parse_size(bad)
    with pytest.raises(ConfigError, match="memory_budget"):
        ProbeClassifier(memory_budget="huge").validate()
    with pytest.raises(ConfigError, match="memory_budget"):
        RunConfig(memory_budget="huge")


def test_host_copies_pin_only_for_cuda():
    assert pinned_for("cuda") and pinned_for(torch.device("cuda", 1))
    assert not pinned_for("cpu") and not pinned_for(None) and not pinned_for("meta")
    buf = host_empty((3, 2), torch.float32, "cpu")
    assert buf.shape == (3, 2) and not buf.is_pinned()
    x = torch.arange(6.0).reshape(3, 2)
    assert to_device(x, "cpu") is x and to_host(x) is x
    assert to_host_all({"a": x})["a"] is x  # extraction's per-batch host copy, off CUDA


def test_training_rows_are_the_normalised_rows(tmp_path):
    cache = _make_cache(tmp_path / "cache")
    clf = ProbeClassifier(random_state=0, pooling=["cls", "mean"]).fit(cache)
    rows = CacheRows(cache, [0, 1, 2], ["cls", "mean"])
    src = NormalisedRows(rows, clf.model_.norm, torch.device("cpu"))
    x = clf.model_.norm(clf.as_tensor(cache))
    idx = torch.tensor([5, 0, 119, 64, 5])
    assert torch.equal(src[idx], x[idx]) and torch.equal(src[:2], x[:2])
    assert src.shape == x.shape and src.to(device="cpu", dtype=torch.float32) is src


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    from probekit._utils.memory import peak_rss, reset_peak_rss, rss
    from probekit.cache import FeatureCache
    from probekit.estimator import ProbeClassifier
    cache = FeatureCache.open(sys.argv[1])
    budget, stream = sys.argv[2], sys.argv[3] == "1"
    kw = dict(random_state=0, memory_budget=budget, stream=stream)
    warm = np.random.default_rng(0).normal(size=(64, 4, 8)).astype(np.float32)
    ProbeClassifier("laya", epochs=1, **kw).fit(warm, np.arange(64) % 2)  # load every module
    assert reset_peak_rss()  # the peak of this process only, from here
    base = rss()
    ProbeClassifier("linear", max_iter=5, **kw).fit(cache)
    ProbeClassifier("laya", epochs=1, batch_size=128, **kw).fit(cache)
    print(json.dumps({"growth_mb": (peak_rss() - base) / 2**20}))
    """
)


def _rss_growth(path, budget, stream):
    res = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), budget, "1" if stream else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(res.stdout.strip().splitlines()[-1])["growth_mb"]


def test_streamed_fit_peak_memory_stays_within_budget(tmp_path):
    # 4000 samples x 16 layers x 512 float32 = 125 MiB of features: in memory, a fit holds about
    # 3 copies (~400 MB). Streamed under an 8 MiB budget (every head, linear included, trains by
    # minibatches), linear then laya, the peak resident set grows by a fixed amount (kernels'
    # first use, glibc keeping freed blocks: 85-91 MiB measured at both sizes), not with the
    # cache: twice the samples add less than a quarter of the extra features.
    growth = {}
    for n in (2000, 4000):
        _write_cache(tmp_path / f"c{n}", n, [512] * 16, shard_size=500)
        growth[n] = _rss_growth(tmp_path / f"c{n}", "8MiB", stream=True)
    features_mb = {n: n * 16 * 512 * 4 / 2**20 for n in growth}
    print(f"peak RSS growth of a streamed fit, MiB: {growth}")
    assert growth[4000] < features_mb[4000], growth
    assert growth[4000] - growth[2000] < 0.25 * (features_mb[4000] - features_mb[2000]), growth


def test_cli_fit_with_a_tiny_budget_matches_in_memory(tmp_path, capsys):
    from probekit.cli import main

    _make_cache(tmp_path / "cache")
    metrics = []
    for extra in ([], ["--memory-budget", "40KB"]):  # the cache and its train split stream
        out = tmp_path / f"fit{len(extra)}"
        argv = [
            "fit",
            "--cache",
            str(tmp_path / "cache"),
            "--probes",
            "linear,laya",
            "--out",
            str(out),
            "--bootstrap",
            "20",
            *extra,
        ]
        assert main(argv) == 0
        metrics.append(json.loads((out / "metrics.json").read_text())["heads"])
    for head in ("linear", "laya"):
        assert metrics[1][head]["accuracy"] == metrics[0][head]["accuracy"]
        assert metrics[1][head]["balanced_accuracy_ci"] == metrics[0][head]["balanced_accuracy_ci"]
    assert metrics[1]["linear"]["per_layer"] == metrics[0]["linear"]["per_layer"]
    bad = [
        "fit",
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "x"),
        "--memory-budget",
        "lots",
    ]
    assert main(bad) == 2 and "memory_budget" in capsys.readouterr().err


def test_peak_rss_is_the_child_own_not_the_parent_at_the_fork():
    """ru_maxrss survives execve on Linux: a child of a big process would report the parent's
    resident set. The memory tests above measure with peak_rss() for that reason."""
    ballast = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident in this (parent) process
    code = (
        "import json, resource; import numpy as np\n"
        "from probekit._utils.memory import peak_rss, reset_peak_rss, rss\n"
        "start = [peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]\n"
        "assert reset_peak_rss(); base = rss()\n"
        "block = np.ones(64 * 2**20, dtype=np.uint8)\n"
        "print(json.dumps(start + [peak_rss() - base]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, maxrss, growth = json.loads(out.stdout)
    assert maxrss > 400 * 2**20 > 4 * peak  # the carried-over figure vs the child's own
    assert 60 * 2**20 < growth < 80 * 2**20  # a fresh 64 MiB block, after the reset
    del ballast


def _write_word_cache(path, n_sentences, layers, shard_size=1000, seed=0):
    """A synthetic word cache: 5-35 words per sentence (about 200k rows for 10k sentences),
    shards of whole sentences with their rows listed in the manifest."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 36, n_sentences)
    starts = range(0, n_sentences, shard_size)
    shard_rows = [int(lengths[s : s + shard_size].sum()) for s in starts]
    manifest = {
        "model": {"id": "synthetic"},
        "layers": [{"name": f"layers.{i}", "dim": d} for i, d in enumerate(layers)],
        "poolings": ["mean"],
        "dtype": "float32",
        "unit": "word",
        "word_pooling": "mean",
        "dataset": {
            "name": "words",
            "fingerprint": str(seed),
            "n": n_sentences,
            "label_names": ["NOUN", "VERB", "DET"],
        },
    }
    w = CacheWriter.create(
        path, manifest, sum(shard_rows), shard_size=shard_size, shard_rows=shard_rows
    )
    for i in w.missing_shards():
        sents = np.arange(i * shard_size, min((i + 1) * shard_size, n_sentences))
        samples = np.repeat(sents, lengths[sents])
        positions = np.concatenate([np.arange(k) for k in lengths[sents]])
        r = np.random.default_rng([seed, i])
        y = r.integers(0, 3, samples.size)
        feats = {}
        for li, d in enumerate(layers):
            x = r.normal(size=(samples.size, d)).astype(np.float32)
            x[:, 0] += (li + 1) * 0.6 * (y - 1)
            feats[f"layers.{li}.mean"] = x
        w.write_shard(i, feats, y, samples, positions)
    return w.finalize()


@pytest.mark.slow
def test_streamed_fit_of_200k_word_rows_equals_in_memory(tmp_path):
    cache = _write_word_cache(tmp_path / "words", 10_000, [8, 8, 8])
    assert 150_000 < len(cache) < 250_000 and cache.unit == "word"
    kw = {"random_state": 0}
    budget = "24MB"  # 3x the ~19 MB rows do not fit, 3x one layer's 6 MB block does
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # L-BFGS layer by layer, no minibatch fallback
        out = ProbeClassifier(memory_budget=budget, **kw).fit(cache)
    assert out._should_stream(cache, out._budget())
    mem = ProbeClassifier(stream=False, **kw).fit(cache)
    np.testing.assert_allclose(out.layer_scores_, mem.layer_scores_, atol=1e-12)
    assert out.selected_layer_ == mem.selected_layer_ == 2
    np.testing.assert_array_equal(out.predict(cache), mem.predict(cache))
