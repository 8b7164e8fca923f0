"""What every consumer of a fitted probe needs: its checked raw input, its device, label
indices, and the head's outputs in batches. Shared by :mod:`probekit.attribution` and
:mod:`probekit.viz` (internal; the public functions live in those modules).

``clf`` is a fitted :class:`probekit.ProbeClassifier` (or :class:`probekit.ProbeRegressor`) or
anything with the same fitted attributes (``model_``, ``classes_`` (regressors: ``target_scale_``), ``n_layers_``, ``tokens_per_layer_``, ``layer_names_``,
``as_tensor``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = [
    "PREDICT_BATCH",
    "check_fitted",
    "class_index",
    "fitted_device",
    "head_outputs",
    "inputs",
]

PREDICT_BATCH = 1024
"""Samples per forward pass when only reading the head's outputs."""


def check_fitted(clf: Any) -> None:
    task_attr = "target_scale_" if hasattr(clf, "target_mean_") else "classes_"  # a regressor
    missing = [
        a
        for a in ("model_", task_attr, "n_layers_", "tokens_per_layer_", "layer_names_")
        if not hasattr(clf, a)
    ]
    if missing or not hasattr(clf, "as_tensor"):
        raise ConfigError(
            f"{type(clf).__name__} is not fitted (missing {', '.join(missing) or 'as_tensor'}): "
            "call fit(X, y) first"
        )


def fitted_device(clf: Any) -> torch.device:
    dev = getattr(clf, "device_", None)
    if dev is not None:
        return torch.device(dev)
    try:
        return next(clf.model_.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def inputs(clf: Any, X: Any) -> Tensor:
    """The raw model input ``(N, T, D)`` float32 on CPU, checked against the fitted layout."""
    check_fitted(clf)
    x = clf.as_tensor(X)
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    x = x.detach().to("cpu", torch.float32)
    n_tokens = int(clf.n_layers_) * int(clf.tokens_per_layer_)
    if x.ndim != 3 or x.shape[1] != n_tokens:
        raise DataError(
            f"expected input of shape (N, {n_tokens}, D) from clf.as_tensor(X), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise DataError("X is empty")
    return x


def class_index(clf: Any, labels: Any, n: int, what: str = "y") -> np.ndarray:
    """Map class labels to column indices of the model's logits: ``(N,)`` int64."""
    classes = np.asarray(clf.classes_)
    lab = np.asarray(labels)
    if lab.ndim == 0:
        lab = np.full(n, lab.item())
    if lab.shape != (n,):
        raise DataError(f"{what} must have shape ({n},), got {lab.shape}")
    lookup = {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
    out = np.empty(n, dtype=np.int64)
    for value in np.unique(lab):
        key = value.item() if hasattr(value, "item") else value
        if key not in lookup:
            raise DataError(
                f"{what} contains label {key!r} that is not one of clf.classes_ {classes.tolist()}"
            )
        out[lab == value] = lookup[key]
    return out


def head_outputs(clf: Any, x: Tensor, attr: str) -> list[Tensor | None]:
    """Run ``clf.model_`` over ``x (N, T, D)`` in batches and collect ``ProbeOutput.<attr>``."""
    model, device = clf.model_, fitted_device(clf)
    out: list[Tensor | None] = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], PREDICT_BATCH):
            value = getattr(model(x[start : start + PREDICT_BATCH].to(device)), attr)
            out.append(None if value is None else value.detach().float().cpu())
    return out
