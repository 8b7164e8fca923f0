"""Accuracy, balanced accuracy, stratified splits and class weights for the training loops."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "batch_size_for",
    "class_weights",
    "grouped_split",
    "selection_accuracy",
    "stratified_split",
]


# --------------------------------------------------------------------------- metrics


def _as_long_tensor(y: Any) -> Tensor:
    if isinstance(y, Tensor):
        return y.detach().long().cpu().contiguous()
    return torch.as_tensor(np.ascontiguousarray(y)).long()


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions.

    Args:
        y_true: ``(N,)`` integer labels (array or tensor).
        y_pred: ``(N,)`` predicted labels.

    Returns:
        Accuracy in [0, 1].
    """
    t, p = _as_long_tensor(y_true), _as_long_tensor(y_pred)
    if t.shape != p.shape or t.numel() == 0:
        raise DataError(
            f"need two non-empty label vectors of one shape, got {t.shape} and {p.shape}"
        )
    return float((t == p).double().mean())


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition).

    Args:
        y_true: ``(N,)`` integer labels (array or tensor).
        y_pred: ``(N,)`` predicted labels.

    Returns:
        Balanced accuracy in [0, 1].
    """
    t, p = _as_long_tensor(y_true), _as_long_tensor(y_pred)
    if t.shape != p.shape or t.numel() == 0:
        raise DataError(
            f"need two non-empty label vectors of one shape, got {t.shape} and {p.shape}"
        )
    classes = torch.unique(torch.cat([t, p]))
    t, p = torch.searchsorted(classes, t), torch.searchsorted(classes, p)
    return float(_balanced_accuracy_batched(p, t, classes.numel()))


def selection_accuracy(pred: Tensor, y: Tensor, n_classes: int, class_weight: Any = None) -> Tensor:
    """The score classifiers choose epochs, configurations and layers on.

    Args:
        pred: ``(..., N)`` predicted class indices.
        y: ``(N,)`` true class indices.
        n_classes: C.
        class_weight: the recipe's ``class_weight``: per-class weights (a list, the user's)
            make it the accuracy weighted by them; anything else gives the balanced accuracy
            (which is that accuracy with the weights ``1 / n_c``).

    Returns:
        ``(...)`` float64 scores.
    """
    w = (
        torch.as_tensor([float(v) for v in class_weight], dtype=torch.float64, device=y.device)
        if isinstance(class_weight, (list, tuple))
        else None
    )
    return _balanced_accuracy_batched(pred, y, n_classes, w)


def _balanced_accuracy_batched(
    pred: Tensor, y: Tensor, n_classes: int, class_weight: Tensor | None = None
) -> Tensor:
    """Balanced accuracy of many prediction vectors at once.

    Args:
        pred: ``(..., N)`` predicted class indices.
        y: ``(N,)`` true class indices in ``[0, n_classes)``.
        n_classes: C.
        class_weight: ``(C,)`` per-class weights: the accuracy with each sample weighted by
            its class's weight instead (``sum_c w_c hits_c / sum_c w_c n_c``).

    Returns:
        ``(...)`` float64 balanced accuracies (mean recall over classes present in ``y``).
    """
    onehot = F.one_hot(y, n_classes).double()  # (N, C)
    counts = onehot.sum(0)  # (C,)
    hits = (pred == y).double()  # (..., N)
    if class_weight is not None:
        w = class_weight.to(onehot)
        return (hits @ onehot @ w) / (counts @ w).clamp_min(1e-300)
    recall = (hits @ onehot) / counts.clamp_min(1)  # (..., C)
    present = counts > 0
    return recall[..., present].mean(-1)


# --------------------------------------------------------------------------- data helpers


def stratified_split(
    y: Any, val_size: float, seed: int, groups: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into train and validation, keeping class proportions.

    Every class with at least two samples puts ``round(val_size * n_c)`` of them (at least
    one, and never all) into validation; single-sample classes stay in train.

    With ``groups`` (a unit cache's rows: the input each row comes from) whole groups go to one
    side: the validation rows are one fold of scikit-learn's ``StratifiedGroupKFold`` with
    ``round(1 / val_size)`` folds (at least 2), which keeps class proportions where the groups
    allow; no group is ever on both sides.

    Args:
        y: ``(N,)`` integer labels.
        val_size: fraction in (0, 1).
        seed: seed of the shuffle.
        groups: ``(N,)`` group of each row, or ``None``.

    Returns:
        ``(train_idx, val_idx)`` sorted int64 index arrays.
    """
    if not 0.0 < val_size < 1.0:
        raise ConfigError(f"val_size must be in (0, 1), got {val_size}")
    y = np.asarray(y)
    if groups is not None:
        return grouped_split(y, np.asarray(groups), val_size, seed, stratify=True)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if idx.size < 2:
            continue
        k = min(max(int(round(val_size * idx.size)), 1), idx.size - 1)
        val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx.astype(np.int64)


def grouped_split(
    y: Any, groups: np.ndarray, test_size: float, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices, sorted, with every group wholly on one side.

    The test rows are one seeded fold of ``StratifiedGroupKFold`` (``stratify``, classes) or
    ``GroupKFold`` with shuffling (regression) over ``round(1 / test_size)`` folds. With classes,
    a test group holding a class that no train row has goes back to train (a probe cannot
    predict a class it never saw), unless that would empty the test side.

    Raises:
        ConfigError: fewer than two groups.
    """
    import warnings

    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups).reshape(-1)
    n_groups = np.unique(groups).size
    if n_groups < 2:
        raise ConfigError("a split by sample needs rows from at least two samples")
    folds = min(max(2, int(round(1.0 / test_size))), n_groups)
    rows = np.arange(groups.size)
    if not stratify:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        train, test = next(splitter.split(rows, groups=groups))
        return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)
    y = np.asarray(y).reshape(-1)
    with warnings.catch_warnings():  # rare classes: handled below, not worth a warning
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        stratified = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        train, test = next(stratified.split(rows, y, groups))
    unseen = np.setdiff1d(y[test], y[train])
    if unseen.size:
        back = np.isin(groups, groups[test][np.isin(y[test], unseen)])
        if not back.all():
            train, test = (
                np.flatnonzero(~np.isin(rows, test) | back),
                np.flatnonzero(np.isin(rows, test) & ~back),
            )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def class_weights(
    y: Tensor, n_classes: int, mode: str | Mapping[Any, float] | Sequence[float] | None
) -> Tensor:
    """Per-class loss weights.

    Args:
        y: ``(N,)`` class indices.
        n_classes: C.
        mode: ``"balanced"`` (``N / (K * count_c)``, K = classes present, as scikit-learn;
            absent classes get 0), ``None`` (all ones) or ``C`` weights in class-index order.

    Returns:
        ``(C,)`` float32 weights on ``y``'s device.
    """
    if mode is None:
        return torch.ones(n_classes, device=y.device)
    if isinstance(mode, Mapping):  # labels: the estimator turns them into per-class weights
        raise ConfigError("class_weight {label: weight} needs the classes: give C weights")
    if isinstance(mode, (list, tuple)):
        if len(mode) != n_classes:
            raise ConfigError(f"class_weight has {len(mode)} weights for {n_classes} classes")
        return torch.tensor([float(w) for w in mode], device=y.device)
    if mode != "balanced":
        raise ConfigError(
            f"class_weight must be 'balanced', None or per-class weights, got {mode!r}"
        )
    counts = torch.bincount(y, minlength=n_classes).float()
    present = counts > 0
    w = torch.zeros(n_classes, device=y.device)
    w[present] = y.numel() / (int(present.sum()) * counts[present])
    return w


def batch_size_for(n: int, batch_size: int, min_batches: int = 1) -> int:
    """Shrink ``batch_size`` so that ``n`` samples give at least ``min_batches`` batches."""
    return max(1, min(batch_size, n // max(min_batches, 1) or 1))
