"""What every probe estimator shares: settings, inputs, the fit skeleton, ``model_``, save/load.

:class:`ProbeEstimator` holds the task-independent machinery of
:class:`~probekit.estimator.ProbeClassifier` and :class:`~probekit.estimator.ProbeRegressor`.
A subclass says what its task is through a few hooks:

* ``_task`` -- ``"classification"`` or ``"regression"`` (the training loop's loss, split and
  validation score);
* ``_encode_y(y, n)`` -- sets the fitted target attributes (``classes_``, or the target
  standardisation) and returns the training targets as a tensor;
* ``_n_outputs()`` -- the head's ``C`` (classes, or regression targets);
* ``_fit_linear(...)`` -- the exact per-layer solver of the ``"linear"`` head;
* ``_task_state()`` / ``_load_task_state(config)`` -- the target attributes in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor, nn

from .._utils.memory import default_budget, parse_size
from ..cache.rows import CacheRows
from ..errors import ConfigError, DataError
from ..probes import create_probe, get_probe_class, head_params
from ..probes.base import ProbeOutput
from ..train import GridResult, TrainConfig, train_grid
from .inputs import _is_cache, cache_layout, check_finite, read_arrays, read_cache
from .model import FeatureNorm, ProbeModel, _buffer, _set_selected_layer, fit_feature_norm
from .params import EstimatorParams, check_fitted, random_seed
from .persist import _jsonable, load_probe, save_probe
from .recipes import DROPOUT_PARAM, HEAD_VARIANTS, OVERRIDABLE, recipe_for

__all__ = ["ProbeEstimator"]


class ProbeEstimator(EstimatorParams):
    """Base class of the probe estimators (not used directly); see :mod:`.base` for the hooks."""

    _task = "classification"
    # the constructor parameters both estimators take (each sets them in ``__init__``)
    head: str
    head_params: Mapping[str, Any] | None
    dropout: float | Sequence[float] | None
    layers: Any
    pooling: str | Sequence[str] | None
    tokens_per_layer: int | None
    stream: bool | None
    device: str | None
    random_state: Any
    verbose: bool
    selected_layer_: int | None
    layer_scores_: np.ndarray | None
    best_score_: float | None
    grid_configs_: list[dict[str, Any]] | None

    def _encode_y(self, y: Any, n: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _n_outputs(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_linear(
        self,
        x: Tensor,
        norm: FeatureNorm,
        y: Tensor,
        s: TrainConfig,
        variant: dict[str, Any],
        seed: int,
        device: torch.device,
    ) -> tuple[nn.Module, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit_closed(
        self,
        x: Tensor,
        norm: FeatureNorm,
        y: Tensor,
        s: TrainConfig,
        variants: list[dict[str, Any]],
        seed: int,
        device: torch.device,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """A closed-form head (``closed_form = True``), one layer at a time, in memory."""
        from .closed import fit_closed_form

        if s.val_size == 0 and len(variants) > 1:
            raise ConfigError("a grid of configurations needs val_size > 0 to choose one")
        p, norm = self.tokens_per_layer_, norm.to(device)

        def block(layer: int, rows: np.ndarray) -> Tensor:
            tokens = slice(layer * p, (layer + 1) * p)
            part = x[torch.from_numpy(rows), tokens].to(device)  # (n, P, D)
            return norm(part, tokens).reshape(len(rows), -1)

        return fit_closed_form(self, block, x.shape[0], y, s, variants, seed, device)

    def _task_state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_task_state(self, config: Mapping[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- settings

    def _settings(self) -> TrainConfig:
        """The head's recipe overridden by every parameter the user set, validated.

        Raises:
            ConfigError: an unknown head or a parameter outside its allowed range.
        """
        try:
            cls = get_probe_class(self.head)
        except ValueError as err:  # the registry's message lists the known heads
            raise ConfigError(str(err)) from None
        if self._task not in cls.tasks:
            raise ConfigError(
                f"head {self.head!r} is for {' and '.join(cls.tasks)} only, not {self._task}"
            )
        return recipe_for(self.head, {k: getattr(self, k) for k in OVERRIDABLE if hasattr(self, k)})

    def validate(self) -> Self:
        """Check the head, its parameters and the training settings without fitting.

        Returns:
            self.

        Raises:
            ConfigError: naming the bad parameter and its allowed values.
        """
        self._settings()
        self._variants()
        self._budget()
        return self

    def _budget(self) -> int:
        """The memory budget in bytes (``memory_budget``, default half the available RAM)."""
        value = getattr(self, "memory_budget", None)
        return default_budget() if value is None else parse_size(value, "memory_budget")

    def _variants(self, search: bool = True) -> list[dict[str, Any]]:
        """Head keyword sets: the product of every list-valued head parameter (and dropout).

        The head's recipe axes (:data:`HEAD_VARIANTS`, e.g. ALF's attention dropout) apply
        unless ``head_params`` or ``dropout`` sets the same keyword; without a validation split
        to choose on (``search=False``) they keep their first value.
        """
        params = dict(self.head_params or {})
        if self.dropout is not None:
            key = DROPOUT_PARAM.get(self.head, "dropout")
            if key in params:
                raise ConfigError(
                    f"dropout={self.dropout!r} and head_params[{key!r}] set the same thing; "
                    "give one of them"
                )
            params[key] = self.dropout
        recipe = {k: v for k, v in HEAD_VARIANTS.get(self.head, {}).items() if k not in params}
        params = {**{k: (v if search else v[:1]) for k, v in recipe.items()}, **params}
        accepted = head_params(self.head)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ConfigError(
                f"head {self.head!r} takes no parameter(s) {unknown}; it takes: {sorted(accepted)}"
            )
        keys = sorted(params)
        axes = [params[k] if isinstance(params[k], (list, tuple)) else [params[k]] for k in keys]
        if any(len(a) == 0 for a in axes):
            raise ConfigError("an empty list in head_params/dropout gives an empty grid")
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*axes)]

    def _seed(self) -> int:
        return random_seed(self.random_state)

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ----------------------------------------------------------------- inputs

    def _read(self, X: Any, fitting: bool) -> tuple[Tensor, dict[str, Any]]:
        """Raw input ``(N, T, D)`` float32 CPU and its layout (dims, P, names, input layers)."""
        if _is_cache(X):
            return read_cache(X, self.layers, self.pooling)
        if fitting:
            return read_arrays(X, self.layers, self.tokens_per_layer)
        return read_arrays(X, self.layers, self.tokens_per_layer_, fitted=True)

    def _cache_layout(self, cache: Any) -> dict[str, Any]:
        return cache_layout(cache, self.layers, self.pooling)

    def as_tensor(self, X: Any) -> Tensor:
        """The exact raw input ``model_`` takes: float32 ``(N, T, D)`` on CPU (``T = L * P``,
        layer-major).

        Args:
            X: ``(N, L, P, D)`` / ``(N, T, D)`` / ``(N, D)`` array or tensor, a list of
                per-layer ``(N, D_l)`` arrays, or a FeatureCache, laid out as at fit time (a
                4-D ``X`` and its flat ``(N, L * P, D)`` form are the same input).

        Raises:
            DataError: a layout that does not match the fitted one, or non-finite values.
        """
        check_fitted(self, "model_")
        x, info = self._read(X, fitting=False)
        want = (self.n_layers_ * self.tokens_per_layer_, max(self.dims_))
        if tuple(x.shape[1:]) != want:
            raise DataError(
                f"X has {x.shape[1] * x.shape[2]} features, but {type(self).__name__} is "
                f"expecting {self.n_features_in_} features as input (layout (T, D) = "
                f"{tuple(x.shape[1:])}, fitted on {want})"
            )
        if info["dims"] != tuple(self.dims_) and len(set(info["dims"])) > 1:
            raise DataError(
                f"layer widths {info['dims']} differ from the fitted {tuple(self.dims_)}"
            )
        check_finite(x)
        return x

    # ----------------------------------------------------------------- fit

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        layer_names: Sequence[str] | None = None,
        groups: Any = None,
    ) -> Self:
        """Train the probe.

        Args:
            X: ``(N, L, P, D)`` (``P`` poolings per layer, as ``cache.load()`` gives several),
                ``(N, T, D)`` (``T = L * P`` layer-major tokens, ``P = tokens_per_layer``) or
                ``(N, D)`` features (array or tensor), a list of per-layer ``(N, D_l)`` arrays
                of any widths (zero-padded), or a FeatureCache.
            y: ``(N,)`` class labels (classifier) or ``(N,)`` / ``(N, K)`` float targets
                (regressor); for a cache, defaults to ``cache.labels``.
            layer_names: names of the input layers (before ``layers`` selection); default
                the cache's, else ``"layer 0"``...
            groups: ``(N,)`` group of each row, kept wholly on one side of the validation
                split; default: a word or token cache's samples (the input of each row), so
                no sentence is on both sides.

        Returns:
            self.

        Raises:
            ConfigError: bad parameters or an unknown head, or a ``tokens_per_layer`` that
                contradicts a 4-D ``X`` or a cache's poolings. DataError: a single class (or
                non-numeric targets), NaN/inf features or targets, mismatched lengths.
        """
        if groups is None and _is_cache(X) and getattr(X, "unit", "sample") != "sample":
            groups = X.samples
        if groups is not None:
            groups = np.asarray(groups).reshape(-1)
            if _is_cache(X) and groups.shape[0] != len(X):
                raise DataError(f"{groups.shape[0]} groups for {len(X)} rows")
        self._groups = groups
        try:
            return self._fit(X, y, layer_names)
        finally:
            self.__dict__.pop("_groups", None)

    def _fit(self, X: Any, y: Any, layer_names: Sequence[str] | None) -> Self:
        s = self._settings()
        variants = self._variants(search=s.val_size > 0)
        seed = self._seed()
        device = self._device()
        budget = self._budget()
        if _is_cache(X) and y is None:
            y = np.asarray(X.labels)
        if y is None:
            raise DataError(
                f"{type(self).__name__} requires y to be passed, but the target y is None "
                "(only a FeatureCache carries its own labels)"
            )
        if _is_cache(X):
            self._check_cache_tokens(X)
        if _is_cache(X) and self._should_stream(X, budget):
            return self._fit_stream(X, y, s, variants, seed, device, budget)
        x, info = self._read(X, fitting=True)
        if x.shape[0] == 0:
            raise DataError("X has no samples")
        check_finite(x)
        y_t = self._encode_y(y, x.shape[0])
        s = self._resolve_targets(s)
        self._set_layout(info, layer_names)
        self.device_ = device
        norm = self._fit_norm(x)
        if self.head == "linear" and s.solver == "lbfgs":
            head, kwargs = self._fit_linear(x, norm, y_t, s, variants[0], seed, device)
        elif get_probe_class(self.head).closed_form:
            head, kwargs = self._fit_closed(x, norm, y_t, s, variants, seed, device)
        else:
            head, kwargs = self._fit_grid(
                norm(x), y_t, self._n_outputs(), s, variants, seed, device
            )
        self._finish(norm, head, kwargs, x.mean(0) if x.shape[0] else None)
        return self

    def _check_cache_tokens(self, cache: Any) -> None:
        """A cache carries its P (the poolings selected): an explicit other one is refused."""
        p = self.tokens_per_layer
        n_pools = int(self._cache_layout(cache)["p"])
        if p is not None and p != n_pools:
            raise ConfigError(
                f"tokens_per_layer={p!r} contradicts the cache's {n_pools} selected pooling(s) "
                "per layer: leave tokens_per_layer out"
            )

    def _resolve_targets(self, s: TrainConfig) -> TrainConfig:
        """The recipe once the targets are encoded (a classifier's per-class weights)."""
        return s

    def _should_stream(self, cache: Any, budget: int) -> bool:
        """Stream when forced, or when an in-memory fit (the raw features, their normalised
        copy and the layer-major or minibatch copies: about 3x the float32 selection) would
        exceed ``budget``."""
        if self.stream is not None:
            return bool(self.stream)
        info = self._cache_layout(cache)
        nbytes = len(cache) * len(info["dims"]) * info["p"] * max(info["dims"]) * 4
        return 3 * nbytes > budget

    def _set_layout(self, info: Mapping[str, Any], layer_names: Sequence[str] | None) -> None:
        self.dims_ = tuple(int(d) for d in info["dims"])
        self.n_layers_ = len(self.dims_)
        self.tokens_per_layer_ = int(info["p"])
        self.n_features_in_ = self.n_layers_ * self.tokens_per_layer_ * max(self.dims_)
        names = info["names"]
        if names is None and layer_names is not None:
            if len(layer_names) != info["n_input_layers"]:
                raise DataError(
                    f"layer_names has {len(layer_names)} names for {info['n_input_layers']} layers"
                )
            names = [str(layer_names[j]) for j in info["sel"]]
        self.layer_names_ = (
            list(names) if names is not None else [f"layer {j}" for j in info["sel"]]
        )

    def _fit_norm(self, x: Tensor, chunk: int = 8192) -> FeatureNorm:
        """Fit the head's input normalisation on ``x`` ``(N, T, D)`` (float64 two-pass stats)."""
        return fit_feature_norm(get_probe_class(self.head).input_norm, x, chunk)

    def _head_kwargs(self, variant: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers_,
            "dims": list(self.dims_),
            "n_classes": self._n_outputs(),
            "tokens_per_layer": self.tokens_per_layer_,
            **variant,
        }

    def _train_config(self, s: TrainConfig, seed: int, device: torch.device) -> TrainConfig:
        """The recipe ``s`` for this fit: seed, device, verbosity; no validation -> no patience."""
        return dataclasses.replace(
            s,
            seed=seed,
            device=device,
            verbose=bool(self.verbose),
            patience=s.patience if s.val_size > 0 else None,
            refit=bool(s.refit) or s.val_size == 0,
            stratify=getattr(self, "_stratify", None),  # a control probe: its task's split
            groups=getattr(self, "_groups", None),  # a unit cache: split by input
        )

    def _fit_grid(
        self,
        xn: Tensor,
        y: Tensor,
        n_classes: int,
        s: TrainConfig,
        variants: list[dict[str, Any]],
        seed: int,
        device: torch.device,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Minibatch training of the grid on normalised features; returns the chosen head."""
        cfg = self._train_config(s, seed, device)
        if cfg.val_size == 0:
            if len(variants) * len(cfg.lrs) * len(cfg.weight_decays) > 1:
                raise ConfigError("a grid of configurations needs val_size > 0 to choose one")
            cfg.patience = None

        def build(**variant: Any) -> nn.Module:
            return create_probe(self.head, **self._head_kwargs(variant))

        if xn.shape[0] < 2 and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build(**variants[0]).modules()
        ):
            raise DataError(
                f"head {self.head!r} normalises over the batch (BatchNorm) and needs at least 2 "
                f"training samples, got n_samples={xn.shape[0]}"
            )
        result = train_grid(build, xn, y, n_classes, cfg, variants, task=self._task)
        kwargs = {k: result.best_params[k] for k in variants[0]}
        head = build(**kwargs)
        head.load_state_dict(result.state_dict)
        self._record(result)
        if self.layer_scores_ is not None and hasattr(head, "selected_layer"):
            self.selected_layer_ = int(np.argmax(self.layer_scores_))  # balanced accuracy
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
        # epochs behind the kept weights: the refit's, else the search up to the chosen epoch
        self.n_iter_ = result.refit_epochs or (result.best_epoch or 0) + 1
        self.grid_scores_ = result.scores
        self.grid_configs_ = list(result.configs)
        # classifiers choose layers by balanced accuracy, like everything else
        self.layer_scores_ = (
            result.layer_balanced_scores
            if result.layer_balanced_scores is not None
            else result.layer_scores
        )
        self.selected_layer_ = None

    def _fit_stream(
        self,
        cache: Any,
        y: Any,
        s: TrainConfig,
        variants: list[dict[str, Any]],
        seed: int,
        device: torch.device,
        budget: int,
    ) -> Any:
        """Train out of core on a cache over the memory budget."""
        raise ConfigError(
            f"{type(self).__name__} cannot train from a streamed cache; pass stream=False "
            "(the cache is then loaded into memory)"
        )

    def _finish(
        self, norm: FeatureNorm, head: nn.Module, kwargs: dict[str, Any], mean: Tensor | None
    ) -> None:
        n_tokens, dim = self.n_layers_ * self.tokens_per_layer_, max(self.dims_)
        mean = mean if mean is not None else torch.zeros(n_tokens, dim)
        self.head_kwargs_ = _jsonable(self._head_kwargs(kwargs))
        self.feature_mean_ = mean.detach().cpu().float().numpy()
        self.model_ = ProbeModel(norm.cpu(), head.cpu(), mean.cpu()).to(self.device_).eval()

    @torch.no_grad()
    def _outputs(self, X: Any, batch: int = 8192) -> Iterator[ProbeOutput]:
        check_fitted(self, "model_")
        self.model_.eval()
        if _is_cache(X) and self._should_stream(X, self._budget()):
            yield from self._stream_outputs(X, batch)
            return
        x = self.as_tensor(X)
        for part in x.split(batch):
            yield self.model_(part.to(self.device_))

    def _stream_outputs(self, cache: Any, batch: int) -> Iterator[ProbeOutput]:
        """Outputs on a cache read chunk by chunk from disk (within the memory budget)."""
        info = self._cache_layout(cache)
        rows = CacheRows(cache, info["sel"], info["pools"])
        want = (self.n_layers_ * self.tokens_per_layer_, max(self.dims_))
        if (rows.n_tokens, rows.width) != want or (
            tuple(info["dims"]) != tuple(self.dims_) and len(set(info["dims"])) > 1
        ):
            raise DataError(
                f"X has layout (T, D) = {(rows.n_tokens, rows.width)} and widths "
                f"{tuple(info['dims'])}, the probe was fitted on {want}, {tuple(self.dims_)}"
            )
        chunk = int(max(1, min(batch, self._budget() // (4 * rows.row_bytes))))
        try:
            start = 0
            for part in rows.chunks(chunk):
                check_finite(part, offset=start)
                start += part.shape[0]
                yield self.model_(part.to(self.device_))
        finally:
            rows.close()

    def layer_weights(self, X: Any) -> np.ndarray | None:
        """The head's own per-sample layer weights ``(N, L)``, or ``None`` if it has none."""
        outs = []
        for o in self._outputs(X):
            if o.layer_weights is None:
                return None
            outs.append(o.layer_weights.float().cpu().numpy())
        return np.concatenate(outs)

    # ----------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``model.safetensors`` (``model_``'s state dict) and ``config.json`` to ``path``.

        No pickle: tensors in safetensors, everything else in JSON.

        Returns:
            The folder.
        """
        return save_probe(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | None = None) -> Any:
        """Rebuild an estimator saved by :meth:`save`; predictions are identical.

        Args:
            path: the folder.
            device: where ``model_`` goes (default: the saved ``device`` parameter's rule;
                a saved CUDA device falls back to the CPU where there is no GPU).
        """
        return load_probe(cls, path, device)
