"""The heads' default recipes: ALF's grid and tokens, balanced accuracy for every selection."""

from __future__ import annotations

import numpy as np
import pytest

from probekit import ConfigError, ProbeClassifier

from .test_estimator import _make_cache


def test_alf_default_on_a_cache_fuses_cls_and_mean_over_the_63_point_grid(tmp_path):
    cache = _make_cache(tmp_path / "cache")
    # epochs=1 keeps every default grid axis and only drops the 1000-step floor (test speed)
    clf = ProbeClassifier("alf", epochs=1, random_state=0).fit(cache)
    assert clf.tokens_per_layer_ == 2
    assert clf.model_.head.n_tokens == 6  # T = 2L
    assert clf.as_tensor(cache).shape == (120, 6, 10)
    x = cache.load(pooling=["cls", "mean"]).numpy()
    np.testing.assert_array_equal(clf.predict(cache), clf.predict(x))
    assert len(clf.grid_scores_) == 63
    configs = {(c["lr"], c["weight_decay"], c["attn_dropout"]) for c in clf.grid_configs_}
    assert len(configs) == 63
    assert {c[0] for c in configs} == {1e-1, 1e-2, 1e-3}
    np.testing.assert_allclose(sorted({c[1] for c in configs}), np.logspace(-6, 0, 7))
    assert {c[2] for c in configs} == {0.0, 0.1, 0.3}
    assert clf.model_.head.attn_dropout.p == clf.best_params_["attn_dropout"]


def test_alf_dropout_is_attention_dropout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 8)).astype(np.float32)
    y = np.arange(64) % 2
    clf = ProbeClassifier(
        "alf", dropout=0.3, lr=1e-2, weight_decay=1e-4, epochs=1, random_state=0
    ).fit(x, y)
    assert clf.model_.head.attn_dropout.p == 0.3
    assert clf.model_.head.dropout.p == 0.0
    assert clf.head_kwargs_["attn_dropout"] == 0.3 and "dropout" not in clf.head_kwargs_
    # no validation split: nothing to choose the recipe's dropout on, so its first value (0)
    one = ProbeClassifier("alf", lr=1e-2, weight_decay=1e-4, val_size=0, epochs=1).fit(x, y)
    assert one.head_kwargs_["attn_dropout"] == 0.0
    with pytest.raises(ConfigError, match="attn_dropout"):
        ProbeClassifier("alf", dropout=0.1, head_params={"attn_dropout": 0.3}).validate()


def _imbalanced_layers(n=1000, seed=0):
    """Two layers on a 90/10 problem where accuracy and balanced accuracy disagree.

    Layer 0 tells 30% of the minority apart and nothing else: predicting the majority for the
    rest gives accuracy ~0.93 but balanced accuracy ~0.65. Layer 1 is a noisy separation of both
    classes (recall ~0.84 each): accuracy ~0.84, balanced accuracy ~0.84.
    """
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(np.int64)
    visible = (y == 1) & (rng.random(n) < 0.3)
    layer0 = np.where(visible, -1.0, 1.0) + 0.05 * rng.normal(size=n)
    layer1 = np.where(y == 1, 1.0, -1.0) + rng.normal(size=n)
    x = np.stack([layer0, layer1], 1)[:, :, None].astype(np.float32)  # (N, 2, 1)
    return x, y


def test_per_layer_probe_picks_its_layer_by_balanced_accuracy():
    x, y = _imbalanced_layers()
    # the premise: on these layers accuracy prefers layer 0, balanced accuracy layer 1
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    half = len(y) // 2
    acc, bal = [], []
    for j in range(2):
        ref = LogisticRegression(class_weight="balanced").fit(x[:half, j], y[:half])
        pred = ref.predict(x[half:, j])
        acc.append(accuracy_score(y[half:], pred))
        bal.append(balanced_accuracy_score(y[half:], pred))
    assert acc[0] > acc[1] and bal[1] > bal[0]

    clf = ProbeClassifier("linear", random_state=0).fit(x, y)
    assert clf.selected_layer_ == 1
    assert clf.layer_scores_[1] > clf.layer_scores_[0]
    grid = ProbeClassifier("linear", solver="adamw", lr=0.1, epochs=40, random_state=0).fit(x, y)
    assert grid.selected_layer_ == 1
