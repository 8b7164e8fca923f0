"""Fitting a closed-form head (``closed_form = True``, e.g. ``diff-means``) in a classifier.

Each layer's probe is computed from that layer's train features alone (``head.fit_layer``), one
layer at a time, so the same code serves an in-memory fit (the layer's columns of ``(N, T, D)``)
and a streamed one (the layer's block read from the cache). As the ``linear`` head: with a
validation split, every layer (and every head-parameter variant) is fitted on the train part
and scored by balanced accuracy on the validation part, the best layer is selected, and
(``refit``) the chosen variant is fitted again on all rows.

Shapes: ``N`` rows, ``F = P * D`` features of one layer, ``L`` layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..probes import create_probe
from ..train import TrainConfig, class_weights, selection_accuracy, stratified_split
from .model import _set_selected_layer

__all__ = ["fit_closed_form"]

Block = Callable[[int, np.ndarray], Tensor]
"""``(layer, rows) -> (len(rows), F)`` normalised features of one layer on the fit's device."""


def _fit_all(
    head: Any, block: Block, rows: np.ndarray, y: Tensor, n_layers: int, class_weight: Any
) -> None:
    """Fit every layer of ``head`` on ``rows``; the class priors are ``class weight * count``
    (``"balanced"``: equal)."""
    yr = y[torch.from_numpy(rows).to(y.device)]
    counts = torch.bincount(yr, minlength=head.n_classes).double()
    prior = class_weights(yr, head.n_classes, class_weight).double() * counts
    for layer in range(n_layers):
        head.fit_layer(layer, block(layer, rows), yr, prior)


def fit_closed_form(
    clf: Any,
    block: Block,
    n_rows: int,
    y: Tensor,
    s: TrainConfig,
    variants: list[dict[str, Any]],
    seed: int,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fit ``clf.head`` in closed form on ``n_rows`` rows with class indices ``y`` ``(N,)``.

    Sets ``layer_scores_`` ``(L,)`` (validation balanced accuracy, ``None`` without validation),
    ``selected_layer_``, ``best_score_``, ``best_params_``, ``history_`` and the other fitted
    attributes a fit leaves.

    Returns:
        ``(head, kwargs)``: the fitted head (on the CPU) and its chosen head parameters.
    """
    n_layers, n_classes = clf.n_layers_, len(clf.classes_)
    y = y.to(device)
    all_rows = np.arange(n_rows)
    history: list[dict[str, Any]] = []
    clf.layer_scores_, clf.selected_layer_, clf.best_score_ = None, n_layers - 1, None
    chosen, head = variants[0], None
    if s.val_size > 0:
        groups = getattr(clf, "_groups", None)
        tr, va = stratified_split(clf._strata(y), float(s.val_size), seed, groups)
        y_va = y[torch.from_numpy(va).to(device)]
        best = -np.inf
        for variant in variants:
            cand: Any = create_probe(clf.head, **clf._head_kwargs(variant)).to(device)
            _fit_all(cand, block, tr, y, n_layers, s.class_weight)
            with torch.no_grad():
                pred = torch.stack(
                    [cand.layer_logits_of(j, block(j, va)).argmax(-1) for j in range(n_layers)]
                )  # (L, n_val)
            acc = selection_accuracy(pred, y_va, n_classes, s.class_weight).cpu().numpy()
            history += [
                {"phase": "search", **variant, "layer": j, "val_balanced_accuracy": float(a)}
                for j, a in enumerate(acc)
            ]
            if float(acc.max()) > best:
                best, chosen, head = float(acc.max()), variant, cand
                clf.layer_scores_ = acc
        assert clf.layer_scores_ is not None
        clf.selected_layer_ = int(np.argmax(clf.layer_scores_))
        clf.best_score_ = float(clf.layer_scores_[clf.selected_layer_])
    if head is None or s.refit:
        head = create_probe(clf.head, **clf._head_kwargs(chosen)).to(device)
        _fit_all(head, block, all_rows, y, n_layers, s.class_weight)
        history.append({"phase": "refit", **chosen})
    _set_selected_layer(head, clf.selected_layer_)
    clf.best_params_ = {"solver": "closed-form", **chosen}
    clf.history_ = history
    clf.best_epoch_ = None
    clf.grid_scores_ = None
    clf.grid_configs_ = None
    clf.n_iter_ = np.ones(n_layers, dtype=np.int64)  # one closed-form pass per layer
    return head.cpu(), dict(chosen)
