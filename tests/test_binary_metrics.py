"""Binary scores of the bootstrap module against scikit-learn, and the cluster bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    roc_auc_score,
    roc_curve,
)

from probekit.analysis.stats import (
    GroupResamples,
    binary_scores,
    bootstrap_indices,
    paired_binary,
    paired_bootstrap,
    percentile_interval,
    resampled_accuracy,
    resampled_balanced_accuracy,
    resampled_binary_scores,
    resampled_mean,
    resampled_r2,
)


def _sklearn(y: np.ndarray, s: np.ndarray) -> list[float]:
    """AUROC, AP, and the largest TPR of roc_curve's points with FPR <= 0.01."""
    fpr, tpr, _ = roc_curve(y, s)
    return [roc_auc_score(y, s), average_precision_score(y, s), float(tpr[fpr <= 0.01].max())]


def _case(n: int = 400, seed: int = 0, decimals: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = 1.5 * y + rng.normal(size=n)
    return y, (np.round(s, decimals) if decimals is not None else s)  # rounding: many ties


@pytest.mark.parametrize("decimals", [None, 1, 0])
def test_binary_scores_equal_sklearn(decimals: int | None) -> None:
    y, s = _case(decimals=decimals)
    ours = binary_scores(y, s)
    np.testing.assert_allclose(list(ours.values()), _sklearn(y, s), rtol=1e-12)
    assert ours["recall_at_1fpr"] > 0  # the case exercises a non-trivial point


def test_recall_at_1fpr_keeps_a_tie_straddling_the_limit_out() -> None:
    # 100 negatives: FPR <= 0.01 allows one. The top score is shared by 2 negatives and 3
    # positives, so its threshold has FPR 0.02: only (0, 0) qualifies.
    y = np.array([1, 1, 1, 0, 0] + [1] * 10 + [0] * 98)
    s = np.array([5.0] * 5 + [4.0] * 10 + [1.0] * 98)
    assert binary_scores(y, s)["recall_at_1fpr"] == 0.0 == _sklearn(y, s)[2]
    s2 = s.copy()
    s2[3] = 6.0  # one negative alone on top: the next threshold (FPR 0.02) still fails
    assert binary_scores(y, s2)["recall_at_1fpr"] == _sklearn(y, s2)[2] == 0.0
    s3 = s.copy()
    s3[3:5] = 0.5  # the negatives of the tie moved down: 13 positives before any negative
    assert binary_scores(y, s3)["recall_at_1fpr"] == _sklearn(y, s3)[2] == 1.0


@pytest.mark.parametrize("groups", [False, True])
def test_resampled_binary_scores_equal_sklearn_on_each_resample(groups: bool) -> None:
    y, s = _case(n=240, seed=1)
    g = np.repeat(np.arange(80), 3) if groups else None
    idx = bootstrap_indices(len(y), 6, seed=2, groups=g)
    res = resampled_binary_scores(y, s, idx)
    for r in range(6):
        rows = idx.positions(r) if groups else idx[r]
        ours = [res[k][r] for k in ("auroc", "auprc", "recall_at_1fpr")]
        np.testing.assert_allclose(ours, _sklearn(y[rows], s[rows]), rtol=1e-12)


def test_paired_binary_is_the_difference_on_the_same_resamples() -> None:
    y, a = _case(n=200, seed=3)
    b = a + np.random.default_rng(4).normal(size=len(a))
    idx = bootstrap_indices(len(y), 50, seed=5)
    out = paired_binary(y, a, b, idx)
    ra, rb = resampled_binary_scores(y, a, idx), resampled_binary_scores(y, b, idx)
    d = ra["auroc"] - rb["auroc"]
    assert out["auroc"]["difference"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    np.testing.assert_allclose(out["auroc"]["ci"], percentile_interval(d))
    assert out["auroc"]["p_le0"] == pytest.approx(np.mean(d <= 0))
    with pytest.raises(ValueError, match="labels in"):
        binary_scores(y + 1, a)
    assert all(np.isnan(v) for v in binary_scores(np.zeros(5, int), a[:5]).values())


# --------------------------------------------------------------------------- cluster bootstrap


def test_group_resamples_are_unions_of_whole_groups() -> None:
    groups = np.array([3, 3, 7, 7, 7, 1, 9, 9, 9, 9])  # unequal sizes, unsorted ids
    res = bootstrap_indices(len(groups), 200, seed=0, groups=groups)
    assert isinstance(res, GroupResamples) and res.counts.shape == (200, 10)
    draws = np.random.default_rng(0).integers(0, 4, size=(200, 4))  # the groups drawn
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    for r in range(200):
        c = res.counts[r]
        for gid in np.unique(groups):  # every row of a group is drawn as often as the group
            assert len(set(c[groups == gid])) == 1
        want = np.bincount(draws[r], minlength=4)  # group codes in sorted-id order
        np.testing.assert_array_equal([c[groups == gid][0] for gid in np.unique(groups)], want)
        assert c.sum() == (want * sizes).sum()


def test_group_resamples_score_like_the_expanded_resample() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    pred = np.where(rng.random(90) < 0.7, y, rng.integers(0, 3, 90))
    b = np.where(rng.random(90) < 0.6, y, rng.integers(0, 3, 90))
    t = rng.normal(size=90)
    q = t + rng.normal(size=90)
    res = bootstrap_indices(90, 20, seed=3, groups=np.repeat(np.arange(30), 3))
    bal = resampled_balanced_accuracy(y, pred, res)
    acc = resampled_accuracy(y, pred, res)
    r2 = resampled_r2(t, q, res)
    pb = paired_bootstrap(y, pred, b, idx=res)
    for r in range(20):
        rows = res.positions(r)
        assert bal[r] == pytest.approx(balanced_accuracy_score(y[rows], pred[rows]), rel=1e-12)
        assert acc[r] == pytest.approx(accuracy_score(y[rows], pred[rows]), rel=1e-12)
        want = balanced_accuracy_score(y[rows], pred[rows]) - balanced_accuracy_score(
            y[rows], b[rows]
        )
        assert pb.differences[r] == pytest.approx(want, abs=1e-12)
        ss = ((t[rows] - q[rows]) ** 2).sum() / ((t[rows] - t[rows].mean()) ** 2).sum()
        assert r2[r] == pytest.approx(1 - ss, rel=1e-10)


def test_cluster_interval_is_wider_by_sqrt_of_the_group_size() -> None:
    """Rows of a group share one outcome: the row bootstrap sees 4x too many independent
    samples, so its interval is about sqrt(4) = 2 times too narrow."""
    rng = np.random.default_rng(0)
    size, n_groups = 4, 500
    hit = np.repeat(rng.random(n_groups) < 0.7, size).astype(float)  # perfectly correlated
    groups = np.repeat(np.arange(n_groups), size)
    n = len(hit)
    row = percentile_interval(resampled_mean(hit, bootstrap_indices(n, 2000, seed=1)))
    grp = percentile_interval(
        resampled_mean(hit, bootstrap_indices(n, 2000, seed=1, groups=groups))
    )
    ratio = (grp[1] - grp[0]) / (row[1] - row[0])
    assert 1.75 < ratio < 2.25, ratio
