"""The control task of ``ProbeClassifier(control=True)`` (Hewitt & Liang, 2019).

::

    clf = ProbeClassifier(head="linear", control=True, random_state=0)
    clf.fit(X, y, sample_keys=words)          # a text cache needs no keys: its texts are used
    clf.layer_scores_        # (L,) validation accuracy on the task
    clf.control_scores_      # (L,) the same probe, the same split, control labels
    clf.selectivity_         # (L,) layer_scores_ - control_scores_
    clf.control_estimator_   # the fitted control probe (predict_layers on held-out data)
    control_task_labels(clf, test_words)      # the control labels of other samples

The control labels come from :func:`probekit.control_labels` with the training labels'
distribution and a seed derived from ``random_state``; the control probe is a copy of the
estimator (same head, hyper-parameters and seed) whose validation split is the task probe's
(stratified on the task labels), so the two validation scores are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..control import control_labels, label_cdf, labels_from_cdf, sample_keys
from ..errors import ConfigError, DataError
from .inputs import _is_cache

__all__ = ["control_keys", "control_task_labels", "fit_control"]


def control_keys(clf: Any, X: Any, keys: Sequence[Any] | None) -> list[Any] | None:
    """The sample keys of a ``control=True`` fit, checked before any training.

    Returns:
        ``None`` when ``clf.control`` is off, else one key per sample: ``keys``, or a text
        cache's texts.

    Raises:
        ConfigError: control is on and there are no keys (plain arrays without
            ``sample_keys=``, an image cache), or the head settings give no validation scores.
    """
    if not getattr(clf, "control", False):
        if keys is not None:
            raise ConfigError("sample_keys is only used with control=True")
        return None
    if keys is None:
        texts = getattr(X, "texts", None) if _is_cache(X) else None
        if texts is None:
            raise ConfigError(
                "control=True needs the type of every sample: pass fit(X, y, sample_keys=...) "
                "(texts, or probekit.sample_keys(dataset) for images); only a text cache "
                "provides them itself"
            )
        return sample_keys(X)
    return list(keys)


def fit_control(clf: Any, X: Any, y: Any, keys: list[Any], layer_names: Any, seed: int) -> None:
    """Fit the control probe of a fitted ``clf`` and set its control attributes.

    Args:
        clf: the fitted task probe (``control=True``).
        X, y, layer_names: what ``clf`` was fitted on.
        keys: one key per sample.
        seed: the task fit's seed (derived from ``random_state``); seeds the control labels.
            The control probe's validation split is stratified on the task labels, so it is the
            task probe's split.

    Raises:
        DataError: ``keys`` and ``y`` differ in length.
        ConfigError: the probe has no per-layer validation scores (``val_size=0``, or a head
            without per-layer logits).
    """
    y_arr = np.asarray(y).reshape(-1)
    if len(keys) != len(y_arr):
        raise DataError(f"{len(keys)} sample_keys for {len(y_arr)} samples; give one per sample")
    if clf.layer_scores_ is None:
        raise ConfigError(
            f"control=True needs per-layer validation scores: head {clf.head!r} with "
            "val_size > 0 gives none; use a head with per-layer probes (e.g. 'linear') and "
            "val_size > 0"
        )
    y_ctl = control_labels(keys, y_arr, seed=seed)
    params = clf.get_params()
    params["control"] = False
    ctl = type(clf)(**params)
    ctl._stratify = np.unique(y_arr, return_inverse=True)[1].astype(np.int64)
    ctl.fit(X, y_ctl, layer_names=layer_names)
    del ctl._stratify
    classes, cdf = label_cdf(y_arr)
    clf.control_estimator_ = ctl
    clf.control_seed_ = int(seed)
    clf.control_classes_ = classes
    clf.control_cdf_ = cdf
    clf.control_scores_ = np.asarray(ctl.layer_scores_, dtype=np.float64)
    clf.selectivity_ = np.asarray(clf.layer_scores_, dtype=np.float64) - clf.control_scores_


def control_task_labels(clf: Any, keys: Sequence[Any]) -> np.ndarray:
    """The control labels of any samples under a fitted ``control=True`` probe's control task.

    A key seen in training gets the label it had there; a new key gets a label drawn (by its
    hash) from the training labels' distribution.

    Args:
        clf: a fitted ``ProbeClassifier(control=True)``.
        keys: ``N`` sample keys (texts, content hashes).

    Returns:
        ``(N,)`` labels among the training classes.
    """
    if not hasattr(clf, "control_seed_"):
        raise ConfigError("the probe was not fitted with control=True")
    return labels_from_cdf(list(keys), clf.control_classes_, clf.control_cdf_, clf.control_seed_)
