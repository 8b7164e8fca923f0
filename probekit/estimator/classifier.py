"""``ProbeClassifier``: a probe head behind the scikit-learn estimator contract.

::

    clf = ProbeClassifier(head="linear").fit(X, y)      # X (N, L, P, D), (N, T, D), (N, D),
                                                        # [(N, D_l)] or a cache
    clf.predict(X); clf.predict_proba(X); clf.score(X, y)
    clf.layer_scores_        # (L,) validation balanced accuracy of every layer's probe
    clf.decision_layers(X)   # (N, L) every layer's score (binary; per-layer heads)
    clf.layer_weights(X)     # (N, L) the head's own attribution (attention heads)
    clf.save("probe/"); ProbeClassifier.load("probe/")

``model_`` maps RAW features ``(B, T, D)`` to a :class:`~probekit.probes.base.ProbeOutput`:
the input normalisation the head asks for (``input_norm``) is part of it, as buffers.

Every hyper-parameter left at ``None`` takes the head's recipe (:data:`HEAD_DEFAULTS`, one
:class:`~probekit.train.TrainConfig` per head): the ALF recipe for ``"alf"``, the LAYA recipe
for ``"laya"``, and for ``"linear"`` full-batch L-BFGS with scikit-learn's
``LogisticRegression(C=1.0)`` objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..train import TrainConfig, fit_linear_probes, selection_accuracy, stratified_split
from .base import ProbeEstimator
from .control import control_keys, fit_control
from .inputs import _is_cache, encode_labels
from .model import FeatureNorm, _layer_major, _linear_rows, finish_linear
from .stream import fit_from_stream

__all__ = ["ProbeClassifier"]


class ProbeClassifier(ProbeEstimator):
    """A probe head over cached layer features, with the scikit-learn estimator contract.

    Args:
        head: registered head name (``probekit.probes.list_probes()``).
        head_params: the head's own keyword arguments (``{"tau": 1.5}``); a list value makes
            that argument a grid axis.
        lr: learning rate, or a list (grid axis). ``None``: head default.
        weight_decay: weight decay, or a list (grid axis). ``None``: head default.
        dropout: the head's dropout, or a list (grid axis); for ``"alf"`` the attention
            dropout (``attn_dropout``, as in its reference), else the head's ``dropout``
            argument. ``None``: the head's recipe (ALF: the grid {0, 0.1, 0.3}).
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
        class_weight: ``"balanced"``, ``None`` or ``{label: weight}`` (labels left out weigh 1).
        tokens_per_layer: P, tokens per layer of a 3-D ``(N, L * P, D)`` input (default 1).
            A 4-D ``(N, L, P, D)`` input (``cache.load()`` of several poolings) and a cache
            carry their own P; a value that contradicts it is a ConfigError.
        layers: timm-style selection of layers (``None`` all, int k the last k, a list of
            indices or names).
        pooling: the cache poolings to load (``"cls"``, ``["cls", "mean"]``); ``None``: every
            pooling the cache holds (CLS and mean where both exist: T = 2L tokens).
        stream: train out of core (rows read from the memory-mapped cache, same validation,
            selection and refit) instead of loading the cache; ``None``: only when loading
            would exceed ``memory_budget``.
        memory_budget: memory budget of a fit on a cache, bytes or a size (``"512MB"``,
            ``"4GiB"``); ``None``: half the available RAM. A cache whose in-memory fit needs
            more (about 3x its selected features) is streamed; so is prediction on it.
        device: ``"cpu"``, ``"cuda"``...; ``None``: CUDA when available.
        random_state: int, ``RandomState`` or ``None``.
        verbose: tqdm progress bars.
        control: also fit the same probe, on the same validation split, to a control task
            (Hewitt & Liang, 2019: every sample type gets a fixed random label; see
            :mod:`probekit.estimator.control`); sets ``control_scores_`` and ``selectivity_``.

    Fitted attributes:
        classes_ ``(C,)``, n_layers_, dims_ (L widths), tokens_per_layer_, layer_names_,
        model_ (:class:`ProbeModel`, eval mode, on ``device_``), device_, best_params_,
        history_, best_score_ (validation balanced accuracy or ``None``), grid_scores_ ``(G,)``
        and grid_configs_ (every configuration of the grid, ``None`` for L-BFGS),
        layer_scores_ ``(L,)`` (validation balanced accuracy of each layer's probe) and
        selected_layer_ (heads with per-layer logits), feature_mean_ ``(T, D)``,
        n_features_in_ (``T * D``). With ``control=True``: control_scores_ ``(L,)`` (the
        control probe's validation balanced accuracy per layer), selectivity_ ``(L,)``
        (``layer_scores_ - control_scores_``), control_estimator_ (the fitted control probe).
    """

    _estimator_type = "classifier"

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
        class_weight: str | Mapping[Any, float] | None = "balanced",
        tokens_per_layer: int | None = None,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        stream: bool | None = None,
        memory_budget: int | str | None = None,
        device: str | None = None,
        random_state: Any = None,
        verbose: bool = False,
        control: bool = False,
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
        self.memory_budget = memory_budget
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.control = control

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        layer_names: Sequence[str] | None = None,
        sample_keys: Sequence[Any] | None = None,
        groups: Any = None,
    ) -> ProbeClassifier:
        """Train the probe (see :meth:`ProbeEstimator.fit`), and with ``control=True`` its
        control probe.

        Args:
            X, y, layer_names, groups: as :meth:`ProbeEstimator.fit`.
            sample_keys: ``control=True`` only: ``N`` sample types (texts, content hashes)
                for the control task; a text cache's texts by default.

        Raises:
            ConfigError: control without sample keys (plain arrays) or with ``val_size=0``;
                ``sample_keys`` without control.
        """
        keys = control_keys(self, X, sample_keys)
        if keys is None:
            return super().fit(X, y, layer_names=layer_names, groups=groups)
        if self._settings().val_size <= 0:
            raise ConfigError("control=True compares validation scores: val_size must be > 0")
        super().fit(X, y, layer_names=layer_names, groups=groups)
        y = np.asarray(X.labels) if _is_cache(X) and y is None else y
        fit_control(self, X, y, keys, layer_names, self._seed(), groups)
        return self

    def _strata(self, y: Tensor) -> np.ndarray:
        """Labels the validation split is stratified on: ``y``, or a control task's task labels."""
        strata = getattr(self, "_stratify", None)
        return y.cpu().numpy() if strata is None else strata

    def _fit_linear(
        self,
        x: Tensor,
        norm: FeatureNorm,
        y: Tensor,
        s: TrainConfig,
        variant: dict[str, Any],
        seed: int,
        device: torch.device,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Per-layer L-BFGS (scikit-learn's objective); layer chosen on validation."""
        n_classes = len(self.classes_)
        xl = _layer_major(x, norm, self.n_layers_, self.tokens_per_layer_, device)  # (L, N, F)
        y = y.to(device)
        opts: dict[str, Any] = {
            "n_classes": n_classes,
            "C": float(s.C),
            "class_weight": s.class_weight,
            "max_iter": int(s.max_iter),
            "verbose": bool(self.verbose),
        }
        history: list[dict[str, Any]] = []
        self.layer_scores_, self.selected_layer_, self.best_score_ = None, self.n_layers_ - 1, None
        sol = None
        if s.val_size > 0:
            tr, va = (
                torch.from_numpy(i).to(device)
                for i in stratified_split(
                    self._strata(y), float(s.val_size), seed, getattr(self, "_groups", None)
                )
            )
            sol = fit_linear_probes(xl[:, tr], y[tr], **opts)
            pred = (torch.bmm(xl[:, va], sol.weight) + sol.bias[:, None]).argmax(-1)  # (L, n_val)
            acc = selection_accuracy(pred, y[va], n_classes, s.class_weight).cpu().numpy()
            self.layer_scores_ = acc
            self.selected_layer_ = int(np.argmax(acc))
            self.best_score_ = float(acc[self.selected_layer_])
            history += _linear_rows("search", sol, acc)
        if sol is None or s.refit:
            sol = fit_linear_probes(xl, y, init=sol, **opts)
            history += _linear_rows("refit", sol, None)
        del xl
        return finish_linear(self, s, variant, sol, history)

    # ----------------------------------------------------------------- task hooks

    def _encode_y(self, y: Any, n: int) -> Tensor:
        """Set ``classes_``; the class indices ``(N,)`` int64."""
        self.classes_, y_idx = encode_labels(y, n)
        return torch.from_numpy(y_idx)

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _resolve_targets(self, s: TrainConfig) -> TrainConfig:
        """A ``class_weight`` mapping ``{label: weight}`` as per-class weights in ``classes_``
        order (labels it leaves out weigh 1, as in scikit-learn)."""
        if not isinstance(self.class_weight, Mapping):
            return s
        known = set(self.classes_.tolist())
        stray = [k for k in self.class_weight if k not in known]
        if stray:
            raise ConfigError(
                f"class_weight names label(s) {stray} that y does not hold; y's classes: "
                f"{self.classes_.tolist()}"
            )
        weights = [float(self.class_weight.get(c, 1.0)) for c in self.classes_.tolist()]
        return dataclasses.replace(s, class_weight=weights)

    def _task_state(self) -> dict[str, Any]:
        return {
            "classes": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str if self.classes_.dtype != object else "object",
        }

    def _load_task_state(self, config: Mapping[str, Any]) -> None:
        dtype = None if config["classes_dtype"] == "object" else np.dtype(config["classes_dtype"])
        self.classes_ = np.asarray(config["classes"], dtype=dtype if dtype is not None else object)

    def _fit_stream(
        self,
        cache: Any,
        y: Any,
        s: TrainConfig,
        variants: list[dict[str, Any]],
        seed: int,
        device: torch.device,
        budget: int,
    ) -> ProbeClassifier:
        """Train out of core: same split, selection and refit as in memory."""
        return fit_from_stream(self, cache, y, s, variants, seed, device, budget)

    # ----------------------------------------------------------------- predict

    def decision_function(self, X: Any) -> np.ndarray:
        """Class scores: logits ``(N, C)``; with two classes, as scikit-learn's classifiers,
        ``(N,)`` scores of ``classes_[1]`` (its logit minus the other's: positive -> class 1,
        and ``predict_proba[:, 1] == sigmoid(score)``)."""
        z = np.concatenate([o.logits.float().cpu().numpy() for o in self._outputs(X)])
        z = z.astype(np.float64)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def decision_layers(self, X: Any) -> np.ndarray:
        """Per-layer class scores (heads with one probe per layer, e.g. ``"linear"``,
        ``"diff-means"``): ``(N, L, C)`` logits; with two classes ``(N, L)``, each layer's
        :meth:`decision_function` (its ``classes_[1]`` logit minus the other's)."""
        outs = []
        for o in self._outputs(X):
            if o.layer_logits is None:
                raise ConfigError(f"head {self.head!r} has no per-layer logits")
            outs.append(o.layer_logits.float().cpu().numpy())
        z = np.concatenate(outs).astype(np.float64)
        return z[..., 1] - z[..., 0] if z.shape[-1] == 2 else z

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
                raise ConfigError(f"head {self.head!r} has no per-layer logits")
            outs.append(o.layer_logits.argmax(-1).cpu().numpy())
        return self.classes_[np.concatenate(outs)]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Accuracy on ``(X, y)``; ``y`` defaults to ``X.labels`` for a FeatureCache."""
        if y is None:
            if not _is_cache(X):
                raise DataError("y is required unless X is a FeatureCache")
            y = np.asarray(X.labels)
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))
