"""The layout travels with the array (issue #20): ``cache.load()`` of several poolings is
``(N, L, P, D)``, so ``ProbeClassifier().fit(cache.load(), y)`` fits one probe per layer, the
same probes as the explicit flat call ``fit(X.flatten(1, 2), y)`` with ``tokens_per_layer=P``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probekit import (
    ConfigError,
    DataError,
    ProbeClassifier,
    ProbeRegressor,
    extract,
    from_arrays,
    layer_attribution,
    load_model,
)
from probekit.analysis.attribution import ablation_sensitivity
from probekit.analysis.mdl import mdl
from probekit.analysis.similarity import similarity
from probekit.cache import FeatureCache, cache_subset
from probekit.cli import main

WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "nice",
    "terrible",
    "lovely",
    "horrid",
    "fine",
    "poor",
    "superb",
    "dreadful",
] * 5
LABELS = [0, 1] * 30


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tiny_bert_dir, tmp_path_factory):
    """A ``cls+mean`` cache of a tiny BERT: 60 samples, 2 poolings per layer, 3 shards."""
    data = from_arrays(WORDS, LABELS, label_names=["pos", "neg"], name="words")
    path = tmp_path_factory.mktemp("layout") / "cache"
    extract(
        load_model(tiny_bert_dir), data, path, pooling="cls+mean", shard_size=25, progress=False
    )
    return FeatureCache.open(path)


def _linear(**kw):
    return ProbeClassifier(head="linear", random_state=0, device="cpu", **kw)


def test_load_keeps_layers_and_poolings_apart_with_the_cached_values(cache):
    n, n_layers, width = len(cache), len(cache.layer_names), max(cache.dims)
    assert cache.poolings == ["cls", "mean"]
    x = cache.load()
    assert x.shape == (n, n_layers, 2, width)
    for li, name in enumerate(cache.layer_names):
        for pi, pool in enumerate(cache.poolings):
            assert torch.equal(x[:, li, pi], cache[f"{name}.{pool}"].float())
    assert torch.equal(x[:, :, 0], cache.load(pooling="cls"))  # (N, L, D) for one pooling
    assert torch.equal(x[:, :, 1], cache.load(pooling="mean"))
    assert torch.equal(cache.load(pooling="cls+mean"), x)
    assert torch.equal(cache.load(pooling=["mean", "cls"]), x.flip(2))
    assert torch.equal(cache.load(flat=True), x.flatten(1, 2))  # token l * P + p
    # the batches and a subset follow the same layout
    assert torch.equal(torch.cat([b for b, _ in cache.batches(7)]), x)
    assert torch.equal(torch.cat([b for b, _ in cache.batches(7, flat=True)]), x.flatten(1, 2))
    idx = np.array([5, 0, 59, 31])
    sub = cache_subset(cache, idx)
    assert torch.equal(sub.load(), x[idx])
    assert torch.equal(sub.load(flat=True), x[idx].flatten(1, 2))
    assert torch.equal(sub.load(pooling="mean"), x[idx, :, 1])


@pytest.mark.parametrize("as_numpy", [False, True])
def test_natural_fit_is_one_probe_per_layer_as_the_explicit_flat_call(cache, as_numpy):
    n_layers = len(cache.layer_names)
    x4, y = cache.load(), np.asarray(cache.labels)
    flat = x4.flatten(1, 2)
    if as_numpy:
        x4, flat = x4.numpy(), flat.numpy()
    clf = _linear().fit(x4, y, layer_names=cache.layer_names)
    ref = _linear(tokens_per_layer=2).fit(flat, y, layer_names=cache.layer_names)
    assert clf.n_layers_ == n_layers and clf.tokens_per_layer_ == 2
    assert clf.layer_names_ == list(cache.layer_names)
    assert clf.layer_scores_.shape == (n_layers,)
    np.testing.assert_array_equal(clf.layer_scores_, ref.layer_scores_)
    assert clf.selected_layer_ == ref.selected_layer_
    for method in ("predict", "predict_proba", "decision_function", "predict_layers"):
        got = getattr(clf, method)(x4)
        np.testing.assert_array_equal(got, getattr(ref, method)(flat), err_msg=method)
        # the 4-D array and its flat form are the same input to either probe
        np.testing.assert_array_equal(got, getattr(clf, method)(flat), err_msg=method)
        np.testing.assert_array_equal(got, getattr(ref, method)(x4), err_msg=method)
    assert clf.predict_layers(x4).shape == (len(y), n_layers)
    assert clf.score(x4, y) == ref.score(flat, y)
    # the same probe as a fit on the cache itself
    on_cache = _linear().fit(cache)
    np.testing.assert_array_equal(on_cache.predict_layers(cache), clf.predict_layers(x4))
    # the trap the 4-D layout removes: a flat input without tokens_per_layer is 2L "layers"
    assert _linear().fit(flat, y).n_layers_ == 2 * n_layers


def test_layer_selection_and_attribution_on_4d_input(cache):
    x4, y = cache.load(), np.asarray(cache.labels)
    flat = x4.flatten(1, 2)
    params = {"epochs": 2, "batch_size": 32, "random_state": 0, "device": "cpu"}
    clf = ProbeClassifier("laya", layers=[0, -1], **params).fit(x4, y)
    ref = ProbeClassifier("laya", layers=[0, -1], tokens_per_layer=2, **params).fit(flat, y)
    assert clf.n_layers_ == 2 and clf.tokens_per_layer_ == 2
    np.testing.assert_array_equal(clf.predict_proba(x4), ref.predict_proba(flat))
    np.testing.assert_array_equal(layer_attribution(clf, x4), layer_attribution(ref, flat))
    a = ablation_sensitivity(clf, x4, y, mode="mean")
    b = ablation_sensitivity(ref, flat, y, mode="mean")
    np.testing.assert_array_equal(a.per_sample, b.per_sample)
    base = x4.mean(0)  # (L, P, D): an explicit baseline shaped like the input
    c = ablation_sensitivity(clf, x4, y, mode="mean", baseline=base[[0, -1]])
    d = ablation_sensitivity(ref, flat, y, mode="mean", baseline=base[[0, -1]].flatten(0, 1))
    np.testing.assert_array_equal(c.per_sample, d.per_sample)


def test_regressor_reads_the_poolings_from_a_4d_input(cache):
    x4 = cache.load()
    target = np.random.default_rng(0).normal(size=len(cache))
    reg = ProbeRegressor(head="linear", random_state=0, device="cpu").fit(x4, target)
    ref = ProbeRegressor(head="linear", tokens_per_layer=2, random_state=0, device="cpu")
    ref.fit(x4.flatten(1, 2), target)
    assert reg.n_layers_ == len(cache.layer_names) and reg.tokens_per_layer_ == 2
    np.testing.assert_array_equal(reg.predict(x4), ref.predict(x4.flatten(1, 2)))
    np.testing.assert_array_equal(reg.predict_layers(x4), ref.predict_layers(x4.flatten(1, 2)))


def test_a_contradicting_tokens_per_layer_is_a_one_line_config_error(cache):
    x4, y = cache.load(), np.asarray(cache.labels)
    for bad in (1, 3):
        with pytest.raises(ConfigError, match=f"tokens_per_layer={bad} contradicts") as err:
            _linear(tokens_per_layer=bad).fit(x4, y)
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="contradicts the cache"):
            _linear(tokens_per_layer=bad).fit(cache)
    _linear(tokens_per_layer=2).fit(x4, y)  # agreeing is fine
    _linear(tokens_per_layer=1, pooling="mean").fit(cache)
    # a probe fitted on one pooling refuses an input with two per layer, and vice versa
    cls_only = _linear().fit(cache.load(pooling="cls"), y)
    with pytest.raises(DataError, match="2 poolings per layer"):
        cls_only.predict(x4)
    both = _linear().fit(x4, y)
    with pytest.raises(DataError, match="tokens_per_layer_=2"):
        both.predict(x4[:, :, :1].expand(-1, -1, 1, -1).contiguous())


def test_mdl_and_similarity_take_the_4d_input_as_the_cache(cache):
    x4, y = cache.load(), np.asarray(cache.labels)
    a = mdl(cache, pooling="cls+mean", fractions=(0.5, 1.0), C=1.0, device="cpu")
    b = mdl(x4, y, fractions=(0.5, 1.0), C=1.0, device="cpu")
    assert len(b.rows()) == len(cache.layer_names)
    assert [r["online_bits"] for r in a.rows()] == [r["online_bits"] for r in b.rows()]
    s_cache = similarity(cache, pooling="cls+mean")
    s_arr = similarity(x4)
    assert s_arr.shape == (len(cache.layer_names),) * 2
    np.testing.assert_allclose(s_arr, s_cache, rtol=1e-10, atol=1e-12)


def test_cli_fit_on_a_cls_mean_cache_fits_per_layer_probes(cache, tmp_path):
    out = tmp_path / "run"
    argv = ["fit", "--cache", str(cache.path), "--probes", "linear", "--bootstrap", "20"]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["heads"]["linear"]["per_layer"]
    assert [r["layer"] for r in rows] == list(cache.layer_names)
    saved = ProbeClassifier.load(out / "probes" / "linear")
    assert saved.n_layers_ == len(cache.layer_names) and saved.tokens_per_layer_ == 2
    test = np.asarray(json.loads((out / "split.json").read_text())["test"])
    x_test, y_test = cache.load()[test], np.asarray(cache.labels)[test]
    pred = saved.predict(x_test)  # the natural call on load()'s rows
    np.testing.assert_array_equal(pred, saved.predict(x_test.flatten(1, 2)))
    assert metrics["heads"]["linear"]["accuracy"] == pytest.approx(np.mean(pred == y_test))
    layer_pred = saved.predict_layers(x_test)
    for j, row in enumerate(rows):
        assert row["accuracy"] == pytest.approx(np.mean(layer_pred[:, j] == y_test))
