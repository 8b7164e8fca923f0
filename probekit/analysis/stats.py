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

Cluster bootstrap (``groups=``): when the test rows are words, tokens or spans of sentences,
rows of one input are not independent, so :func:`bootstrap_indices` with ``groups`` (each row's
input) draws the G inputs with replacement and takes all the rows of every drawn input
(Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, sec. 3.8). Resamples then
differ in size, so they are held as :class:`GroupResamples`, an ``(R, N)`` matrix of how many
times each row is drawn; every ``resampled_*`` function and the paired bootstraps take either
form and score the same resample the same way (the scores are weighted by the multiplicities,
which is the score of the resample with its repeated rows).

Binary scores (:func:`resampled_binary_scores`): AUROC, average precision and recall at 1%
false-positive rate of a continuous score, each resample by one weighted pass over the rows
sorted once by score (ties grouped), equal to scikit-learn's ``roc_auc_score``,
``average_precision_score`` and a read of ``roc_curve`` on that resample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "BINARY_METRICS",
    "GroupResamples",
    "bootstrap_indices",
    "binary_scores",
    "paired_binary",
    "binary_intervals",
    "resampled_binary_scores",
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


@dataclasses.dataclass(frozen=True)
class GroupResamples:
    """Resamples of a cluster bootstrap: ``counts[r, i]`` is how many times row ``i`` is in
    resample ``r`` (the number of draws of its group), ``(R, N)`` int32.

    Attributes:
        counts: the multiplicities.
        n_groups: G, the number of groups (inputs) drawn per resample.
    """

    counts: np.ndarray
    n_groups: int

    def __len__(self) -> int:
        return int(self.counts.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(R, N)``."""
        return (int(self.counts.shape[0]), int(self.counts.shape[1]))

    def positions(self, r: int) -> np.ndarray:
        """Resample ``r`` as row positions (each row repeated by its count), sorted."""
        return np.repeat(np.arange(self.counts.shape[1]), self.counts[r])


Resamples = np.ndarray | GroupResamples
"""``(R, N)`` positions (a row bootstrap) or :class:`GroupResamples` (a cluster bootstrap)."""


def bootstrap_indices(
    n_samples: int, n_resamples: int, seed: int | None, groups: Any = None
) -> Any:
    """The resamples of a bootstrap over ``n_samples`` rows.

    Args:
        n_samples: N.
        n_resamples: R.
        seed: seed of ``np.random.default_rng``.
        groups: ``(N,)`` group (input) of each row, or ``None``.

    Returns:
        Without groups, ``(R, N)`` int64 positions: ``default_rng(seed).integers(0, N,
        size=(R, N))``. With groups, a :class:`GroupResamples`: the G distinct groups are drawn
        with replacement (``default_rng(seed).integers(0, G, size=(R, G))``) and every row of a
        drawn group is taken once per draw.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.integers(0, n_samples, size=(n_resamples, n_samples))
    groups = np.asarray(groups).reshape(-1)
    if groups.shape[0] != n_samples:
        raise ValueError(f"{groups.shape[0]} groups for {n_samples} rows")
    _, code = np.unique(groups, return_inverse=True)
    code = code.reshape(-1)
    g = int(code.max()) + 1 if code.size else 0
    draws = rng.integers(0, g, size=(n_resamples, g))
    counts = np.empty((n_resamples, n_samples), dtype=np.int32)
    step = _rows_per_chunk(max(g, n_samples))
    for a in range(0, n_resamples, step):
        rows = draws[a : a + step]
        keys = rows + np.arange(rows.shape[0])[:, None] * g
        per_group = np.bincount(keys.ravel(), minlength=rows.shape[0] * g).reshape(-1, g)
        counts[a : a + step] = per_group[:, code]
    return GroupResamples(counts, g)


def _weights(idx: Any, n: int, step: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, (r', N) float64 multiplicities)`` for chunks of the resamples ``idx``."""
    step = step or _rows_per_chunk(n)
    if isinstance(idx, GroupResamples):
        if idx.counts.shape[1] != n:
            raise ValueError(f"resamples over {idx.counts.shape[1]} rows for {n} samples")
        for a in range(0, len(idx), step):
            yield a, idx.counts[a : a + step].astype(np.float64)
        return
    for a in range(0, len(idx), step):
        rows = idx[a : a + step]
        keys = rows + np.arange(rows.shape[0])[:, None] * n
        w = np.bincount(keys.ravel(), minlength=rows.shape[0] * n).reshape(-1, n)
        yield a, w.astype(np.float64)


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
    r = len(idx)
    counts = np.empty((r, k, 1 << m), dtype=np.int64)
    if isinstance(idx, GroupResamples):  # multiplicities: one product with the codes' one-hot
        onehot = np.zeros((len(code), c))
        onehot[np.arange(len(code)), code] = 1.0
        for a, w in _weights(idx, len(code)):
            counts[a : a + len(w)] = np.rint(w @ onehot).astype(np.int64).reshape(-1, k, 1 << m)
    else:
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
    return resampled_mean((p == y).astype(np.float64), idx)


def percentile_interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """``(lo, hi)``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (numpy's linear
    interpolation) of ``(R,)`` resampled scores."""
    lo, hi = np.percentile(np.asarray(values), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def resampled_mean(values: Any, idx: np.ndarray) -> np.ndarray:
    """Mean of ``(N,)`` per-sample ``values`` over every resample ``idx[r]``: ``(R, N) -> (R,)``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if isinstance(idx, GroupResamples):
        out = np.empty(len(idx))
        for a, w in _weights(idx, len(v)):
            out[a : a + len(w)] = (w @ v) / w.sum(axis=1)
        return out
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
    if isinstance(idx, GroupResamples):  # resamples of different sizes: one at a time
        return np.concatenate([resampled_r2(y, p, idx.positions(r)[None]) for r in range(len(idx))])
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
    if isinstance(idx, GroupResamples):  # resamples of different sizes: one at a time
        return np.concatenate(
            [resampled_spearman(y, p, idx.positions(r)[None]) for r in range(len(idx))]
        )
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
    groups: Any = None,
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
        groups: ``(N,)`` group (input) of each row: a cluster bootstrap over the groups
            (:func:`bootstrap_indices`); ``None``: over rows.

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
        y_true, y_pred, bootstrap_indices(len(np.asarray(y_true)), n_resamples, seed, groups)
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
    idx: Any = None,
    groups: Any = None,
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
        idx: ``(R, N)`` resampled positions or :class:`GroupResamples` to use instead of
            drawing them (``n_resamples``, ``seed`` and ``groups`` are then unused).
        groups: ``(N,)`` group (input) of each row: resample groups, not rows.

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
        idx = bootstrap_indices(len(y), n_resamples, seed, groups)
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


def paired_mean_difference(a: Any, b: Any, idx: Any, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``mean(a) - mean(b)`` over paired ``(N,)`` per-sample values,
    resampled by the ``(R, N)`` positions ``idx`` (e.g. a layer's selectivity: task hits minus
    control hits)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return percentile_interval(resampled_mean(d, idx), level)


# ------------------------------------------------------------------------------ binary scores

BINARY_METRICS = ("auroc", "auprc", "recall_at_1fpr")
"""The binary scores of a continuous score: AUROC, average precision (AUPRC) and the recall
(true-positive rate) at 1% false-positive rate."""

MAX_FPR = 0.01
"""The false-positive rate of ``recall_at_1fpr``."""


def _binary_setup(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(positive (N,) bool in score order, order (N,), starts (B,))``: rows sorted by
    decreasing score, ``starts`` the first sorted position of each distinct score (a threshold)."""
    y = np.asarray(y_true).ravel()
    v = np.asarray(score, dtype=np.float64).ravel()
    if v.shape != y.shape:
        raise ValueError(f"scores of shape {v.shape} for {y.shape} true labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary scores need labels in {0, 1} (1: the positive class)")
    order = np.argsort(-v, kind="stable")
    sv = v[order]
    new = np.ones(len(sv), dtype=bool)
    new[1:] = sv[1:] != sv[:-1]
    return y[order] == 1, order, np.flatnonzero(new)


def _block_codes(pos: np.ndarray, order: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``(N,)`` code of every row in input order: ``2 * threshold + positive``."""
    block = np.zeros(len(order), dtype=np.int64)
    block[starts[1:]] = 1
    code = np.empty(len(order), dtype=np.int64)
    code[order] = 2 * np.cumsum(block) + pos
    return code


def _blocks_of_weights(
    w: np.ndarray, pos: np.ndarray, order: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(r', N)`` multiplicities (rows in input order) -> ``(tp_b, fp_b)``, each ``(r', B)``:
    the weight of the positives and of the negatives scored at each threshold."""
    ws = w[:, order]
    return np.add.reduceat(ws * pos, starts, axis=1), np.add.reduceat(ws * ~pos, starts, axis=1)


def _binary_of_blocks(tp_b: np.ndarray, fp_b: np.ndarray, max_fpr: float) -> np.ndarray:
    """Per-threshold weights ``(r', B)`` -> ``(3, r')`` AUROC, AP, recall at ``max_fpr``.

    Per threshold b (distinct score, decreasing): ``tp_b``, ``fp_b`` the weight of the positives
    and negatives scored exactly there, ``TP_b``, ``FP_b`` their running sums. AUROC
    ``= sum_b fp_b (TP_b - tp_b / 2) / (P N)`` (a tied pair counts 1/2: the trapezoidal area of
    ``roc_curve``), AP ``= sum_b (tp_b / P) TP_b / (TP_b + FP_b)`` (scikit-learn's step sum),
    recall ``= max {TP_b / P : FP_b / N <= max_fpr}`` (0 if no threshold qualifies). A resample
    without positives or negatives gives ``nan``.
    """
    tp, fp = np.cumsum(tp_b, axis=1), np.cumsum(fp_b, axis=1)
    p, n = tp[:, -1].copy(), fp[:, -1].copy()
    bad = (p == 0) | (n == 0)
    p[bad], n[bad] = 1.0, 1.0  # filled with nan below
    out = np.empty((3, tp_b.shape[0]))
    # AUROC: the area under the step-and-trapezoid ROC curve
    out[0] = np.einsum("rb,rb->r", fp_b, tp - 0.5 * tp_b) / (p * n)
    seen = tp + fp  # 0 only before the first drawn row, where tp_b is 0 too
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    out[1] = np.einsum("rb,rb->r", tp_b, precision) / p
    # FP is non-decreasing: the thresholds with FPR <= max_fpr are a prefix of length k
    k = (fp / n[:, None] <= max_fpr).sum(axis=1)
    top = np.take_along_axis(tp, np.maximum(k - 1, 0)[:, None], axis=1)[:, 0]
    out[2] = np.where(k > 0, top, 0.0) / p
    out[:, bad] = np.nan
    return out


def binary_scores(y_true: Any, score: Any, max_fpr: float = MAX_FPR) -> dict[str, float]:
    """AUROC, average precision and recall at ``max_fpr`` false-positive rate of ``(N,)``
    scores of ``(N,)`` labels in {0, 1}.

    ``recall_at_1fpr`` is the largest true-positive rate among the points of the ROC curve
    (scikit-learn's ``roc_curve``: one point per distinct score, plus ``(0, 0)``) whose
    false-positive rate is at most ``max_fpr``: the recall of the most permissive threshold
    that flags at most 1% of the negatives (ties share a threshold, so a tie that straddles the
    limit is left out whole). ``nan`` where a class is missing.

    Returns:
        ``{"auroc", "auprc", "recall_at_1fpr"}``.
    """
    pos, order, starts = _binary_setup(y_true, score)
    tp_b, fp_b = _blocks_of_weights(np.ones((1, len(pos))), pos, order, starts)
    vals = _binary_of_blocks(tp_b, fp_b, max_fpr)[:, 0]
    return {k: float(v) for k, v in zip(BINARY_METRICS, vals, strict=True)}


def resampled_binary_scores(
    y_true: Any, score: Any, idx: Any, max_fpr: float = MAX_FPR
) -> dict[str, np.ndarray]:
    """:func:`binary_scores` of every resample: ``(R, N)`` positions or :class:`GroupResamples`
    -> ``{name: (R,)}`` (``nan`` for a resample lacking a class)."""
    pos, order, starts = _binary_setup(y_true, score)
    out = np.empty((3, len(idx)))
    step = max(1, _rows_per_chunk(len(pos)) // 4)  # a few (r', N) temporaries per chunk
    if isinstance(idx, GroupResamples):
        for a, w in _weights(idx, len(pos), step):
            tp_b, fp_b = _blocks_of_weights(w, pos, order, starts)
            out[:, a : a + len(w)] = _binary_of_blocks(tp_b, fp_b, max_fpr)
    else:  # positions: one bincount of (resample, threshold, class) per chunk
        code, c = _block_codes(pos, order, starts), 2 * len(starts)
        for a in range(0, len(idx), step):
            rows = idx[a : a + step]
            keys = code[rows] + np.arange(rows.shape[0])[:, None] * c
            counts = np.bincount(keys.ravel(), minlength=rows.shape[0] * c).reshape(-1, c // 2, 2)
            counts = counts.astype(np.float64)
            out[:, a : a + len(rows)] = _binary_of_blocks(counts[..., 1], counts[..., 0], max_fpr)
    return dict(zip(BINARY_METRICS, out, strict=True))


def _finite_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval over the finite resampled values (``[nan, nan]`` if none)."""
    v = values[np.isfinite(values)]
    return list(percentile_interval(v, level)) if v.size else [float("nan"), float("nan")]


def paired_binary(
    y_true: Any, score_a: Any, score_b: Any, idx: Any, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of every binary score of A minus B on the same resamples ``idx``.

    Returns:
        ``{name: {"difference", "ci", "p_le0"}}``: the difference on the rows themselves, the
        percentile interval of the resampled differences and the fraction of them ``<= 0``
        (resamples lacking a class are left out).
    """
    full_a, full_b = binary_scores(y_true, score_a), binary_scores(y_true, score_b)
    ra = resampled_binary_scores(y_true, score_a, idx)
    rb = resampled_binary_scores(y_true, score_b, idx)
    out: dict[str, dict[str, Any]] = {}
    for name in BINARY_METRICS:
        d = ra[name] - rb[name]
        d = d[np.isfinite(d)]
        out[name] = {
            "difference": full_a[name] - full_b[name],
            "ci": _finite_interval(d, level),
            "p_le0": float(np.mean(d <= 0)) if d.size else float("nan"),
        }
    return out


def binary_intervals(y_true: Any, score: Any, idx: Any, level: float = 0.95) -> dict[str, Any]:
    """Every binary score with its percentile interval over ``idx``: ``{name, name_ci}``."""
    full = binary_scores(y_true, score)
    res = resampled_binary_scores(y_true, score, idx)
    out: dict[str, Any] = {}
    for name in BINARY_METRICS:
        out[name] = full[name]
        out[f"{name}_ci"] = _finite_interval(res[name], level)
    return out
