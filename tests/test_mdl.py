"""MDL probing with the online code: the accounting against an independent scikit-learn
implementation, compression ~1 on shuffled labels and > 1 on word valence, and monotonicity in
the signal-to-noise ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probekit import ConfigError, DataError, extract, load_data, load_model, mdl
from probekit.analysis.mdl import MDL_FRACTIONS, online_block_ends


def _graded(n: int = 1500, d: int = 12, snrs=(0.0, 0.4, 1.0, 2.5), seed: int = 0):
    """(n, len(snrs), d): layer k shifts the class means by +-snrs[k] along one axis."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.stack(
        [rng.normal(size=(n, d)) + s * (2 * y[:, None] - 1) * np.eye(d)[0] for s in snrs], 1
    )
    return x.astype(np.float32), y


def test_block_ends_follow_voita_titov():
    assert online_block_ends(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert online_block_ends(100) == [1, 3, 6, 12, 25, 50, 100]  # 0.1..0.4 % collapse to 1
    assert len(MDL_FRACTIONS) == 11
    with pytest.raises(ConfigError, match="last fraction"):
        online_block_ends(100, [0.1, 0.5])


def test_online_code_matches_independent_sklearn_computation():
    """One C (no grid): the code length is the sum the paper defines, computed here directly
    with StandardScaler + LogisticRegression on every prefix."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _graded(n=800, snrs=(0.3, 1.5), seed=1)
    res = mdl(x, y, seed=3, C=0.1, eps=1e-3)
    order = np.random.default_rng(3).permutation(len(y))
    xs, ys = x[order], y[order]
    ends = online_block_ends(len(y))
    ref = np.full(2, ends[0] * 1.0)  # log2(2) = 1 bit per label in the first block
    for a, b in zip(ends[:-1], ends[1:], strict=True):
        for k in range(2):
            if len(np.unique(ys[:a])) < 2:
                ref[k] += (b - a) * 1.0
                continue
            sc = StandardScaler().fit(xs[:a, k])
            lr = LogisticRegression(C=0.1, max_iter=1000).fit(sc.transform(xs[:a, k]), ys[:a])
            p = lr.predict_proba(sc.transform(xs[a:b, k]))[np.arange(b - a), ys[a:b]]
            ref[k] += -np.log2((1 - 1e-3) * p + 1e-3 / 2).sum()
    np.testing.assert_allclose(res.online_bits, ref, rtol=5e-3)
    np.testing.assert_allclose(res.block_bits.sum(1), res.online_bits)
    assert res.uniform_bits == 800.0
    np.testing.assert_allclose(res.compression, 800.0 / ref, rtol=5e-3)
    assert ref[1] < 0.6 * ref[0]  # the two layers differ clearly


def test_code_length_decreases_as_signal_to_noise_rises():
    x, y = _graded()
    res = mdl(x, y)
    assert np.all(np.diff(res.online_bits) < 0), res.rows()
    assert abs(res.compression[0] - 1.0) < 0.05  # the noise layer: nothing to compress
    assert res.compression[-1] > 3.0
    assert res.best_layer == 3
    table = res.to_dict()
    assert [r["layer"] for r in table["layers"]] == [f"layer {k}" for k in range(4)]
    assert table["layers"][2]["online_bits"] == pytest.approx(res.online_bits[2])


def test_fusion_head_gives_one_fused_row():
    x, y = _graded(n=400, snrs=(0.0, 2.5), seed=2)
    res = mdl(x, y, head="laya")
    assert res.layers == ["fused (laya)"]
    assert res.compression[0] > 1.8  # the linear probe of the signal layer alone reaches ~7
    assert np.isnan(res.chosen_C).all()


def test_cache_with_two_poolings_codes_like_concatenated_arrays(tmp_path):
    """Each layer's tokens (cls, mean) are read together, like one (N, 2D) array per layer."""
    from probekit import CacheWriter

    x, y = _graded(n=300, snrs=(0.3, 1.5), seed=4)
    second = (x + np.random.default_rng(1).normal(size=x.shape)).astype(np.float32)
    manifest = {
        "layers": [{"name": f"layers.{k}", "dim": 12} for k in range(2)],
        "poolings": ["cls", "mean"],
        "dtype": "float32",
    }
    writer = CacheWriter.create(tmp_path / "c", manifest, n_samples=300, shard_size=128)
    for i in writer.missing_shards():
        lo, hi = writer.shard_range(i)
        tensors = {f"layers.{k}.{p}": a[lo:hi, k] for p, a in (("cls", x), ("mean", second))
                   for k in range(2)}  # fmt: skip
        writer.write_shard(i, tensors, y[lo:hi])
    cache = writer.finalize()
    from_cache = mdl(cache, pooling="cls+mean", C=0.1)
    arrays = [np.concatenate([x[:, k], second[:, k]], 1) for k in range(2)]
    np.testing.assert_allclose(from_cache.online_bits, mdl(arrays, y, C=0.1).online_bits, rtol=1e-4)
    assert from_cache.layers == ["layers.0", "layers.1"]
    assert not np.allclose(from_cache.online_bits, mdl(cache, pooling="cls", C=0.1).online_bits)


def test_bad_settings_are_refused():
    x, y = _graded(n=100)
    with pytest.raises(ConfigError, match="unknown probe head"):
        mdl(x, y, head="svm")
    with pytest.raises(ConfigError, match="C must be"):
        mdl(x, y, C=[0.1, -1.0])
    with pytest.raises(DataError, match="single class"):
        mdl(x, np.zeros(100, dtype=int))
    with pytest.raises(DataError, match="100 samples but y has 99"):
        mdl(x, y[:99])


@pytest.fixture(scope="module")
def vader_cache(tmp_path_factory):
    """The bundled MiniLM on 2000 words of the bundled valence task (stratified, seeded)."""
    return extract(load_model("bundled:minilm-l6"), load_data("bundled:vader-valence", limit=2000),
                   tmp_path_factory.mktemp("vader") / "cache", pooling="mean", batch_size=256,
                   progress=False)  # fmt: skip


@pytest.mark.slow
def test_word_valence_compresses_and_shuffled_labels_do_not(vader_cache):
    y = np.asarray(vader_cache.labels)
    real = mdl(vader_cache, layers=[0, 3])
    shuffled = mdl(vader_cache, np.random.default_rng(0).permutation(y), layers=[0, 3])
    prior = np.bincount(y) / len(y)
    entropy = -(prior * np.log2(prior)).sum()
    assert real.uniform_bits == pytest.approx(len(y) * math.log2(2))
    assert np.all(real.compression > 1.5), real.rows()
    assert np.all(np.abs(shuffled.compression - 1.0) < 0.05), shuffled.rows()
    # shuffled labels cannot be coded much below the label entropy (the prior is all there is)
    assert np.all(shuffled.online_bits > 0.99 * entropy * len(y))
