"""Tests for probekit.estimator.ProbeClassifier: the scikit-learn contract, inputs, parity of the
per-layer linear probes with scikit-learn, save/load, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from probekit.cache import CacheWriter
from probekit.estimator import HEAD_DEFAULTS, ProbeClassifier, ProbeModel
from probekit.probes import list_probes


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster (and much faster on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def layered_blobs(n=300, n_layers=4, dim=12, n_classes=3, seed=0):
    """``X (n, L, D)`` float32 with signal growing with depth, ``y (n,)``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    mu = rng.normal(size=(n_classes, dim))
    strength = np.linspace(0.1, 1.2, n_layers)
    x = np.stack([strength[l] * mu[y] + rng.normal(size=(n, dim)) for l in range(n_layers)], 1)
    return (3.0 * x + 1.0).astype(np.float32), y


FAST = {"epochs": 3, "batch_size": 64}


def fast(head, **kw):
    """Small settings for minibatch heads (the head defaults are the papers' recipes)."""
    params = {} if head == "linear" else dict(FAST)
    if head == "alf":
        params.update(lr=1e-2, weight_decay=1e-4)
    params.update(kw)
    return ProbeClassifier(head, random_state=0, **params)


def linear_parity(X_train, y_train, X_test, y_test, C=1.0, max_iter=100, **clf_params):
    """Per-layer test accuracy of ``ProbeClassifier(head="linear")`` and of a scikit-learn loop.

    The reference is ``StandardScaler`` + ``LogisticRegression(C=C, max_iter=max_iter)`` fitted
    on each layer alone (the estimator standardises per feature with the train statistics
    too). By default the estimator trains every layer on all of ``X_train`` (``val_size=0``),
    as the reference does: the same objective under the same iteration cap. (With its default
    validation split, the final probes are warm-started from the split's solution and may
    converge further than a capped scikit-learn run.)

    Args:
        X_train, X_test: ``(N, L, D)`` features (any source: synthetic or a real cache).
        y_train, y_test: labels.
        C, max_iter: for both sides.
        **clf_params: more ``ProbeClassifier`` parameters.

    Returns:
        ``(ours (L,), sklearn (L,))`` accuracies.
    """
    params = {"val_size": 0, **clf_params}
    clf = ProbeClassifier(
        "linear", C=C, max_iter=max_iter, class_weight=None, random_state=0, **params
    )
    clf.fit(X_train, y_train)
    ours = (clf.predict_layers(X_test) == np.asarray(y_test)[:, None]).mean(0)
    ref = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for l in range(X_train.shape[1]):
            scaler = StandardScaler().fit(X_train[:, l])
            lr = LogisticRegression(C=C, max_iter=max_iter).fit(
                scaler.transform(X_train[:, l]), y_train
            )
            ref.append(lr.score(scaler.transform(X_test[:, l]), y_test))
    return ours, np.asarray(ref)


# --------------------------------------------------------------------------- sklearn contract


def test_init_stores_params_untouched_and_clone():
    grid = [1e-2, 1e-3]
    clf = ProbeClassifier("laya", head_params={"tau": 2.0}, lr=grid, epochs=3, random_state=7)
    assert clf.lr is grid and clf.head_params == {"tau": 2.0} and clf.epochs == 3
    params = clf.get_params()
    assert params["head"] == "laya" and params["weight_decay"] is None
    c2 = clone(clf)
    assert c2.get_params() == params
    c2.set_params(lr=0.5, head="alf")
    assert (c2.lr, c2.head) == (0.5, "alf") and clf.lr is grid


def test_not_fitted_then_fitted():
    x, y = layered_blobs()
    clf = ProbeClassifier()
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        clf.predict(x)
    assert clf.fit(x, y) is clf
    check_is_fitted(clf)
    assert clf.n_layers_ == 4 and clf.dims_ == (12,) * 4 and clf.tokens_per_layer_ == 1
    assert clf.layer_names_ == ["layer 0", "layer 1", "layer 2", "layer 3"]
    assert clf.n_features_in_ == 48 and clf.feature_mean_.shape == (4, 12)


def test_cross_val_score():
    x, y = layered_blobs()
    scores = cross_val_score(ProbeClassifier(random_state=0), x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.8
    scores = cross_val_score(fast("laya"), x, y, cv=2)
    assert scores.shape == (2,)


def test_scikit_learn_sees_a_classifier_without_probekit_importing_it():
    """The estimators implement the contract themselves (no sklearn base class): scikit-learn's
    own tools must still treat them as a classifier / regressor with settable parameters."""
    from sklearn.base import is_classifier, is_regressor
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.utils import check_random_state

    from probekit import ProbeRegressor
    from probekit.estimator.params import random_seed

    assert is_classifier(ProbeClassifier()) and not is_regressor(ProbeClassifier())
    assert is_regressor(ProbeRegressor()) and not is_classifier(ProbeRegressor())
    x, y = layered_blobs(n=240)
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    search = GridSearchCV(ProbeClassifier(random_state=0), {"C": [1e-4, 1.0]}, cv=cv).fit(x, y)
    assert search.best_params_ == {"C": 1.0}  # C=1e-4 all but erases the weights
    assert search.best_estimator_.C == 1.0 and search.best_estimator_ is not search.estimator
    ref = ProbeClassifier(C=1.0, random_state=0).fit(x, y)
    assert np.array_equal(search.best_estimator_.predict(x), ref.predict(x))
    assert search.best_estimator_.score(x, y) == accuracy_score(y, ref.predict(x))
    with pytest.raises(ValueError, match="Invalid parameter 'nope'"):
        ProbeClassifier().set_params(nope=1)
    assert repr(ProbeClassifier("laya", C=0.5)) == "ProbeClassifier(C=0.5, head='laya')"
    for state in (0, 7, 2**31 - 2, np.random.RandomState(3)):
        mine = random_seed(
            state if not isinstance(state, np.random.RandomState) else np.random.RandomState(3)
        )
        assert mine == check_random_state(state).randint(0, 2**31 - 1)


@pytest.mark.parametrize("head", list_probes())
def test_every_head_learns_above_chance(head):
    """A constant or broken head cannot pass: held-out accuracy well above chance (1/3)."""
    x, y = layered_blobs(n=300, seed=0)
    clf = fast(head, epochs=30, lr=1e-2) if head != "linear" else fast(head)
    clf.fit(x[:200], y[:200])
    assert clf.score(x[200:], y[200:]) > 0.6


@pytest.mark.parametrize("head", list_probes())
def test_every_head_fits_predicts_and_round_trips(head, tmp_path):
    x, y = layered_blobs(n=160)
    clf = fast(head).fit(x, y)
    proba = clf.predict_proba(x)
    assert proba.shape == (160, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.decision_function(x).shape == (160, 3)
    assert set(np.unique(clf.predict(x))) <= {0, 1, 2}
    assert isinstance(clf.model_, ProbeModel) and not clf.model_.training
    weights = clf.layer_weights(x)
    assert weights is None or weights.shape == (160, 4)
    clf.save(tmp_path / head)
    config = json.loads((tmp_path / head / "config.json").read_text())
    assert config["params"]["head"] == head
    assert not list((tmp_path / head).glob("*.pkl"))
    loaded = ProbeClassifier.load(tmp_path / head)
    np.testing.assert_array_equal(loaded.predict_proba(x), proba)
    assert loaded.get_params() == clf.get_params()
    assert loaded.layer_names_ == clf.layer_names_ and loaded.dims_ == clf.dims_


def test_random_state_reproducible():
    x, y = layered_blobs(n=160)
    a = fast("alf", dropout=0.1, jitter=True).fit(x, y).predict_proba(x)
    b = fast("alf", dropout=0.1, jitter=True).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- linear probes


def test_linear_matches_sklearn_every_layer():
    x, y = layered_blobs(n=1200, n_layers=5, dim=20, n_classes=4, seed=3)
    ours, ref = linear_parity(x[:800], y[:800], x[800:], y[800:])
    assert np.abs(ours - ref).max() <= 0.005, (ours, ref)
    # the default (validation split, layer pick, warm-started refit on all samples) too
    ours, ref = linear_parity(x[:800], y[:800], x[800:], y[800:], val_size=0.2)
    assert np.abs(ours - ref).max() <= 0.005, (ours, ref)


def test_linear_binary_and_strings_match_sklearn():
    x, y = layered_blobs(n=900, n_layers=3, dim=10, n_classes=2, seed=4)
    labels = np.array(["neg", "pos"])[y]
    ours, ref = linear_parity(x[:600], labels[:600], x[600:], labels[600:], C=0.3)
    assert np.abs(ours - ref).max() <= 0.005, (ours, ref)


def test_linear_layer_selection_on_validation():
    x, y = layered_blobs()
    clf = ProbeClassifier(random_state=0).fit(x, y)
    assert clf.layer_scores_.shape == (4,)
    assert clf.selected_layer_ == int(np.argmax(clf.layer_scores_))
    assert int(clf.model_.head.selected_layer) == clf.selected_layer_
    assert clf.layer_scores_[-1] > clf.layer_scores_[0]
    np.testing.assert_array_equal(clf.predict(x), clf.predict_layers(x)[:, clf.selected_layer_])
    assert {r["phase"] for r in clf.history_} == {"search", "refit"}
    assert clf.best_params_ == {"solver": "lbfgs", "C": 1.0, "max_iter": 100}
    no_val = ProbeClassifier(val_size=0).fit(x, y)
    assert no_val.layer_scores_ is None and no_val.selected_layer_ == 3


def test_linear_minibatch_solver_tracks_layers():
    x, y = layered_blobs()
    clf = ProbeClassifier(solver="adamw", epochs=5, random_state=0).fit(x, y)
    assert clf.layer_scores_.shape == (4,)
    assert int(clf.model_.head.selected_layer) == clf.selected_layer_


# --------------------------------------------------------------------------- inputs


def test_per_layer_list_of_different_widths():
    x, y = layered_blobs(n=200)
    layers = [x[:, 0, :5], x[:, 1, :8], x[:, 2], torch.from_numpy(x[:, 3, :3])]
    clf = ProbeClassifier(random_state=0).fit(layers, y, layer_names=["a", "b", "c", "d"])
    assert clf.dims_ == (5, 8, 12, 3) and clf.layer_names_ == ["a", "b", "c", "d"]
    t = clf.as_tensor(layers)
    assert t.shape == (200, 4, 12) and t.dtype == torch.float32
    assert torch.all(t[:, 3, 3:] == 0)
    assert clf.predict(layers).shape == (200,)
    # zero padding stays zero after standardisation
    assert torch.all(clf.model_.norm(t)[:, 0, 5:] == 0)
    with pytest.raises(ValueError):
        clf.predict([x[:, 0, :5], x[:, 1, :8], x[:, 2], x[:, 3, :4]])


def test_two_dimensional_input_and_layer_selection():
    x, y = layered_blobs(n=200)
    clf = ProbeClassifier(random_state=0).fit(x[:, 2], y)
    assert clf.n_layers_ == 1 and clf.predict(x[:, 2]).shape == (200,)
    sel = ProbeClassifier(layers=[0, -1], random_state=0).fit(x, y, layer_names=list("abcd"))
    assert sel.layer_names_ == ["a", "d"] and sel.n_layers_ == 2
    assert sel.predict(x).shape == (200,)  # the same selection applies at predict time


def test_tokens_per_layer():
    x, y = layered_blobs(n=200)  # read as 2 layers x 2 tokens
    clf = fast("laya", tokens_per_layer=2).fit(x, y)
    assert clf.n_layers_ == 2 and clf.tokens_per_layer_ == 2
    assert clf.layer_weights(x).shape == (200, 2)
    with pytest.raises(ValueError, match="multiple"):
        fast("laya", tokens_per_layer=3).fit(x, y)


def test_l2_norm_heads_and_standardisation_buffers():
    x, y = layered_blobs(n=120)
    alf = fast("alf").fit(x, y)
    assert alf.model_.norm.mode == "l2"
    out = alf.model_.norm(torch.from_numpy(x))
    assert torch.allclose(out.norm(dim=-1), torch.ones(120, 4), atol=1e-5)
    lin = ProbeClassifier().fit(x, y)
    z = lin.model_.norm(torch.from_numpy(x)).double()
    assert torch.allclose(z.mean(0), torch.zeros(4, 12, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(
        z.std(0, unbiased=False), torch.ones(4, 12, dtype=torch.float64), atol=1e-4
    )


def _make_cache(path, n=120, seed=0):
    layers = [("layers.0", 6), ("layers.1", 10), ("layers.2", 8)]
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    manifest = {
        "model": {"id": "tiny", "revision": "r", "weights_sha256": "0" * 64},
        "layers": [{"name": name, "dim": d} for name, d in layers],
        "poolings": ["cls", "mean"],
        "dtype": "float32",
        "precision": "fp32",
        "preprocessing": {},
        "dataset": {"name": "toy", "fingerprint": "f" * 64, "n": n, "label_names": ["a", "b"]},
    }
    feats = {
        f"{name}.{p}": torch.from_numpy(
            (rng.normal(size=(n, d)) + (i + 1) * 0.8 * (labels[:, None] - 0.5)).astype(np.float32)
        )
        for i, (name, d) in enumerate(layers)
        for p in ("cls", "mean")
    }
    writer = CacheWriter.create(path, manifest, n, shard_size=50)
    for i in writer.missing_shards():
        start, stop = writer.shard_range(i)
        writer.write_shard(i, {k: v[start:stop] for k, v in feats.items()}, labels[start:stop])
    return writer.finalize()


def test_feature_cache_input(tmp_path):
    cache = _make_cache(tmp_path / "cache")
    clf = ProbeClassifier(random_state=0).fit(cache)  # y defaults to cache.labels
    assert clf.layer_names_ == ["layers.0", "layers.1", "layers.2"]
    assert clf.dims_ == (6, 10, 8) and clf.tokens_per_layer_ == 2  # every pooling it holds
    assert clf.score(cache) > 0.7
    cls_only = ProbeClassifier(pooling="cls", random_state=0).fit(cache)
    assert cls_only.tokens_per_layer_ == 1 and cls_only.as_tensor(cache).shape == (120, 3, 10)
    both = fast("laya", pooling=["cls", "mean"], layers=2).fit(cache)
    assert both.layer_names_ == ["layers.1", "layers.2"] and both.tokens_per_layer_ == 2
    assert both.as_tensor(cache).shape == (120, 4, 10)
    np.testing.assert_array_equal(both.predict(cache), both.predict(both.as_tensor(cache)))


def test_feature_cache_streaming(tmp_path):
    # stream=True trains out of core with the in-memory recipe (split, selection, refit);
    # tests/test_outofcore.py compares the two fits in detail
    cache = _make_cache(tmp_path / "cache")
    clf = fast("laya", stream=True, epochs=4).fit(cache)
    ref = fast("laya", stream=False, epochs=4).fit(cache)
    assert [r["phase"] for r in clf.history_] == [r["phase"] for r in ref.history_]
    assert clf.score(cache) > 0.6 and clf.score(cache) == pytest.approx(ref.score(cache))
    lin = ProbeClassifier(stream=True, random_state=0).fit(cache)
    np.testing.assert_array_equal(
        lin.predict(cache), ProbeClassifier(random_state=0).fit(cache).predict(cache)
    )
    mean = cache.load(pooling=["cls", "mean"], flat=True).mean(0)  # (T, D)
    assert torch.allclose(lin.model_.norm.mean, mean, atol=1e-5)


# --------------------------------------------------------------------------- grids


def test_grid_of_configs_and_dropout():
    x, y = layered_blobs(n=200)
    clf = fast("laya", lr=[1e-2, 1e-3], weight_decay=[0.0, 1e-2], dropout=[0.0, 0.2]).fit(x, y)
    assert clf.grid_scores_.shape == (8,)
    assert clf.best_params_["lr"] in (1e-2, 1e-3) and clf.best_params_["dropout"] in (0.0, 0.2)
    assert clf.best_score_ == pytest.approx(clf.grid_scores_.max())
    assert clf.head_kwargs_["dropout"] == clf.best_params_["dropout"]
    assert len({(r["lr"], r["weight_decay"], r["dropout"]) for r in clf.history_}) == 8


def test_alf_recipe_defaults():
    d = HEAD_DEFAULTS["alf"]
    assert d.lr == [1e-1, 1e-2, 1e-3] and len(d.weight_decay) == 7
    assert (d.epochs, d.min_steps, d.batch_size, d.min_batches) == (40, 1000, 2048, 5)
    assert d.refit and d.jitter_p > 0
    x, y = layered_blobs(n=100)
    clf = ProbeClassifier(
        "alf", lr=1e-2, weight_decay=1e-3, dropout=0.0, epochs=2, random_state=0
    ).fit(x, y)
    # one config: no search; an explicit epoch count is not raised to 1000 steps
    assert [r["phase"] for r in clf.history_] == ["refit", "refit"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, y: (x, np.zeros_like(y)), "2 classes"),
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y), "NaN"),
        (
            lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x), y),
            "infinity",
        ),
        (lambda x, y: (x, y[:-1]), "samples"),
        # 4-D is (N, L, P, D) (test_layout.py); 5-D is no layout
        (lambda x, y: (x[:, :, :, None, None], y), "shape"),
    ],
)
def test_bad_data_raises_value_error(make, match):
    x, y = layered_blobs(n=60)
    xb, yb = make(x, y)
    with pytest.raises(ValueError, match=match):
        ProbeClassifier().fit(xb, yb)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"head": "nope"}, "known heads"),
        ({"head": "laya", "head_params": {"bogus": 1}}, "bogus"),
        ({"lr": -1.0, "head": "laya"}, "lr"),
        ({"lr": [], "head": "laya"}, "lr"),
        ({"solver": "lbfgs", "head": "laya"}, "lbfgs"),
        ({"solver": "sgd"}, "solver"),
        ({"class_weight": "auto"}, "class_weight"),
        ({"val_size": 1.5}, "val_size"),
        ({"epochs": 0, "head": "laya"}, "epochs"),
        ({"head": "laya", "lr": [1e-2, 1e-3], "val_size": 0}, "val_size"),
    ],
)
def test_bad_params_raise_value_error(params, match):
    x, y = layered_blobs(n=60)
    with pytest.raises(ValueError, match=match):
        ProbeClassifier(**params).fit(x, y)


def test_predict_layout_mismatch_and_missing_y():
    x, y = layered_blobs(n=60)
    clf = ProbeClassifier().fit(x, y)
    with pytest.raises(ValueError, match="layout"):
        clf.predict(x[:, :3])
    with pytest.raises(ValueError, match="requires y to be passed"):
        ProbeClassifier().fit(x)
    with pytest.raises(ValueError, match="per-layer logits"):
        fast("laya").fit(x, y).predict_layers(x)


def test_class_weight_mapping_round_trips_and_steers_every_head(tmp_path):
    """{label: weight} survives save/load with its label types (JSON keys are text), and a
    heavy weight on one class makes both the L-BFGS and a minibatch head predict it."""
    x, y = layered_blobs(n=240, n_layers=2, dim=6, n_classes=3)
    x = x + np.random.default_rng(1).normal(scale=4.0, size=x.shape).astype(np.float32)  # noisy
    weights = {0: 1000.0, 1: 1e-4, 2: 1e-4}
    for clf in (ProbeClassifier(class_weight=weights, random_state=0), fast("kcla", epochs=20,
                lr=1e-2, class_weight=weights)):  # fmt: skip
        clf.fit(x, y)
        assert np.mean(clf.predict(x) == 0) > 0.9, clf.head
        unweighted = clone(clf).set_params(class_weight="balanced").fit(x, y)
        assert np.mean(unweighted.predict(x) == 0) < 0.6, clf.head
    clf.save(tmp_path / "p")
    loaded = ProbeClassifier.load(tmp_path / "p")
    assert loaded.class_weight == weights  # int labels, not "0"
    np.testing.assert_array_equal(loaded.predict(x), clf.predict(x))
    clone(loaded).fit(x, y)  # the loaded parameters fit again


def test_binary_scores_work_with_scikit_learn_scorers():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.metrics import roc_auc_score

    x, y = layered_blobs(n=200, n_classes=2)
    auc = cross_val_score(ProbeClassifier(random_state=0), x[:, -1], y, scoring="roc_auc", cv=3)
    assert np.isfinite(auc).all() and auc.min() > 0.8
    clf = ProbeClassifier(random_state=0).fit(x, y)
    score = clf.decision_function(x)
    assert score.shape == (200,)
    np.testing.assert_allclose(clf.predict_proba(x)[:, 1], 1 / (1 + np.exp(-score)), atol=1e-6)
    assert roc_auc_score(y, score) > 0.8
    cal = CalibratedClassifierCV(ProbeClassifier(random_state=0), cv=3).fit(x[:, -1], y)
    assert cal.predict_proba(x[:, -1]).shape == (200, 2)


def test_continuous_labels_and_bad_features_are_refused():
    x, y = layered_blobs(n=60)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        ProbeClassifier().fit(x, np.round(np.random.default_rng(0).normal(size=60), 1))
    with pytest.raises(ValueError, match="0 feature"):
        ProbeClassifier().fit(np.empty((60, 0)), y)
    with pytest.raises(ValueError, match="Complex data"):
        ProbeClassifier().fit(x.astype(np.complex64), y)
    assert fast("laya").fit(x, y).n_iter_ >= 1
