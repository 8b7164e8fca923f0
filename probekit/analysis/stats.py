"""Every bootstrap of probekit: percentile intervals over test samples, every resample at once.

The one owner of resampling: the intervals of every score of a run (accuracy, balanced accuracy,
R², Spearman, means of per-sample values), the paired comparisons of two classifiers and the
control task's selectivity all draw their resamples here, with :func:`bootstrap_indices`.

One ``(R, N)`` matrix of resampled positions (drawn exactly as
``rng.integers(0, N, size=(R, N))`` with ``np.random.default_rng(seed)``), then per resample
and class the count of samples and of correct predictions with one ``np.bincount`` over
``resample * K + class``. Balanced accuracy is the mean recall over the classes present in a
resample, as scikit-learn's ``balanced_accuracy_score`` computes it (a class predicted but absent
from a resample's true labels is left out), so intervals equal those of calling that function on
each resample, for the same seed, at a small fraction of the cost (no per-call input checks).

The paired bootstrap compares two classifiers scored on the same test samples: both are scored
on the same resamples, giving an interval for the difference of their balanced accuracies (or
plain accuracies, ``metric="accuracy"``) and the fraction of resamples in which the first is no better (a one-sided bootstrap p-value;
Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 16).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "bootstrap_indices",
    "percentile_interval",
    "resampled_accuracy",
    "resampled_balanced_accuracy",
    "resampled_mean",
    "resampled_r2",
    "resampled_spearman",
    "bootstrap_interval",
    "paired_bootstrap",
    "paired_mean_difference",
    "PairedBootstrap",
]

_CHUNK_ELEMENTS = 1 << 22  # resampled positions handled per bincount (bounds the temporaries)


def bootstrap_indices(n_samples: int, n_resamples: int, seed: int | None) -> np.ndarray:
    """``(R, N)`` int64 positions: ``default_rng(seed).integers(0, N, size=(R, N))``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_samples, size=(n_resamples, n_samples))


def _encode(y_true: Any, *preds: Any) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Labels as ``0..K-1`` over the union of true and predicted labels."""
    y_true = np.asarray(y_true).ravel()
    arrays = [np.asarray(p).ravel() for p in preds]
    for p in arrays:
        if p.shape != y_true.shape:
            raise ValueError(f"predictions of shape {p.shape} for {y_true.shape} true labels")
    classes, inverse = np.unique(np.concatenate([y_true, *arrays]), return_inverse=True)
    parts = np.split(inverse.ravel(), len(arrays) + 1)
    return parts[0], parts[1:], len(classes)


def _rows_per_chunk(n_samples: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, n_samples))


def _per_class_counts(
    y: np.ndarray, hits: list[np.ndarray], idx: np.ndarray, k: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(R, K)`` samples per class and, for each of ``hits`` (bool ``(N,)``), ``(R, K)`` correct.

    One integer ``bincount`` per chunk of resamples over ``row * C + code``, where each sample's
    ``code`` packs its class and whether each classifier is right (``C = K * 2**len(hits)``).
    """
    m = len(hits)
    code = y.astype(np.int64) << m
    for j, h in enumerate(hits):
        code |= h.astype(np.int64) << j
    c = k << m
    r = idx.shape[0]
    counts = np.empty((r, k, 1 << m), dtype=np.int64)
    step = _rows_per_chunk(idx.shape[1])
    for a in range(0, r, step):
        rows = idx[a : a + step]  # (r', N)
        keys = code[rows]
        keys += np.arange(rows.shape[0])[:, None] * c
        counts[a : a + step] = np.bincount(keys.ravel(), minlength=rows.shape[0] * c).reshape(
            -1, k, 1 << m
        )
    bits = np.arange(1 << m)
    correct = [counts[:, :, (bits >> j) & 1 == 1].sum(axis=2) for j in range(m)]
    return counts.sum(axis=2), correct


def _balanced(total: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in each row: ``(R, K) -> (R,)``."""
    present = total > 0
    recall = np.zeros(total.shape, dtype=np.float64)
    np.divide(correct, total, out=recall, where=present)
    return recall.sum(axis=1) / present.sum(axis=1)


def resampled_balanced_accuracy(y_true: Any, y_pred: Any, idx: np.ndarray) -> np.ndarray:
    """Balanced accuracy of every resample ``idx[r]``: ``(R, N) -> (R,)``."""
    y, (p,), k = _encode(y_true, y_pred)
    total, (correct,) = _per_class_counts(y, [p == y], idx, k)
    return _balanced(total, correct)


def resampled_accuracy(y_true: Any, y_pred: Any, idx: np.ndarray) -> np.ndarray:
    """Accuracy of every resample ``idx[r]``: ``(R, N) -> (R,)``."""
    y, (p,), _ = _encode(y_true, y_pred)
    hit = (p == y).astype(np.float64)
    step = _rows_per_chunk(idx.shape[1])
    return (
        np.concatenate(
            [hit[idx[a : a + step]].sum(axis=1) for a in range(0, len(idx), step)] or [np.empty(0)]
        )
        / idx.shape[1]
    )


def percentile_interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """``(lo, hi)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear
    interpolation) of ``(R,)`` resampled scores."""
    lo, hi = np.percentile(np.asarray(values), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def resampled_mean(values: Any, idx: np.ndarray) -> np.ndarray:
    """Mean of ``(N,)`` per-sample ``values`` over every resample ``idx[r]``: ``(R, N) -> (R,)``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    step = _rows_per_chunk(idx.shape[1])
    return np.concatenate(
        [v[idx[a : a + step]].mean(axis=1) for a in range(0, len(idx), step)] or [np.empty(0)]
    )


def _regression_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"predictions of shape {p.shape} for {y.shape} targets")
    return y, p


def resampled_r2(y_true: Any, y_pred: Any, idx: np.ndarray) -> np.ndarray:
    """R² of every resample ``idx[r]``: ``(R, N) -> (R,)``, as ``sklearn.metrics.r2_score``
    (a resample of constant targets scores 1.0 if predicted exactly, else 0.0)."""
    y, p = _regression_pair(y_true, y_pred)
    out = np.empty(len(idx))
    step = _rows_per_chunk(idx.shape[1])
    for a in range(0, len(idx), step):
        t, q = y[idx[a : a + step]], p[idx[a : a + step]]  # (r', N)
        num = ((t - q) ** 2).sum(axis=1)
        den = ((t - t.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        ok = den != 0
        r2 = np.where(num == 0, 1.0, 0.0)
        np.divide(num, den, out=r2, where=ok)
        r2[ok] = 1.0 - r2[ok]
        out[a : a + step] = r2
    return out


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """``(R, N)`` 1-based ranks within each row, ties sharing their mean rank
    (``scipy.stats.rankdata(method="average")`` per row)."""
    r, n = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    new = np.ones((r, n), dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]  # first position of each run of ties
    last = np.ones((r, n), dtype=bool)
    last[:, :-1] = new[:, 1:]  # last position of each run
    pos = np.arange(n)
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((r, n), dtype=np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=1)
    return ranks


def resampled_spearman(y_true: Any, y_pred: Any, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho of every resample ``idx[r]``: ``(R, N) -> (R,)``, average ranks for ties
    (as :func:`probekit.estimator.regressor.spearman`); a resample with constant targets or
    predictions gives ``nan``."""
    y, p = _regression_pair(y_true, y_pred)
    out = np.empty(len(idx))
    step = max(1, _rows_per_chunk(idx.shape[1]) // 4)  # a few (r', N) temporaries per chunk
    for a in range(0, len(idx), step):
        rows = idx[a : a + step]
        ry, rp = _average_ranks(y[rows]), _average_ranks(p[rows])
        ry -= ry.mean(axis=1, keepdims=True)
        rp -= rp.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = (ry * rp).sum(axis=1) / np.sqrt((ry * ry).sum(axis=1) * (rp * rp).sum(axis=1))
        out[a : a + step] = np.clip(rho, -1.0, 1.0)
    return out


def bootstrap_interval(
    y_true: Any,
    y_pred: Any,
    metric: str = "balanced_accuracy",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (``"balanced_accuracy"``, ``"accuracy"``,
    ``"r2"`` or ``"spearman"``).

    Args:
        y_true: ``(N,)`` true labels (targets).
        y_pred: ``(N,)`` predicted labels (values).
        metric: which score.
        n_resamples: bootstrap resamples ``R``.
        seed: seed of ``np.random.default_rng``.
        level: coverage of the interval.

    Returns:
        ``(lo, hi)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear
        interpolation) of the resampled scores.
    """
    fns = {
        "balanced_accuracy": resampled_balanced_accuracy,
        "accuracy": resampled_accuracy,
        "r2": resampled_r2,
        "spearman": resampled_spearman,
    }
    if metric not in fns:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(fns)}")
    values = fns[metric](
        y_true, y_pred, bootstrap_indices(len(np.asarray(y_true)), n_resamples, seed)
    )
    return percentile_interval(values, level)


@dataclasses.dataclass(frozen=True)
class PairedBootstrap:
    """Score (balanced accuracy or accuracy) of classifier A minus B on the same resamples.

    Attributes:
        difference: ``score(A) - score(B)`` on the test samples themselves.
        lo, hi: the percentile interval of the resampled differences.
        p_not_better: fraction of resamples in which ``score(A) - score(B) <= 0``.
        differences: ``(R,)`` the resampled differences.
        score_a, score_b: ``score(A)`` and ``score(B)`` on the test samples themselves.
        metric: ``"balanced"`` or ``"accuracy"``.
    """

    difference: float
    lo: float
    hi: float
    p_not_better: float
    differences: np.ndarray = dataclasses.field(repr=False)
    score_a: float = float("nan")
    score_b: float = float("nan")
    metric: str = "balanced"


_PAIRED_METRICS = ("balanced", "accuracy")


def _score_difference(metric: str, total: np.ndarray, ca: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """``(R, K)`` per-class counts -> ``(R,)`` score of A minus score of B.

    For ``"accuracy"`` the difference of correct counts is divided once, so it equals the mean
    of the per-sample differences ``hit_a - hit_b`` exactly.
    """
    if metric == "balanced":
        return _balanced(total, ca) - _balanced(total, cb)
    return (ca.sum(axis=1) - cb.sum(axis=1)) / total.sum(axis=1)


def _score(metric: str, total: np.ndarray, correct: np.ndarray) -> float:
    """Score of the single row of ``(1, K)`` counts."""
    if metric == "balanced":
        return float(_balanced(total, correct)[0])
    return float(correct.sum() / total.sum())


def paired_bootstrap(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    n_resamples: int = 1000,
    seed: int | None = 0,
    level: float = 0.95,
    metric: str = "balanced",
    idx: np.ndarray | None = None,
) -> PairedBootstrap:
    """Paired percentile bootstrap of the difference in score of two classifiers.

    Args:
        y_true: ``(N,)`` true labels.
        pred_a: ``(N,)`` predictions of classifier A.
        pred_b: ``(N,)`` predictions of classifier B on the same samples.
        n_resamples: bootstrap resamples ``R`` (the same positions score both).
        seed: seed of ``np.random.default_rng`` (``None``: fresh entropy).
        level: coverage of the interval.
        metric: ``"balanced"`` (mean recall over the classes present in each resample) or
            ``"accuracy"`` (fraction correct).
        idx: ``(R, N)`` resampled positions to use instead of drawing them
            (``n_resamples`` and ``seed`` are then unused).

    Returns:
        A :class:`PairedBootstrap`.

    Raises:
        ValueError: an unknown ``metric``, or predictions whose shape differs from ``y_true``'s.
    """
    if metric not in _PAIRED_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(_PAIRED_METRICS)}")
    y, (a, b), k = _encode(y_true, pred_a, pred_b)
    full = np.arange(len(y))[None, :]
    hits = [a == y, b == y]
    total, (ca, cb) = _per_class_counts(y, hits, full, k)
    score_a, score_b = _score(metric, total, ca), _score(metric, total, cb)
    difference = float(_score_difference(metric, total, ca, cb)[0])
    if idx is None:
        idx = bootstrap_indices(len(y), n_resamples, seed)
    total, (ca, cb) = _per_class_counts(y, hits, idx, k)
    diffs = _score_difference(metric, total, ca, cb)
    lo, hi = percentile_interval(diffs, level)
    return PairedBootstrap(
        difference,
        float(lo),
        float(hi),
        float(np.mean(diffs <= 0)),
        diffs,
        score_a,
        score_b,
        metric,
    )


def paired_mean_difference(
    a: Any, b: Any, idx: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of ``mean(a) - mean(b)`` over paired ``(N,)`` per-sample values,
    resampled by the ``(R, N)`` positions ``idx`` (e.g. a layer's selectivity: task hits minus
    control hits)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return percentile_interval(resampled_mean(d, idx), level)
