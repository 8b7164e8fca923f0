"""Minimum description length probing with the online code (Voita & Titov, 2020).

::

    table = probekit.mdl(cache)                      # per layer, linear probes, labels from the cache
    table = probekit.mdl(X, y, layers=[0, 6])        # X (N, L, D)
    table.compression                                # (L,) uniform / online code length
    table.to_dict()                                  # JSON-ready, one row per layer

How many bits does it take to transmit the labels ``y`` given the representations ``x``, if
sender and receiver agree on a probe family and a training procedure? The online (prequential)
code splits the ``N`` samples, after a seeded shuffle, into blocks ending at ``t_1 < ... <
t_S = N`` (by default 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25, 50 and 100 % of ``N``).
The first ``t_1`` labels are sent with the uniform code (``log2 C`` bits each); every later
block ``(t_i, t_{i+1}]`` is sent with a probe trained on the samples ``1..t_i`` the receiver
already has::

    online = t_1 log2 C + sum_i sum_{j in (t_i, t_{i+1}]} -log2 p_i(y_j | x_j)
    uniform = N log2 C,        compression = uniform / online

A compression near 1 means the probe finds nothing to exploit; the larger, the more (and the
more easily) the representation gives the labels away.

Probes are :class:`~probekit.estimator.ProbeClassifier` fits. With the ``"linear"`` head every
layer gets its own logistic regression from one call (all layers at once), and its inverse
regularisation ``C`` is chosen per block and per layer from a grid, on a seeded 20 % hold-out of
the samples already transmitted (the receiver can repeat the choice, so it needs no extra bits);
then the probe is refitted on all of them. Without this choice a weakly regularised probe
trained on a few samples is overconfident and the code gets longer than the uniform one on
labels it cannot predict. Other heads (fusion probes) are fitted on all selected layers at once
and give one row, the fused probe.

Two conventions that the paper leaves open: a block whose transmitted prefix holds a single
class is sent with the uniform code (no probe can be trained), and the probe's probabilities
are mixed with the uniform distribution with weight ``eps`` (default ``1e-3``), so that a class
not yet seen costs a finite number of bits; this adds at most ``-log2(1 - eps)`` (0.0014) bits
per label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..estimator import ProbeClassifier
from ..models.layers import resolve_indices
from ..probes import list_probes

__all__ = ["MDL_FRACTIONS", "MDLResult", "mdl", "online_block_ends"]

#: Block ends of Voita & Titov (2020), as fractions of the samples.
MDL_FRACTIONS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
#: Default grid of the linear probe's inverse regularisation strength.
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class MDLResult:
    """Online code lengths per layer.

    Attributes:
        layers: ``L`` layer names (one ``"fused (<head>)"`` row for fusion heads).
        online_bits: ``(L,)`` online code length of the labels, in bits.
        uniform_bits: ``N log2 C``, the uniform code length, in bits.
        compression: ``(L,)`` ``uniform_bits / online_bits``.
        block_ends: the ``t_i`` (sample counts) at which blocks end.
        block_bits: ``(L, S)`` bits spent on each block (block 0 is the uniform one).
        chosen_C: ``(S - 1, L)`` the linear probe's ``C`` used for each later block (NaN where
            the block was sent uniformly, or for non-linear heads).
        n_samples: ``N``. n_classes: ``C``. head: the probe head. seed: the shuffle seed.
    """

    layers: list[str]
    online_bits: np.ndarray
    uniform_bits: float
    compression: np.ndarray
    block_ends: list[int]
    block_bits: np.ndarray
    chosen_C: np.ndarray
    n_samples: int
    n_classes: int
    head: str
    seed: int
    eps: float = field(default=1e-3)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per layer: layer, online_bits, uniform_bits, compression."""
        return [
            {
                "layer": name,
                "online_bits": float(self.online_bits[k]),
                "uniform_bits": float(self.uniform_bits),
                "compression": float(self.compression[k]),
            }
            for k, name in enumerate(self.layers)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the settings and :meth:`rows` (for ``metrics.json``)."""
        return {
            "method": "online code (Voita & Titov, 2020)",
            "head": self.head,
            "n_samples": self.n_samples,
            "n_classes": self.n_classes,
            "seed": self.seed,
            "eps": self.eps,
            "block_ends": list(self.block_ends),
            "layers": self.rows(),
            "block_bits": self.block_bits.tolist(),
        }

    @property
    def best_layer(self) -> int:
        """Index of the layer with the shortest online code."""
        return int(np.argmin(self.online_bits))


def online_block_ends(n: int, fractions: Sequence[float] = MDL_FRACTIONS) -> list[int]:
    """Sample counts ``t_i = max(1, floor(f_i N))`` (duplicates dropped), the last one ``N``.

    Raises:
        ConfigError: fractions not increasing in ``(0, 1]`` or not ending at 1.
    """
    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f <= 1 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise ConfigError(f"fractions must increase within (0, 1], got {list(fractions)}")
    if fr[-1] != 1.0:
        raise ConfigError(f"the last fraction must be 1.0 (all samples), got {fr[-1]}")
    ends: list[int] = []
    for f in fr:
        t = n if f == 1.0 else max(1, int(math.floor(f * n)))
        if not ends or t > ends[-1]:
            ends.append(t)
    return ends


def _bits(proba: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """``-log2 p(y)`` per sample and layer: ``proba`` ``(n, L, C)`` -> ``(n, L)``."""
    n_classes = proba.shape[-1]
    p = proba[np.arange(len(y)), :, y]  # (n, L)
    return -np.log2((1.0 - eps) * p + eps / n_classes)


class _Data:
    """The features as one indexable object: ``(N, L, D)`` or ``(N, L, P, D)`` tensor (``P``
    poolings per layer: ``tokens_per_layer``) or a list of ``(N, D_l)``."""

    def __init__(self, X: Any, y: Any, layers: Any, pooling: Any) -> None:
        self.tokens_per_layer = 1
        if hasattr(X, "batches") and hasattr(X, "layer_names"):  # a FeatureCache
            if pooling is None:
                pools = ["cls"] if "cls" in X.poolings else list(X.poolings)
            else:
                pools = pooling.split("+") if isinstance(pooling, str) else list(pooling)
            bad = [p for p in pools if p not in X.poolings]
            if bad:
                raise ConfigError(f"pooling {bad} was not recorded; recorded: {X.poolings}")
            sel = _resolve(layers, len(X.layer_names), X.layer_names)
            self.x: Any = X.load(layers=sel, pooling=pools, dtype=torch.float32)
            self.tokens_per_layer = len(pools)
            self.names = [str(X.layer_names[j]) for j in sel]
            y = np.asarray(X.labels) if y is None else y
        elif isinstance(X, (list, tuple)):
            arrays = [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in X]
            sel = _resolve(layers, len(arrays), None)
            self.x = [arrays[j] for j in sel]
            self.names = [f"layer {j}" for j in sel]
        else:
            t = torch.as_tensor(np.asarray(X) if not isinstance(X, Tensor) else X).float()
            t = t[:, None, :] if t.ndim == 2 else t
            if t.ndim not in (3, 4):
                raise DataError(f"X must be a cache, (N, L, P, D), (N, L, D), (N, D) or a list of "
                                f"(N, D_l); got shape {tuple(t.shape)}")  # fmt: skip
            if t.ndim == 4:  # (N, L, P, D): P poolings of each layer
                self.tokens_per_layer = int(t.shape[2])
            sel = _resolve(layers, t.shape[1], None)
            self.x = t[:, sel]
            self.names = [f"layer {j}" for j in sel]
        if y is None:
            raise DataError("y is required unless X is a FeatureCache")
        y = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y).reshape(-1)
        n = len(self.x[0]) if isinstance(self.x, list) else self.x.shape[0]
        if len(y) != n:
            raise DataError(f"X has {n} samples but y has {len(y)}")
        self.classes, self.y = np.unique(y, return_inverse=True)
        self.n = n

    def rows(self, idx: np.ndarray) -> Any:
        t = torch.from_numpy(idx)
        return [a[t] for a in self.x] if isinstance(self.x, list) else self.x[t]


def _resolve(layers: Any, n: int, names: Sequence[str] | None) -> list[int]:
    try:
        return resolve_indices(layers, n, names)
    except (ValueError, IndexError, TypeError) as e:
        raise ConfigError(f"bad layers={layers!r}: {e}") from e


def _proba(clf: ProbeClassifier, x: Any, n_classes: int, per_layer: bool) -> np.ndarray:
    """``(n, L, C)`` probabilities over all ``C`` classes (classes unseen in training get 0)."""
    with torch.no_grad():
        out = clf.model_(clf.as_tensor(x).to(clf.device_))
    logits = out.layer_logits if per_layer else out.logits[:, None, :]
    if logits is None:
        raise ConfigError(f"head {clf.head!r} has no per-layer logits")
    p = logits.float().softmax(-1).cpu().numpy().astype(np.float64)
    full = np.zeros((p.shape[0], p.shape[1], n_classes))
    full[:, :, np.asarray(clf.classes_, dtype=np.int64)] = p
    return full


def mdl(
    cache_or_X: Any,
    y: Any = None,
    layers: Any = None,
    head: str = "linear",
    seed: int = 0,
    *,
    pooling: str | Sequence[str] | None = None,
    fractions: Sequence[float] = MDL_FRACTIONS,
    C: float | Sequence[float] = C_GRID,
    eps: float = 1e-3,
    probe_params: dict[str, Any] | None = None,
    device: str | None = None,
) -> MDLResult:
    """Online code length of the labels given each layer (Voita & Titov, 2020).

    Args:
        cache_or_X: a FeatureCache, or features ``(N, L, P, D)`` (a layer's ``P`` poolings
            read together) / ``(N, L, D)`` / ``(N, D)`` / a list of ``(N, D_l)``. Pass the training split only: the code is computed on all of it.
        y: ``(N,)`` labels; for a cache, defaults to its labels.
        layers: timm-style layer selection (``None`` all, int ``k`` the last ``k``, indices or
            names).
        head: probe head. ``"linear"``: one row per layer; any other registered head: one row
            for the fused probe over the selected layers.
        seed: seed of the sample shuffle, the ``C`` hold-out split and the probes.
        pooling: cache pooling(s) to use; default ``"cls"`` if recorded, else all.
        fractions: block ends as fractions of ``N`` (increasing, ending at 1.0).
        C: the linear head's inverse L2 strength: one value, or a grid to choose from per
            block and layer on a 20 % hold-out of the transmitted samples.
        eps: weight of the uniform distribution mixed into the probe's probabilities.
        probe_params: extra :class:`ProbeClassifier` arguments (``epochs``, ``lr``,
            ``max_iter`` ...). For non-linear heads the defaults are one configuration
            (``lr=1e-2``, ``weight_decay=1e-4``, ``epochs=10``) without a validation split.
        device: where probes train (default: CUDA when available).

    Returns:
        An :class:`MDLResult` (``.rows()`` / ``.to_dict()`` give the table).

    Raises:
        ConfigError: bad fractions, ``C``, ``eps`` or head settings.
        DataError: bad features or labels (fewer than 2 classes, length mismatch).
    """
    values: Sequence[Any] = list(C) if isinstance(C, (list, tuple, np.ndarray)) else [C]
    grid = [float(c) for c in values]
    if not grid or any(not (math.isfinite(c) and c > 0) for c in grid):
        raise ConfigError(f"C must be a positive number or a list of them, got {C!r}")
    if not 0 < float(eps) < 1:
        raise ConfigError(f"eps must be in (0, 1), got {eps!r}")
    params = dict(probe_params or {})
    per_layer = head == "linear"
    if not per_layer:
        params = {"val_size": 0.0, "lr": 1e-2, "weight_decay": 1e-4, "epochs": 10, **params}
    if per_layer and "C" in params:
        raise ConfigError("give the linear head's C through mdl(C=...), not probe_params")
    base = {"class_weight": None, "device": device, "val_size": 0.0, **params}
    base.update(head=head, random_state=seed, tokens_per_layer=None)
    if head not in list_probes():
        raise ConfigError(f"unknown probe head {head!r}; choose from {', '.join(list_probes())}")
    data = _Data(cache_or_X, y, layers, pooling)
    n, n_classes = data.n, len(data.classes)
    if n_classes < 2:
        raise DataError(f"y has a single class {data.classes.tolist()}; MDL needs at least 2")
    ends = online_block_ends(n, fractions)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    y_all = data.y[order]
    n_rows = len(data.names) if per_layer else 1
    names = list(data.names) if per_layer else [f"fused ({head})"]
    block_bits = np.zeros((n_rows, len(ends)))
    chosen = np.full((len(ends) - 1, n_rows), np.nan)
    block_bits[:, 0] = ends[0] * math.log2(n_classes)

    def fit(idx: np.ndarray, c: float | None) -> ProbeClassifier:
        kw = dict(base)
        if c is not None:
            kw["C"] = c
        if data.tokens_per_layer > 1:
            kw["tokens_per_layer"] = data.tokens_per_layer
        return ProbeClassifier(**kw).fit(data.rows(order[idx]), y_all[idx])

    for b in range(1, len(ends)):
        prefix = np.arange(ends[b - 1])
        block = np.arange(ends[b - 1], ends[b])
        if len(np.unique(y_all[prefix])) < 2:
            block_bits[:, b] = len(block) * math.log2(n_classes)
            continue
        per_row_c: np.ndarray = np.full(n_rows, grid[0])
        if per_layer and len(grid) > 1:
            per_row_c = _choose_c(fit, data, order, y_all, prefix, grid, n_classes, eps, seed, b)
        for c in sorted(set(per_row_c.tolist())) if per_layer else [None]:
            clf = fit(prefix, c)
            bits = _bits(_proba(clf, data.rows(order[block]), n_classes, per_layer), y_all[block],
                         eps).sum(0)  # fmt: skip
            rows = np.flatnonzero(per_row_c == c) if per_layer else np.arange(n_rows)
            block_bits[rows, b] = bits[rows]
        if per_layer:
            chosen[b - 1] = per_row_c
    online = block_bits.sum(1)
    uniform = n * math.log2(n_classes)
    return MDLResult(
        layers=names,
        online_bits=online,
        uniform_bits=uniform,
        compression=uniform / online,
        block_ends=ends,
        block_bits=block_bits,
        chosen_C=chosen,
        n_samples=n,
        n_classes=n_classes,
        head=head,
        seed=int(seed),
        eps=float(eps),
    )


def _choose_c(
    fit: Any,
    data: _Data,
    order: np.ndarray,
    y_all: np.ndarray,
    prefix: np.ndarray,
    grid: list[float],
    n_classes: int,
    eps: float,
    seed: int,
    block: int,
) -> np.ndarray:
    """Per layer, the ``C`` of ``grid`` whose probe codes a 20 % hold-out of ``prefix`` best.

    Falls back to the grid value nearest 1 when the prefix is too small to hold some out.
    """
    default = grid[int(np.argmin([abs(math.log(c)) for c in grid]))]
    n_rows = len(data.names)
    rng = np.random.default_rng([seed, block])
    perm = rng.permutation(prefix)
    n_val = max(1, int(round(0.2 * len(prefix))))
    val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if len(tr) < 2 or len(np.unique(y_all[tr])) < 2:
        return np.full(n_rows, default)
    scores = np.stack([
        _bits(_proba(fit(tr, c), data.rows(order[val]), n_classes, True), y_all[val], eps).sum(0)
        for c in grid
    ])  # fmt: skip
    return np.asarray(grid)[scores.argmin(0)]
