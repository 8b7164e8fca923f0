"""The vectorised bootstrap gives the intervals of the per-resample scikit-learn loop."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from probekit.analysis.stats import (
    bootstrap_indices,
    bootstrap_interval,
    paired_bootstrap,
    resampled_balanced_accuracy,
)


def bootstrap_ci(y_true, y_pred, metric, n, seed):
    """The naive reference: one ``metric`` call per resample of the same ``(n, N)`` positions."""
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(n, len(y_true)))
    values = np.array([metric(y_true[i], y_pred[i]) for i in idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on resamples lacking a predicted class
        yield


def _case(kind: str, n: int = 150, seed: int = 1):
    rng = np.random.default_rng(seed)
    if kind == "binary":
        y = rng.integers(0, 2, n)
    elif kind == "imbalanced":  # a rare class: many resamples lack it
        y = rng.choice(3, n, p=[0.6, 0.37, 0.03])
    else:  # string labels, a predicted class that never occurs in the truth
        y = rng.choice(np.array(["cat", "dog", "eel", "fox"]), n)
    flip = rng.random(n) < 0.3
    pred = np.where(flip, rng.permutation(y), y)
    if kind == "strings":
        pred[rng.random(n) < 0.05] = "gnu"
    return y, pred


@pytest.mark.parametrize("kind", ["binary", "imbalanced", "strings"])
@pytest.mark.parametrize("seed", [0, 7])
def test_same_intervals_as_the_sklearn_loop(kind, seed):
    y, pred = _case(kind)
    for metric, fn in (
        ("balanced_accuracy", balanced_accuracy_score),
        ("accuracy", accuracy_score),
    ):
        with _quiet():
            ref = bootstrap_ci(y, pred, fn, 300, seed)
        ours = bootstrap_interval(y, pred, metric, n_resamples=300, seed=seed)
        np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)


def test_every_resample_matches_balanced_accuracy_score():
    y, pred = _case("imbalanced", n=60)
    idx = bootstrap_indices(len(y), 200, seed=3)
    with _quiet():
        ref = np.array([balanced_accuracy_score(y[i], pred[i]) for i in idx])
    np.testing.assert_allclose(resampled_balanced_accuracy(y, pred, idx), ref, rtol=1e-12, atol=0)


def test_paired_bootstrap_matches_a_naive_loop():
    y, a = _case("imbalanced", seed=2)
    _, b = _case("imbalanced", seed=5)
    b = np.where(np.random.default_rng(0).random(len(y)) < 0.5, y, b)
    res = paired_bootstrap(y, a, b, n_resamples=400, seed=11)
    idx = np.random.default_rng(11).integers(0, len(y), size=(400, len(y)))
    with _quiet():
        diffs = np.array(
            [balanced_accuracy_score(y[i], a[i]) - balanced_accuracy_score(y[i], b[i]) for i in idx]
        )
        full = balanced_accuracy_score(y, a) - balanced_accuracy_score(y, b)
    np.testing.assert_allclose(res.differences, diffs, rtol=0, atol=1e-12)
    np.testing.assert_allclose([res.lo, res.hi], np.percentile(diffs, [2.5, 97.5]), atol=1e-12)
    assert res.p_not_better == pytest.approx(np.mean(diffs <= 0))
    assert res.difference == pytest.approx(full, abs=1e-12)
    swapped = paired_bootstrap(y, b, a, n_resamples=400, seed=11)
    np.testing.assert_array_equal(swapped.differences, -res.differences)


def test_paired_bootstrap_accuracy_matches_a_naive_loop():
    """``metric="accuracy"`` (what ``probekit.viz.paired_bootstrap`` uses) scores plain accuracy."""
    y, a = _case("imbalanced", seed=3)
    _, b = _case("imbalanced", seed=6)
    res = paired_bootstrap(y, a, b, n_resamples=300, seed=4, metric="accuracy")
    idx = np.random.default_rng(4).integers(0, len(y), size=(300, len(y)))
    diffs = np.array([accuracy_score(y[i], a[i]) - accuracy_score(y[i], b[i]) for i in idx])
    np.testing.assert_allclose(res.differences, diffs, rtol=0, atol=1e-12)
    np.testing.assert_allclose([res.lo, res.hi], np.percentile(diffs, [2.5, 97.5]), atol=1e-12)
    assert res.p_not_better == pytest.approx(np.mean(diffs <= 0))
    assert (res.score_a, res.score_b) == pytest.approx((accuracy_score(y, a), accuracy_score(y, b)))
    assert res.difference == pytest.approx(accuracy_score(y, a) - accuracy_score(y, b), abs=1e-12)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        paired_bootstrap(y, a, b, metric="f1")
