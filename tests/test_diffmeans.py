"""The diff-means (mass-mean) head: its closed form against numpy, and through the estimator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit import ProbeClassifier, ProbeRegressor
from probekit.errors import ConfigError
from probekit.probes.diffmeans import mass_mean_probe


def _data(n: int = 120, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    mix = rng.normal(size=(d, d))  # correlated features: whitening changes the direction
    x = rng.normal(size=(n, d)) @ mix + np.outer(y, rng.normal(size=d)) + 5.0
    return x, y


def _numpy_probe(
    x: np.ndarray, y: np.ndarray, whiten: bool, eps: float, prior: tuple[float, float] = (1, 1)
) -> tuple[np.ndarray, float, float]:
    """Class means, pooled within-class covariance, solve; midpoint threshold; LDA scale."""
    m1, m0 = x[y == 1].mean(0), x[y == 0].mean(0)
    theta = m1 - m0
    if whiten:
        r = x - np.where(y[:, None] == 1, m1, m0)
        sigma = r.T @ r / len(x)
        sigma = sigma + eps * np.trace(sigma) / x.shape[1] * np.eye(x.shape[1])
        theta = np.linalg.solve(sigma, theta)
    s = x @ theta
    var = np.mean((s - np.where(y == 1, theta @ m1, theta @ m0)) ** 2)
    a = (theta @ m1 - theta @ m0) / var
    t = (theta @ m1 + theta @ m0) / 2 - np.log(prior[1] / prior[0]) / a
    return theta, t, a


@pytest.mark.parametrize("whiten", [False, True])
def test_mass_mean_probe_equals_numpy(whiten: bool) -> None:
    x, y = _data()
    theta, t, a = _numpy_probe(x, y, whiten, 0.1)
    d, thr, sc = mass_mean_probe(torch.from_numpy(x), torch.from_numpy(y), 2, whiten=whiten)
    np.testing.assert_allclose(d[:, 0].numpy(), theta, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(float(thr[0]), t, rtol=1e-6)
    np.testing.assert_allclose(float(sc[0]), a, rtol=1e-6)
    if not whiten:  # the unwhitened direction is exactly the mean difference
        np.testing.assert_allclose(d[:, 0].numpy(), x[y == 1].mean(0) - x[y == 0].mean(0))


@pytest.mark.parametrize("whiten", [False, True])
def test_classifier_decision_is_the_scaled_margin(whiten: bool) -> None:
    """Per layer, decision_function = a (theta . x - t), predict_proba = sigmoid of it."""
    x0, y = _data(seed=1)
    x1, _ = _data(seed=2)
    X = np.stack([x1, x0], 1)  # (N, L=2, D); layer 1 is the informative one
    clf = ProbeClassifier(
        head="diff-means", head_params={"whiten": whiten, "shrinkage": 0.05}, val_size=0
    ).fit(X, y)
    theta, t, a = _numpy_probe(x0, y, whiten, 0.05)
    z = clf.decision_function(X)
    np.testing.assert_allclose(z, a * (x0 @ theta - t), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-5)
    np.testing.assert_array_equal(clf.predict(X), (x0 @ theta > t).astype(int))
    head = clf.model_.head
    np.testing.assert_allclose(head.direction[1, :, 0].numpy(), theta, rtol=1e-5, atol=1e-6)


def test_class_weight_none_moves_the_threshold_by_the_log_prior() -> None:
    x, y = _data(seed=3)
    keep = (y == 1) | (np.arange(len(y)) % 3 == 0)  # fewer class-0 rows: unequal priors
    x, y = x[keep], y[keep]
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    clf = ProbeClassifier(head="diff-means", val_size=0, class_weight=None).fit(x, y)
    theta, t, a = _numpy_probe(x, y, False, 0.1, prior=(n0, n1))
    np.testing.assert_allclose(clf.model_.head.threshold[0, 0].item(), t, rtol=1e-5)
    balanced = ProbeClassifier(head="diff-means", val_size=0).fit(x, y)
    mid = (theta @ x[y == 1].mean(0) + theta @ x[y == 0].mean(0)) / 2
    np.testing.assert_allclose(balanced.model_.head.threshold[0, 0].item(), mid, rtol=1e-5)


def test_multiclass_is_one_vs_rest() -> None:
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 4)) + np.eye(3, 4)[y] * 2
    clf = ProbeClassifier(head="diff-means", val_size=0).fit(x, y)
    d = clf.model_.head.direction[0].numpy()  # (F, C)
    for c in range(3):
        np.testing.assert_allclose(d[:, c], x[y == c].mean(0) - x[y != c].mean(0), rtol=1e-5)
    assert clf.score(x, y) > 0.8


def test_layer_selection_and_regressor_refusal() -> None:
    x0, y = _data(seed=5)
    noise = np.random.default_rng(6).normal(size=x0.shape)
    clf = ProbeClassifier(head="diff-means", random_state=0).fit(np.stack([noise, x0], 1), y)
    assert clf.layer_scores_ is not None and clf.selected_layer_ == 1
    assert clf.best_params_["solver"] == "closed-form"
    with pytest.raises(ConfigError, match="diff-means.*classification"):
        ProbeRegressor(head="diff-means").fit(x0, y.astype(float))
    with pytest.raises(ConfigError, match="takes no parameter.*dropout"):  # nothing to drop out
        ProbeClassifier(head="diff-means", dropout=0.1).fit(x0, y)
