"""Out-of-core training of a :class:`~probekit.estimator.ProbeClassifier` on a cache larger than
its memory budget: the same validation split, selection and refit as in memory, reading rows
from the memory-mapped shards instead of one ``(N, T, D)`` tensor.

* Normalisation statistics: one streamed pass (:func:`~probekit.estimator.rows.stream_stats`).
* ``"linear"`` with L-BFGS: one layer at a time. Each layer's train block ``(N_train, P * D)``
  is read, normalised and solved, its validation block scored, then (refit) its whole block
  ``(N, P * D)`` solved again from that start: the same per-layer solves as in memory. Needs
  one layer's block to fit in a third of the budget (the block, the solver's temporaries); when it does not, the head is trained by
  minibatches (its AdamW recipe, ``solver="adamw"``) like the other heads, with a warning.
* Every other head: the vectorised grid loop of :func:`~probekit.train.train_grid`, whose
  ``X[idx]`` gathers the minibatch's rows from disk (:class:`NormalisedRows`): the same
  batches, in the same order, as in memory.

Shapes: ``N`` samples, ``T = L * P`` tokens, ``D`` features, ``C`` classes.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from .._utils.transfer import host_empty, to_device
from ..cache.rows import CacheRows, stream_stats
from ..errors import DataError
from ..probes import get_probe_class
from ..train import TrainConfig, fit_linear_probes, selection_accuracy, stratified_split
from ..train.linear import LinearSolution
from .inputs import encode_labels
from .model import FeatureNorm, _linear_rows, finish_linear

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import ProbeClassifier

__all__ = ["NormalisedRows", "fit_from_stream"]


class NormalisedRows:
    """Tensor-like ``(N, T, D)`` view of normalised cache rows for the training loop:
    ``X[idx]`` reads the rows ``idx`` from disk (into a pinned buffer when ``device`` is CUDA),
    copies them to ``device`` (non-blocking) and normalises them there.

    Args:
        rows: the cache selection.
        norm: the fitted input normalisation (moved to ``device``).
        device: where batches go.
    """

    def __init__(self, rows: CacheRows, norm: FeatureNorm, device: torch.device) -> None:
        self.rows = rows
        self.norm = norm.to(device)
        self.device = torch.device(device)
        self.shape = torch.Size((rows.n, rows.n_tokens, rows.width))
        self.dtype = torch.float32

    def to(self, device: Any = None, dtype: Any = None) -> NormalisedRows:
        """Batches already come as float32 on ``self.device``; a move elsewhere is a bug."""
        if device is not None and torch.device(device) != self.device:
            raise ValueError(f"NormalisedRows lives on {self.device}, not {device}")
        return self

    def __len__(self) -> int:
        return self.rows.n

    @torch.no_grad()
    def __getitem__(self, idx: Any) -> Tensor:
        if isinstance(idx, Tensor):
            idx = idx.cpu().numpy()
        elif isinstance(idx, slice):
            idx = np.arange(self.rows.n)[idx]
        idx = np.asarray(idx).reshape(-1)
        buf = host_empty(
            (idx.size, self.rows.n_tokens, self.rows.width), torch.float32, self.device
        )
        x = self.rows.gather(idx, out=buf)
        return self.norm(to_device(x, self.device))


def _chunk_rows(rows: CacheRows, budget: int, share: float = 0.25) -> int:
    """Rows per chunk so that a chunk (and its float64 copy) takes ``share`` of the budget."""
    return int(max(1, min(8192, budget * share // (3 * rows.row_bytes))))


def fit_from_stream(
    clf: ProbeClassifier,
    cache: Any,
    y: Any,
    s: TrainConfig,
    variants: list[dict[str, Any]],
    seed: int,
    device: torch.device,
    budget: int,
) -> ProbeClassifier:
    """Fit ``clf`` on ``cache`` (a FeatureCache or CacheSubset) within about ``budget`` bytes.

    Raises:
        DataError: non-finite features, bad labels.
    """
    info = clf._cache_layout(cache)
    rows = CacheRows(cache, info["sel"], info["pools"])
    try:
        if rows.n == 0:
            raise DataError("X has no samples")
        clf.classes_, y_idx = encode_labels(y, rows.n)
        s = clf._resolve_targets(s)
        clf._set_layout(info, None)
        clf.device_ = device
        chunk = _chunk_rows(rows, budget)
        mean, std, finite = stream_stats(rows, chunk)
        if not finite:
            raise DataError("X contains NaN or infinity")
        norm = FeatureNorm(get_probe_class(clf.head).input_norm, rows.n_tokens, rows.width)
        if norm.mode == "standardize":
            norm.mean.copy_(mean.float())
            norm.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)).float())
        raw_mean = mean.float()
        y_t = torch.from_numpy(y_idx)
        layer_bytes = rows.n * len(info["pools"]) * rows.width * 4
        if clf.head == "linear" and s.solver == "lbfgs":
            if 3 * layer_bytes <= budget:
                head, kwargs = _fit_linear_blocks(
                    clf, rows, norm, y_t, s, variants[0], seed, device
                )
                clf._finish(norm, head, kwargs, raw_mean)
                return clf
            warnings.warn(
                f"one layer's block ({layer_bytes / 1e9:.2f} GB) does not fit a third of the memory "
                f"budget ({budget / 1e9:.2f} GB): the linear head is trained by minibatches "
                "(solver='adamw') instead of L-BFGS",
                stacklevel=3,
            )
            s = dataclasses.replace(s, solver="adamw")
        if get_probe_class(clf.head).closed_form:  # one layer's block at a time
            from .closed import fit_closed_form

            norm_dev = norm.to(device)

            def block(layer: int, idx: np.ndarray) -> Tensor:
                return _layer_block(rows, norm_dev, layer, idx, device)

            head, kwargs = fit_closed_form(clf, block, rows.n, y_t, s, variants, seed, device)
            clf._finish(norm.cpu(), head, kwargs, raw_mean)
            return clf
        eval_rows = max(1, min(s.eval_batch_size, _chunk_rows(rows, budget)))
        s = dataclasses.replace(s, eval_batch_size=eval_rows)
        source = NormalisedRows(rows, norm, device)
        head, kwargs = clf._fit_grid(
            source,  # type: ignore[arg-type]  # a Tensor-like (N, T, D): X[idx], shape, to()
            y_t,
            len(clf.classes_),
            s,
            variants,
            seed,
            device,
        )
        clf._finish(norm.cpu(), head, kwargs, raw_mean)
        return clf
    finally:
        rows.close()


def _layer_block(
    rows: CacheRows, norm: FeatureNorm, layer: int, idx: np.ndarray, device: torch.device
) -> Tensor:
    """Normalised features of one layer for the samples ``idx``: ``(n, P * D)`` on ``device``."""
    p = len(rows.pools)
    buf = host_empty((idx.size, p, rows.width), torch.float32, device)
    x = to_device(rows.gather(idx, layers=[layer], out=buf), device)
    tokens = slice(layer * p, (layer + 1) * p)
    if norm.mode == "standardize":  # in place: the same arithmetic as norm(x), no second copy
        x = x.sub_(norm.mean[tokens]).div_(norm.std[tokens])
    else:
        x = norm(x, tokens)
    return x.reshape(idx.size, p * rows.width)


def _stack(parts: list[LinearSolution]) -> LinearSolution:
    return LinearSolution(
        torch.cat([q.weight for q in parts]),
        torch.cat([q.bias for q in parts]),
        np.concatenate([q.n_iter for q in parts]),
        np.concatenate([q.loss for q in parts]),
    )


def _fit_linear_blocks(
    clf: ProbeClassifier,
    rows: CacheRows,
    norm: FeatureNorm,
    y: Tensor,
    s: TrainConfig,
    variant: dict[str, Any],
    seed: int,
    device: torch.device,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Per-layer L-BFGS, one layer's block in memory at a time (as ``_fit_linear`` in memory)."""
    n_layers = len(rows.sel)
    norm = norm.to(device)
    y = y.to(device)
    opts: dict[str, Any] = {
        "n_classes": len(clf.classes_),
        "C": float(s.C),
        "class_weight": s.class_weight,
        "max_iter": int(s.max_iter),
    }
    clf.layer_scores_, clf.selected_layer_, clf.best_score_ = None, n_layers - 1, None
    search: list[LinearSolution] = []
    refit: list[LinearSolution] = []
    acc = np.zeros(n_layers)
    validate = s.val_size > 0
    if validate:
        groups = getattr(clf, "_groups", None)
        tr, va = stratified_split(y.cpu().numpy(), float(s.val_size), seed, groups)
    all_idx = np.arange(rows.n)
    for layer in range(n_layers):
        sol = None
        if validate:
            x = _layer_block(rows, norm, layer, tr, device)
            sol = fit_linear_probes(x[None], y[torch.from_numpy(tr).to(device)], **opts)
            del x
            x = _layer_block(rows, norm, layer, va, device)
            pred = (x @ sol.weight[0] + sol.bias[0]).argmax(-1)
            yv = y[torch.from_numpy(va).to(device)]
            acc[layer] = float(selection_accuracy(pred, yv, len(clf.classes_), s.class_weight))
            del x
            search.append(sol)
        if sol is None or s.refit:
            x = _layer_block(rows, norm, layer, all_idx, device)
            refit.append(fit_linear_probes(x[None], y, init=sol, **opts))
            del x
    history: list[dict[str, Any]] = []
    if validate:
        clf.layer_scores_ = acc
        clf.selected_layer_ = int(np.argmax(acc))
        clf.best_score_ = float(acc[clf.selected_layer_])
        history += _linear_rows("search", _stack(search), acc)
    final = _stack(refit) if refit else _stack(search)
    if refit:
        history += _linear_rows("refit", final, None)
    return finish_linear(clf, s, variant, final, history)
