"""``ProbeClassifier``: a probe head behind the scikit-learn estimator contract.

::

    clf = ProbeClassifier(head="linear").fit(X, y)      # X (N, T, D), (N, D), [(N, D_l)] or a cache
    clf.predict(X); clf.predict_proba(X); clf.score(X, y)
    clf.layer_scores_        # (L,) validation accuracy of every layer's probe
    clf.layer_weights(X)     # (N, L) the head's own attribution (attention heads)
    clf.save("probe/"); ProbeClassifier.load("probe/")

``model_`` maps RAW features ``(B, T, D)`` to a :class:`~probekit.probes.base.ProbeOutput`:
the input normalisation the head asks for (``input_norm``) is part of it, as buffers.

Every hyper-parameter left at ``None`` takes the head's default (:data:`HEAD_DEFAULTS`):
the ALF recipe for ``"alf"``, the LAYA recipe for ``"laya"``, and for ``"linear"`` full-batch
L-BFGS with scikit-learn's ``LogisticRegression(C=1.0)`` objective.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn

from .layers import resolve_indices
from .probes import create_probe, get_probe_class, head_params
from .probes.base import ProbeOutput
from .train import (
    GridResult,
    TrainConfig,
    accuracy,
    fit_linear_probes,
    stratified_split,
    train_grid,
    train_stream,
)

__all__ = ["HEAD_DEFAULTS", "FeatureNorm", "ProbeClassifier", "ProbeModel"]

FORMAT_VERSION = 1

_MINIBATCH: dict[str, Any] = {
    "solver": "adamw",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "epochs": 50,
    "min_steps": 0,
    "batch_size": 256,
    "min_batches": 1,
    "val_size": 0.1,
    "patience": 5,
    "refit": False,
    "jitter": False,
    "schedule": "cosine",
}

HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "default": dict(_MINIBATCH),
    # scikit-learn's LogisticRegression(C=1.0) per layer; the minibatch keys are used with
    # solver="adamw" (e.g. when streaming from a cache).
    "linear": {
        **_MINIBATCH,
        "solver": "lbfgs",
        "C": 1.0,
        "max_iter": 100,
        "val_size": 0.2,
        "refit": True,
        "lr": 1e-2,
        "weight_decay": 0.0,
        "patience": 10,
        "epochs": 100,
    },
    # ALF recipe (Ciernik et al.): AdamW, cosine to 1e-6, 40 epochs and >= 1000 steps, batch
    # 2048 with >= 5 batches, jitter, lr x wd grid on a stratified 80/20 split, refit on all.
    "alf": {
        **_MINIBATCH,
        "lr": [1e-1, 1e-2, 1e-3],
        "weight_decay": [float(w) for w in np.logspace(-6, 0, 7)],
        "epochs": 40,
        "min_steps": 1000,
        "batch_size": 2048,
        "min_batches": 5,
        "val_size": 0.2,
        "patience": None,
        "refit": True,
        "jitter": True,
    },
    # LAYA recipe (Vessio): Adam 3e-4, batch 128, <= 50 epochs, early stopping on a 10%
    # validation split (patience 5, best weights restored), no refit.
    "laya": {
        **_MINIBATCH,
        "solver": "adam",
        "lr": 3e-4,
        "weight_decay": 0.0,
        "batch_size": 128,
        "epochs": 50,
        "patience": 5,
        "val_size": 0.1,
        "schedule": "constant",
    },
}

_OVERRIDABLE = (
    "lr", "weight_decay", "C", "epochs", "batch_size", "val_size", "patience", "refit", "solver",
    "max_iter", "jitter",
)  # fmt: skip
"""Parameters whose ``None`` means "the head's default"."""

_JITTER = (0.5, 0.05)  # (probability per sample, std) of the ALF train-time noise


# --------------------------------------------------------------------------- model_


class FeatureNorm(nn.Module):
    """The head's input normalisation, fitted on the training features.

    Modes: ``"standardize"`` ``(x - mean) / std`` per (token, feature) with train-split mean
    and population std (std of constant features, zero padding included, set to 1, so padding
    stays zero); ``"l2"`` each token divided by its L2 norm; ``"none"``.

    Args:
        mode: one of the modes above.
        n_tokens: T.
        dim: D.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mode: str, n_tokens: int, dim: int) -> None:
        super().__init__()
        if mode not in ("standardize", "l2", "none"):
            raise ValueError(f"input_norm must be 'standardize', 'l2' or 'none', got {mode!r}")
        self.mode = mode
        if mode == "standardize":
            self.register_buffer("mean", torch.zeros(n_tokens, dim))
            self.register_buffer("std", torch.ones(n_tokens, dim))

    def forward(self, x: Tensor, tokens: slice | None = None) -> Tensor:
        """Normalise ``x`` ``(B, T, D)`` (or the token range ``tokens`` of it, ``(B, t, D)``)."""
        if self.mode == "standardize":
            sl = tokens if tokens is not None else slice(None)
            return (x - self.mean[sl]) / self.std[sl]
        if self.mode == "l2":
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class ProbeModel(nn.Module):
    """Normalisation + head: maps RAW features ``(B, T, D)`` to a ``ProbeOutput``.

    Attributes:
        norm: the :class:`FeatureNorm`.
        head: the probe head.
        feature_mean: ``(T, D)`` raw train-split mean (a baseline for attribution).
    """

    feature_mean: Tensor

    def __init__(self, norm: FeatureNorm, head: nn.Module, feature_mean: Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.head = head
        self.register_buffer("feature_mean", feature_mean.detach().clone().float())

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)`` raw features. Returns the head's ``ProbeOutput``."""
        return self.head(self.norm(x))


# --------------------------------------------------------------------------- input handling


def _is_cache(X: Any) -> bool:
    return all(hasattr(X, a) for a in ("load", "layer_names", "labels", "dims"))


def _is_layer_list(X: Any) -> bool:
    return (
        isinstance(X, (list, tuple))
        and len(X) > 0
        and all(isinstance(a, (np.ndarray, Tensor)) and a.ndim == 2 for a in X)
    )


def _to_float_tensor(a: Any) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach().to("cpu", torch.float32)
    arr = np.asarray(a)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"features must be numeric, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _pad_layers(arrays: Sequence[Any]) -> tuple[Tensor, tuple[int, ...]]:
    """``[(N, D_l)]`` -> ``(N, L, max D)`` zero-padded, and the widths ``(L,)``."""
    ts = [_to_float_tensor(a) for a in arrays]
    n = ts[0].shape[0]
    if any(t.shape[0] != n for t in ts):
        raise ValueError(
            f"per-layer arrays have different numbers of samples: {[t.shape[0] for t in ts]}"
        )
    dims = tuple(int(t.shape[1]) for t in ts)
    out = torch.zeros(n, len(ts), max(dims))
    for i, t in enumerate(ts):
        out[:, i, : dims[i]] = t
    return out, dims


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in config.json")


# --------------------------------------------------------------------------- the estimator


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """A probe head over cached layer features, with the scikit-learn estimator contract.

    Args:
        head: registered head name (``probekit.probes.list_probes()``).
        head_params: the head's own keyword arguments (``{"tau": 1.5}``); a list value makes
            that argument a grid axis.
        lr: learning rate, or a list (grid axis). ``None``: head default.
        weight_decay: weight decay, or a list (grid axis). ``None``: head default.
        dropout: the head's ``dropout`` argument, or a list (grid axis). ``None``: head default.
        C: inverse L2 strength of the ``"linear"`` head's L-BFGS solver, as scikit-learn's.
        epochs: epochs of minibatch training. The ALF default (40) is raised to reach 1000
            steps; an explicit value is used as is.
        batch_size: minibatch size (ALF: shrunk so there are at least 5 batches).
        val_size: stratified validation fraction used to pick configs, layers and epochs;
            0 disables validation.
        patience: early stopping patience in epochs (``None`` in the head defaults = off).
        refit: retrain the chosen config on all samples after selection.
        solver: ``"lbfgs"`` (``"linear"`` only), ``"adamw"`` or ``"adam"``.
        max_iter: L-BFGS iterations per layer.
        jitter: train-time noise: ``True`` (p = 0.5, std 0.05), ``False``, or a probability.
        class_weight: ``"balanced"`` or ``None``.
        tokens_per_layer: P, tokens per layer in array inputs (default 1; caches: the number
            of poolings loaded).
        layers: timm-style selection of layers (``None`` all, int k the last k, a list of
            indices or names).
        pooling: the cache poolings to load (``"cls"``, ``["cls", "mean"]``); ``None``: ``"cls"``
            when the cache has it, else every recorded pooling.
        stream: train from ``cache.batches`` instead of loading the cache; ``None``: only when
            the cache would take more than half the available memory.
        device: ``"cpu"``, ``"cuda"``...; ``None``: CUDA when available.
        random_state: int, ``RandomState`` or ``None``.
        verbose: tqdm progress bars.

    Fitted attributes:
        classes_ ``(C,)``, n_layers_, dims_ (L widths), tokens_per_layer_, layer_names_,
        model_ (:class:`ProbeModel`, eval mode, on ``device_``), device_, best_params_,
        history_, best_score_ (validation balanced accuracy or ``None``), layer_scores_ ``(L,)``
        and selected_layer_ (heads with per-layer logits), feature_mean_ ``(T, D)``,
        n_features_in_ (``T * D``).
    """

    selected_layer_: int | None
    layer_scores_: np.ndarray | None
    best_score_: float | None

    def __init__(
        self,
        head: str = "linear",
        head_params: Mapping[str, Any] | None = None,
        *,
        lr: float | Sequence[float] | None = None,
        weight_decay: float | Sequence[float] | None = None,
        dropout: float | Sequence[float] | None = None,
        C: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        val_size: float | None = None,
        patience: int | None = None,
        refit: bool | None = None,
        solver: str | None = None,
        max_iter: int | None = None,
        jitter: bool | float | None = None,
        class_weight: str | None = "balanced",
        tokens_per_layer: int | None = None,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        stream: bool | None = None,
        device: str | None = None,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.head = head
        self.head_params = head_params
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.C = C
        self.epochs = epochs
        self.batch_size = batch_size
        self.val_size = val_size
        self.patience = patience
        self.refit = refit
        self.solver = solver
        self.max_iter = max_iter
        self.jitter = jitter
        self.class_weight = class_weight
        self.tokens_per_layer = tokens_per_layer
        self.layers = layers
        self.pooling = pooling
        self.stream = stream
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------------- settings

    def _settings(self) -> dict[str, Any]:
        """Head defaults overridden by every parameter the user set, validated."""
        get_probe_class(self.head)  # ValueError listing the known heads
        s = {"C": 1.0, "max_iter": 100, **HEAD_DEFAULTS.get(self.head, HEAD_DEFAULTS["default"])}
        s.update({k: getattr(self, k) for k in _OVERRIDABLE if getattr(self, k) is not None})
        if self.epochs is not None:  # an explicit epoch count is taken as is
            s["min_steps"] = 0
        _validate(s, self.head)
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        s["lr"] = _as_grid(s["lr"], "lr", positive=True)
        s["weight_decay"] = _as_grid(s["weight_decay"], "weight_decay", positive=False)
        jit = s["jitter"]
        s["jitter_p"] = (_JITTER[0] if jit else 0.0) if isinstance(jit, bool) else float(jit)
        s["variants"] = self._variants()
        return s

    def _variants(self) -> list[dict[str, Any]]:
        """Head keyword sets: the product of every list-valued head parameter (and dropout)."""
        params = dict(self.head_params or {})
        if self.dropout is not None:
            params["dropout"] = self.dropout
        accepted = head_params(self.head)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ValueError(
                f"head {self.head!r} takes no parameter(s) {unknown}; it takes: {sorted(accepted)}"
            )
        keys = sorted(params)
        axes = [params[k] if isinstance(params[k], (list, tuple)) else [params[k]] for k in keys]
        if any(len(a) == 0 for a in axes):
            raise ValueError("an empty list in head_params/dropout gives an empty grid")
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]

    def _seed(self) -> int:
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ----------------------------------------------------------------- inputs

    def _read(self, X: Any, fitting: bool) -> tuple[Tensor, dict[str, Any]]:
        """Raw input ``(N, T, D)`` float32 CPU and its layout (dims, P, names, input layers)."""
        if _is_cache(X):
            return self._read_cache(X)
        if _is_layer_list(X):
            x, dims = _pad_layers(X)
            p = 1
        else:
            x = _to_float_tensor(X)
            if x.ndim == 2:
                x = x[:, None, :]
            if x.ndim != 3:
                raise ValueError(
                    f"X must be (N, T, D), (N, D) or a list of (N, D_l); got shape {tuple(x.shape)}"
                )
            p = self.tokens_per_layer_ if not fitting else (self.tokens_per_layer or 1)
            _check_int(p, "tokens_per_layer", low=1)
            if x.shape[1] % p:
                raise ValueError(f"T={x.shape[1]} tokens is not a multiple of tokens_per_layer={p}")
            dims = None
        n_in = x.shape[1] // p
        sel = resolve_indices(self.layers, n_in)
        if sel != list(range(n_in)):
            x = x.unflatten(1, (n_in, p))[:, sel].flatten(1, 2)
            dims = tuple(dims[j] for j in sel) if dims is not None else None
        if dims is None:
            dims = (x.shape[2],) * len(sel)
        return x, {"dims": dims, "p": p, "names": None, "n_input_layers": n_in, "sel": sel}

    def _cache_pooling(self, cache: Any) -> list[str]:
        if self.pooling is None:
            return ["cls"] if "cls" in cache.poolings else list(cache.poolings)
        return [self.pooling] if isinstance(self.pooling, str) else list(self.pooling)

    def _cache_layout(self, cache: Any) -> dict[str, Any]:
        pools = self._cache_pooling(cache)
        if hasattr(cache, "_selection"):
            sel, pools = cache._selection(self.layers, pools)
        else:
            sel = resolve_indices(self.layers, len(cache.layer_names), cache.layer_names)
        return {
            "dims": tuple(int(cache.dims[j]) for j in sel),
            "p": len(pools),
            "names": [str(cache.layer_names[j]) for j in sel],
            "n_input_layers": len(cache.layer_names),
            "sel": list(sel),
            "pools": list(pools),
        }

    def _read_cache(self, cache: Any) -> tuple[Tensor, dict[str, Any]]:
        info = self._cache_layout(cache)
        x = cache.load(layers=info["sel"], pooling=info["pools"], dtype=torch.float32)
        return x.detach().to("cpu", torch.float32), info

    def as_tensor(self, X: Any) -> Tensor:
        """The exact raw input ``model_`` takes: float32 ``(N, T, D)`` on CPU.

        Args:
            X: ``(N, T, D)`` / ``(N, D)`` array or tensor, a list of per-layer ``(N, D_l)``
                arrays, or a FeatureCache, laid out as at fit time.

        Raises:
            ValueError: a layout that does not match the fitted one, or non-finite values.
        """
        check_is_fitted(self, "model_")
        x, info = self._read(X, fitting=False)
        want = (self.n_layers_ * self.tokens_per_layer_, max(self.dims_))
        if tuple(x.shape[1:]) != want:
            raise ValueError(
                f"X has layout (T, D) = {tuple(x.shape[1:])}, the probe was fitted on {want}"
            )
        if info["dims"] != tuple(self.dims_) and len(set(info["dims"])) > 1:
            raise ValueError(
                f"layer widths {info['dims']} differ from the fitted {tuple(self.dims_)}"
            )
        return x

    def _encode(self, y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(classes (C,), y_index (N,) int64)``; ValueError on bad labels."""
        if isinstance(y, Tensor):
            y = y.detach().cpu().numpy()
        y = np.asarray(y)
        if y.ndim != 1:
            y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D, got shape {y.shape}")
        if y.shape[0] != n:
            raise ValueError(f"X has {n} samples but y has {y.shape[0]}")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinity")
        classes, yi = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(
                f"need samples of at least 2 classes to fit a probe; y has only {classes.tolist()}"
            )
        return classes, yi.astype(np.int64)

    # ----------------------------------------------------------------- fit

    def fit(
        self, X: Any, y: Any = None, *, layer_names: Sequence[str] | None = None
    ) -> ProbeClassifier:
        """Train the probe.

        Args:
            X: ``(N, T, D)`` or ``(N, D)`` features (array or tensor), a list of per-layer
                ``(N, D_l)`` arrays of any widths (zero-padded), or a FeatureCache.
            y: ``(N,)`` labels; for a cache, defaults to ``cache.labels``.
            layer_names: names of the input layers (before ``layers`` selection); default
                the cache's, else ``"layer 0"``...

        Returns:
            self.

        Raises:
            ValueError: bad parameters, unknown head, a single class, NaN/inf features,
                mismatched lengths.
        """
        s = self._settings()
        seed = self._seed()
        device = self._device()
        if _is_cache(X) and y is None:
            y = np.asarray(X.labels)
        if y is None:
            raise ValueError("y is required unless X is a FeatureCache")
        if _is_cache(X) and self._should_stream(X):
            return self._fit_stream(X, y, s, seed, device)
        x, info = self._read(X, fitting=True)
        if x.shape[0] == 0:
            raise ValueError("X has no samples")
        if not torch.isfinite(x).all():
            raise ValueError("X contains NaN or infinity")
        self.classes_, y_idx = self._encode(y, x.shape[0])
        self._set_layout(info, layer_names)
        self.device_ = device
        norm = self._fit_norm(x)
        n_classes = len(self.classes_)
        if self.head == "linear" and s["solver"] == "lbfgs":
            head, kwargs = self._fit_linear(x, norm, torch.from_numpy(y_idx), s, seed, device)
        else:
            head, kwargs = self._fit_grid(
                norm(x), torch.from_numpy(y_idx), n_classes, s, seed, device
            )
        self._finish(norm, head, kwargs, x.mean(0) if x.shape[0] else None)
        return self

    def _should_stream(self, cache: Any) -> bool:
        if self.stream is not None:
            return bool(self.stream)
        info = self._cache_layout(cache)
        nbytes = len(cache) * len(info["dims"]) * info["p"] * max(info["dims"]) * 4
        return nbytes > _available_memory() // 2

    def _set_layout(self, info: Mapping[str, Any], layer_names: Sequence[str] | None) -> None:
        self.dims_ = tuple(int(d) for d in info["dims"])
        self.n_layers_ = len(self.dims_)
        self.tokens_per_layer_ = int(info["p"])
        self.n_features_in_ = self.n_layers_ * self.tokens_per_layer_ * max(self.dims_)
        names = info["names"]
        if names is None and layer_names is not None:
            if len(layer_names) != info["n_input_layers"]:
                raise ValueError(
                    f"layer_names has {len(layer_names)} names for {info['n_input_layers']} layers"
                )
            names = [str(layer_names[j]) for j in info["sel"]]
        self.layer_names_ = (
            list(names) if names is not None else [f"layer {j}" for j in info["sel"]]
        )

    def _fit_norm(self, x: Tensor, chunk: int = 8192) -> FeatureNorm:
        """Fit the head's input normalisation on ``x`` ``(N, T, D)`` (float64 two-pass stats)."""
        mode = get_probe_class(self.head).input_norm
        norm = FeatureNorm(mode, x.shape[1], x.shape[2])
        if mode == "standardize":
            mean = sum(c.double().sum(0) for c in x.split(chunk)) / x.shape[0]
            var = sum((c.double() - mean).pow(2).sum(0) for c in x.split(chunk)) / x.shape[0]
            std = var.sqrt()
            norm.mean.copy_(mean.float())
            norm.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)).float())
        return norm

    def _head_kwargs(self, variant: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers_,
            "dims": list(self.dims_),
            "n_classes": len(self.classes_),
            "tokens_per_layer": self.tokens_per_layer_,
            **variant,
        }

    def _train_config(self, s: Mapping[str, Any], seed: int, device: torch.device) -> TrainConfig:
        return TrainConfig(
            lr=s["lr"],
            weight_decay=s["weight_decay"],
            optimizer=s["solver"],
            epochs=int(s["epochs"]),
            min_steps=int(s["min_steps"]),
            batch_size=int(s["batch_size"]),
            min_batches=int(s["min_batches"]),
            schedule=s["schedule"],
            class_weight=self.class_weight,
            jitter_p=s["jitter_p"],
            jitter_std=_JITTER[1],
            val_size=float(s["val_size"]),
            patience=s["patience"] if s["val_size"] > 0 else None,
            refit=bool(s["refit"]) or s["val_size"] == 0,
            seed=seed,
            device=device,
            verbose=bool(self.verbose),
        )

    def _fit_grid(
        self,
        xn: Tensor,
        y: Tensor,
        n_classes: int,
        s: Mapping[str, Any],
        seed: int,
        device: torch.device,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Minibatch training of the grid on normalised features; returns the chosen head."""
        cfg = self._train_config(s, seed, device)
        variants = s["variants"]
        if cfg.val_size == 0:
            if len(variants) * len(cfg.lr) * len(cfg.weight_decay) > 1:
                raise ValueError("a grid of configurations needs val_size > 0 to choose one")
            cfg.patience = None

        def build(**variant: Any) -> nn.Module:
            return create_probe(self.head, **self._head_kwargs(variant))

        result = train_grid(build, xn, y, n_classes, cfg, variants)
        kwargs = {k: result.best_params[k] for k in variants[0]}
        head = build(**kwargs)
        head.load_state_dict(result.state_dict)
        self._record(result)
        if result.layer_scores is not None and hasattr(head, "selected_layer"):
            self.selected_layer_ = int(np.argmax(result.layer_scores))
            _set_selected_layer(head, self.selected_layer_)
        elif hasattr(head, "selected_layer"):  # no validation: the head's default (last layer)
            self.selected_layer_ = int(_buffer(head, "selected_layer"))
        return head, kwargs

    def _record(self, result: GridResult) -> None:
        self.best_params_ = dict(result.best_params)
        self.history_ = list(result.history)
        self.best_score_ = (
            float(result.scores[result.best_index]) if result.scores is not None else None
        )
        self.best_epoch_ = result.best_epoch
        self.grid_scores_ = result.scores
        self.layer_scores_ = result.layer_scores
        self.selected_layer_ = None

    def _fit_linear(
        self,
        x: Tensor,
        norm: FeatureNorm,
        y: Tensor,
        s: Mapping[str, Any],
        seed: int,
        device: torch.device,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Per-layer L-BFGS (scikit-learn's objective); layer chosen on validation."""
        n_classes = len(self.classes_)
        xl = _layer_major(x, norm, self.n_layers_, self.tokens_per_layer_, device)  # (L, N, F)
        y = y.to(device)
        opts: dict[str, Any] = {
            "n_classes": n_classes,
            "C": float(s["C"]),
            "class_weight": self.class_weight,
            "max_iter": int(s["max_iter"]),
            "verbose": bool(self.verbose),
        }
        history: list[dict[str, Any]] = []
        self.layer_scores_, self.selected_layer_, self.best_score_ = None, self.n_layers_ - 1, None
        sol = None
        if s["val_size"] > 0:
            tr, va = (
                torch.from_numpy(i).to(device)
                for i in stratified_split(y.cpu().numpy(), float(s["val_size"]), seed)
            )
            sol = fit_linear_probes(xl[:, tr], y[tr], **opts)
            pred = (torch.bmm(xl[:, va], sol.weight) + sol.bias[:, None]).argmax(-1)  # (L, n_val)
            acc = np.array([accuracy(y[va].cpu(), p.cpu()) for p in pred])
            self.layer_scores_ = acc
            self.selected_layer_ = int(np.argmax(acc))
            self.best_score_ = float(acc[self.selected_layer_])
            history += _linear_rows("search", sol, acc)
        if sol is None or s["refit"]:
            sol = fit_linear_probes(xl, y, init=sol, **opts)
            history += _linear_rows("refit", sol, None)
        del xl
        variant = s["variants"][0]
        head = create_probe(self.head, **self._head_kwargs(variant))
        _load_linear(head, sol.weight.cpu(), sol.bias.cpu())
        _set_selected_layer(head, self.selected_layer_)
        self.best_params_ = {"solver": "lbfgs", "C": float(s["C"]), "max_iter": int(s["max_iter"])}
        self.history_ = history
        self.best_epoch_ = None
        self.grid_scores_ = None
        self.n_iter_ = sol.n_iter
        return head, dict(variant)

    def _fit_stream(
        self, cache: Any, y: Any, s: Mapping[str, Any], seed: int, device: torch.device
    ) -> ProbeClassifier:
        """Train from ``cache.batches`` (one config, fixed epochs, no validation)."""
        info = self._cache_layout(cache)
        self.classes_, y_idx = self._encode(y, len(cache))
        self._set_layout(info, None)
        self.device_ = device
        n_tokens, dim = self.n_layers_ * self.tokens_per_layer_, max(self.dims_)
        mode = get_probe_class(self.head).input_norm
        norm = FeatureNorm(mode, n_tokens, dim)
        stats = _stream_stats(
            lambda: cache.batches(8192, layers=info["sel"], pooling=info["pools"]), n_tokens, dim
        )
        if not math.isfinite(float(stats[0].sum() + stats[1].sum())):
            raise ValueError("the cache contains NaN or infinity")
        if mode == "standardize":
            norm.mean.copy_(stats[0].float())
            norm.std.copy_(
                torch.where(stats[1] > 1e-12, stats[1], torch.ones_like(stats[1])).float()
            )
        norm = norm.to(device)
        cfg = self._train_config(s, seed, device)
        if s["solver"] == "lbfgs":
            cfg.optimizer = "adamw"
        classes_t = (
            torch.as_tensor(self.classes_, device=device)
            if self.classes_.dtype.kind in "iu"
            else None
        )
        epoch = itertools.count()

        def batches() -> Iterator[tuple[Tensor, Tensor]]:
            it = cache.batches(
                cfg.batch_size,
                layers=info["sel"],
                pooling=info["pools"],
                shuffle=True,
                seed=seed + next(epoch),
            )
            for xb, yb in it:
                yb = yb.to(device)
                yield xb, (torch.searchsorted(classes_t, yb) if classes_t is not None else yb)

        variant = s["variants"][0]
        result = train_stream(
            lambda **v: create_probe(self.head, **self._head_kwargs(v)),
            batches,
            len(cache),
            len(self.classes_),
            np.bincount(y_idx, minlength=len(self.classes_)).tolist(),
            cfg,
            transform=norm,
            variant=variant,
        )
        head = create_probe(self.head, **self._head_kwargs(variant))
        head.load_state_dict(result.state_dict)
        self._record(result)
        if hasattr(head, "selected_layer"):
            self.selected_layer_ = int(_buffer(head, "selected_layer"))
        self._finish(norm.cpu(), head, dict(variant), stats[0].float())
        return self

    def _finish(
        self, norm: FeatureNorm, head: nn.Module, kwargs: dict[str, Any], mean: Tensor | None
    ) -> None:
        n_tokens, dim = self.n_layers_ * self.tokens_per_layer_, max(self.dims_)
        mean = mean if mean is not None else torch.zeros(n_tokens, dim)
        self.head_kwargs_ = _jsonable(self._head_kwargs(kwargs))
        self.feature_mean_ = mean.detach().cpu().float().numpy()
        self.model_ = ProbeModel(norm.cpu(), head.cpu(), mean.cpu()).to(self.device_).eval()

    # ----------------------------------------------------------------- predict

    @torch.no_grad()
    def _outputs(self, X: Any, batch: int = 8192) -> Iterator[ProbeOutput]:
        x = self.as_tensor(X)
        self.model_.eval()
        for part in x.split(batch):
            yield self.model_(part.to(self.device_))

    def decision_function(self, X: Any) -> np.ndarray:
        """Class scores (logits) ``(N, C)``."""
        return np.concatenate([o.logits.float().cpu().numpy() for o in self._outputs(X)]).astype(
            np.float64
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order."""
        return np.concatenate(
            [o.logits.float().softmax(-1).cpu().numpy() for o in self._outputs(X)]
        ).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels ``(N,)`` from ``classes_``."""
        idx = np.concatenate([o.logits.argmax(-1).cpu().numpy() for o in self._outputs(X)])
        return self.classes_[idx]

    def predict_layers(self, X: Any) -> np.ndarray:
        """Per-layer predictions ``(N, L)`` (heads with one probe per layer, e.g. ``"linear"``)."""
        outs = []
        for o in self._outputs(X):
            if o.layer_logits is None:
                raise ValueError(f"head {self.head!r} has no per-layer logits")
            outs.append(o.layer_logits.argmax(-1).cpu().numpy())
        return self.classes_[np.concatenate(outs)]

    def layer_weights(self, X: Any) -> np.ndarray | None:
        """The head's own per-sample layer weights ``(N, L)``, or ``None`` if it has none."""
        outs = []
        for o in self._outputs(X):
            if o.layer_weights is None:
                return None
            outs.append(o.layer_weights.float().cpu().numpy())
        return np.concatenate(outs)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Accuracy on ``(X, y)``; ``y`` defaults to ``X.labels`` for a FeatureCache."""
        if y is None:
            if not _is_cache(X):
                raise ValueError("y is required unless X is a FeatureCache")
            y = np.asarray(X.labels)
        return super().score(X, y, sample_weight=sample_weight)

    # ----------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` (``model_``'s state dict) and ``config.json`` to ``path``.

        No pickle: tensors in safetensors, everything else in JSON.

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        check_is_fitted(self, "model_")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))
        params = self.get_params(deep=False)
        if not (
            params["random_state"] is None or isinstance(params["random_state"], (int, np.integer))
        ):
            params["random_state"] = None
        config = {
            "format_version": FORMAT_VERSION,
            "params": _jsonable(params),
            "classes": _jsonable(self.classes_),
            "classes_dtype": self.classes_.dtype.str if self.classes_.dtype != object else "object",
            "dims": list(self.dims_),
            "tokens_per_layer": self.tokens_per_layer_,
            "layer_names": list(self.layer_names_),
            "input_norm": self.model_.norm.mode,
            "head_kwargs": self.head_kwargs_,
            "best_params": _jsonable(self.best_params_),
            "best_score": self.best_score_,
            "best_epoch": self.best_epoch_,
            "layer_scores": _jsonable(self.layer_scores_),
            "selected_layer": self.selected_layer_,
            "history": _jsonable(self.history_),
        }
        (path / "config.json").write_text(json.dumps(config, indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> ProbeClassifier:
        """Rebuild a classifier saved by :meth:`save`; predictions are identical.

        Args:
            path: the folder.
            device: where ``model_`` goes (default: the saved ``device`` parameter's rule;
                a saved CUDA device falls back to the CPU where there is no GPU).
        """
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / "config.json").read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported probe format {config.get('format_version')!r} in {path}")
        params = config["params"]
        if device is not None:
            params["device"] = device
        clf = cls(**params)
        dtype = None if config["classes_dtype"] == "object" else np.dtype(config["classes_dtype"])
        clf.classes_ = np.asarray(config["classes"], dtype=dtype if dtype is not None else object)
        clf._set_layout(
            {
                "dims": config["dims"],
                "p": config["tokens_per_layer"],
                "names": config["layer_names"],
                "n_input_layers": len(config["dims"]),
                "sel": list(range(len(config["dims"]))),
            },
            None,
        )
        clf.device_ = clf._device()
        if clf.device_.type == "cuda" and not torch.cuda.is_available():
            clf.device_ = torch.device("cpu")
        n_tokens, dim = clf.n_layers_ * clf.tokens_per_layer_, max(clf.dims_)
        head = create_probe(clf.head, **config["head_kwargs"])
        model = ProbeModel(
            FeatureNorm(config["input_norm"], n_tokens, dim), head, torch.zeros(n_tokens, dim)
        )
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        clf.head_kwargs_ = config["head_kwargs"]
        clf.feature_mean_ = model.feature_mean.numpy().copy()
        clf.model_ = model.to(clf.device_).eval()
        clf.best_params_ = config["best_params"]
        clf.best_score_ = config["best_score"]
        clf.best_epoch_ = config["best_epoch"]
        ls = config["layer_scores"]
        clf.layer_scores_ = np.asarray(ls) if ls is not None else None
        clf.selected_layer_ = config["selected_layer"]
        clf.history_ = config["history"]
        clf.grid_scores_ = None
        return clf


# --------------------------------------------------------------------------- helpers


def _validate(s: Mapping[str, Any], head: str) -> None:
    """Check the merged settings; ValueError naming the bad one."""
    _check_number(s["C"], "C", low=0.0, strict=True)
    _check_number(s["val_size"], "val_size", low=0.0, high=1.0)
    for key in ("epochs", "batch_size", "max_iter"):
        _check_int(s[key], key, low=1)
    if s["patience"] is not None:
        _check_int(s["patience"], "patience", low=1)
    if s["solver"] not in ("lbfgs", "adamw", "adam"):
        raise ValueError(f"solver must be 'lbfgs', 'adamw' or 'adam', got {s['solver']!r}")
    if s["solver"] == "lbfgs" and head != "linear":
        raise ValueError(f"solver='lbfgs' is only for head='linear', not {head!r}")
    if not isinstance(s["jitter"], bool):
        _check_number(s["jitter"], "jitter", low=0.0, high=1.0, high_inclusive=True)


def _as_grid(value: Any, name: str, positive: bool) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not values:
        raise ValueError(f"{name} must not be an empty list")
    for v in values:
        _check_number(v, name, low=0.0, strict=positive)
    return [float(v) for v in values]


def _check_number(
    v: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    strict: bool = False,
    high_inclusive: bool = False,
) -> None:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float, np.integer, np.floating))
        or not math.isfinite(v)
    ):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if low is not None and (v < low or (strict and v == low)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {v!r}")
    if high is not None and (v > high or (v == high and not high_inclusive)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {v!r}")


def _check_int(v: Any, name: str, low: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _layer_major(
    x: Tensor, norm: FeatureNorm, n_layers: int, p: int, device: torch.device
) -> Tensor:
    """Normalised features as one contiguous block per layer: ``(L, N, P * D)`` on ``device``."""
    n, _, dim = x.shape
    out = torch.empty(n_layers, n, p * dim, device=device)
    norm = norm.to(device)
    for layer in range(n_layers):
        tokens = slice(layer * p, (layer + 1) * p)
        block = norm(x[:, tokens].to(device), tokens)  # (N, P, D)
        out[layer] = block.reshape(n, p * dim)
    return out


def _buffer(module: nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _set_selected_layer(head: nn.Module, layer: int) -> None:
    """Set the ``selected_layer`` buffer of a per-layer head (whose probe ``logits`` reports)."""
    _buffer(head, "selected_layer").fill_(layer)


def _load_linear(head: nn.Module, weight: Tensor, bias: Tensor) -> None:
    """Write per-layer solutions ``W (L, P*D, C)``, ``b (L, C)`` into the ``linear`` head."""
    probes: Any = head.probes
    with torch.no_grad():
        probes.weight.copy_(weight * probes.mask)
        probes.bias.copy_(bias)


def _linear_rows(phase: str, sol: Any, acc: np.ndarray | None) -> list[dict[str, Any]]:
    rows = []
    for layer in range(len(sol.n_iter)):
        row = {
            "phase": phase,
            "layer": layer,
            "n_iter": int(sol.n_iter[layer]),
            "loss": float(sol.loss[layer]),
        }
        if acc is not None:
            row["val_accuracy"] = float(acc[layer])
        rows.append(row)
    return rows


def _stream_stats(batches: Any, n_tokens: int, dim: int) -> tuple[Tensor, Tensor]:
    """Mean and population std ``(T, D)`` (float64) over a stream of ``(X, y)`` batches."""
    n = 0
    total = torch.zeros(n_tokens, dim, dtype=torch.float64)
    for xb, _ in batches():
        total += xb.double().sum(0)
        n += xb.shape[0]
    mean = total / max(n, 1)
    sq = torch.zeros_like(total)
    for xb, _ in batches():
        sq += (xb.double() - mean).pow(2).sum(0)
    return mean, (sq / max(n, 1)).sqrt()
