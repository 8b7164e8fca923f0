"""Per-class measures of a classification run: each class's recall per layer, and confusion.

The fit stage (:func:`probekit.runs.fit.fit_stage`) records both in ``metrics.json``: under the
linear head, ``per_class`` (``{layer: {class: recall}}``, the test-split recall of every class of
every per-layer linear probe) and ``per_class_support`` (``{class: test rows}``); at the top,
``confusion`` (``{"head", "counts"}``: the best head's test-split counts, rows the true classes
and columns the predicted ones, in ``label_names`` order). A class without test rows has no
recall and is left out of ``per_class``. The report draws both
(:mod:`probekit.report.html`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["confusion_counts", "per_class_recall"]


def confusion_counts(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    """``(C, C)`` counts of ``(N,)`` class indices ``y`` (rows) predicted as ``pred`` (columns)."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    counts = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).tolist()


def per_class_recall(
    y: np.ndarray,
    layer_pred: np.ndarray,
    layer_names: Sequence[str],
    label_names: Sequence[str],
) -> dict[str, Any]:
    """Every class's recall for each layer's predictions.

    Args:
        y: ``(N,)`` true class indices into ``label_names``.
        layer_pred: ``(N, L)`` each layer's predicted class indices.
        layer_names, label_names: the ``L`` layers and the ``C`` classes.

    Returns:
        ``{"per_class": {layer: {class: recall}}, "per_class_support": {class: n}}`` over the
        classes with at least one row in ``y``.
    """
    y = np.asarray(y, dtype=np.int64)
    layer_pred = np.asarray(layer_pred, dtype=np.int64)
    support = np.bincount(y, minlength=len(label_names))
    present = [int(c) for c in np.flatnonzero(support)]
    table: dict[str, dict[str, float]] = {}
    for j, layer in enumerate(layer_names):
        hits = np.bincount(y[layer_pred[:, j] == y], minlength=len(label_names))
        table[str(layer)] = {str(label_names[c]): float(hits[c] / support[c]) for c in present}
    return {
        "per_class": table,
        "per_class_support": {str(label_names[c]): int(support[c]) for c in present},
    }
