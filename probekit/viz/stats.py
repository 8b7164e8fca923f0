"""Paired bootstrap comparison of two classifiers scored on the same test samples.

Two accuracies measured on the same samples are correlated: their separate intervals overlap even
when one classifier is reliably better. Resampling the samples once and scoring both classifiers
on each resample gives the interval of the *difference* (Efron & Tibshirani, *An Introduction to
the Bootstrap*, 1993, ch. 16; the paired test of Berg-Kirkpatrick et al., EMNLP 2012).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis.stats import paired_bootstrap as _paired

__all__ = ["PairedBootstrap", "paired_bootstrap"]


@dataclass(frozen=True)
class PairedBootstrap:
    """Result of :func:`paired_bootstrap` (accuracy of A minus accuracy of B).

    Attributes:
        accuracy_a: accuracy of A on the test samples.
        accuracy_b: accuracy of B.
        difference: ``accuracy_a - accuracy_b``.
        ci: ``(low, high)`` percentile interval of the difference.
        frac_le_zero: fraction of resamples where the difference is <= 0 (small: A reliably
            better; near 1: A reliably not better).
        n: number of test samples.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of ``ci``.
    """

    accuracy_a: float
    accuracy_b: float
    difference: float
    ci: tuple[float, float]
    frac_le_zero: float
    n: int
    n_resamples: int
    confidence: float

    def verdict(self, name_a: str = "A", name_b: str = "B") -> str:
        """One sentence that is true whichever way the numbers fall.

        Returns:
            "A beats B ...", "A is worse than B ..." or "... cannot be told apart ...", with the
            difference in percentage points, its interval and ``frac_le_zero``.
        """
        lo, hi = self.ci
        stats = (
            f"difference {100 * self.difference:+.1f} pp, {self.confidence:.0%} CI "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pp, <= 0 in {self.frac_le_zero:.1%} of "
            f"{self.n_resamples} paired resamples of the {self.n} test samples"
        )
        acc = f"({100 * self.accuracy_a:.1f}% vs {100 * self.accuracy_b:.1f}%)"
        if lo > 0:
            return f"{name_a} beats {name_b} {acc}: {stats}."
        if hi < 0:
            return f"{name_a} is worse than {name_b} {acc}: {stats}."
        lean = ""
        if self.frac_le_zero >= 0.9:
            lean = f"; {name_a} is not ahead in most resamples, so a gain from it is unlikely"
        elif self.frac_le_zero <= 0.1:
            lean = f"; {name_a} is ahead in most resamples, short of 95% confidence"
        return f"{name_a} and {name_b} cannot be told apart on these samples {acc}: {stats}{lean}."


def paired_bootstrap(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> PairedBootstrap:
    """Bootstrap the accuracy difference of two classifiers over the same test samples.

    Each resample draws ``N`` sample indices with replacement and scores both A and B on those same
    samples; the resampling is :func:`probekit._bootstrap.paired_bootstrap` with
    ``metric="accuracy"`` (the same draws as the balanced-accuracy comparisons of ``probekit run``
    for the same seed).

    Args:
        y_true: ``(N,)`` true labels.
        pred_a: ``(N,)`` predictions of A.
        pred_b: ``(N,)`` predictions of B.
        n_resamples: number of resamples.
        confidence: coverage of the percentile interval.
        random_state: seed.

    Returns:
        A :class:`PairedBootstrap`.

    Raises:
        ValueError: the three arrays differ in length or are empty.
    """
    y = np.asarray(y_true)
    a = np.asarray(pred_a)
    b = np.asarray(pred_b)
    if not (y.shape == a.shape == b.shape) or y.ndim != 1 or y.size == 0:
        raise ValueError(
            f"y_true, pred_a and pred_b must be non-empty (N,) arrays of one length, got "
            f"{y.shape}, {a.shape}, {b.shape}"
        )
    res = _paired(
        y, a, b, n_resamples=n_resamples, seed=random_state, level=confidence, metric="accuracy"
    )
    return PairedBootstrap(
        accuracy_a=res.score_a,
        accuracy_b=res.score_b,
        difference=res.difference,
        ci=(res.lo, res.hi),
        frac_le_zero=res.p_not_better,
        n=int(y.size),
        n_resamples=int(n_resamples),
        confidence=float(confidence),
    )
