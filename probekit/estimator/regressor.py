"""``ProbeRegressor``: a probe head that predicts continuous targets, with the scikit-learn
regressor contract.

::

    reg = ProbeRegressor(head="linear", alpha=1.0).fit(X, y)   # y (N,) or (N, K) floats
    reg.predict(X); reg.score(X, y)          # R²
    reg.spearman(X, y)                       # Spearman rho of predictions and targets
    reg.layer_scores_                        # (L,) validation R² of every layer's probe
    reg.layer_weights(X)                     # (N, L) the head's own attribution (fusion heads)

The same heads (the registry, ``C = K`` outputs), the same input normalisation and the same
training loop as :class:`~probekit.estimator.ProbeClassifier`, with a mean-squared-error loss on
standardised targets (mean 0, variance 1 per target on the training samples; predictions are
transformed back) and selection by validation R² on a random split.

The ``"linear"`` head's default (``solver="lbfgs"``, the exact per-layer solver) is ridge
regression in closed form: each layer minimises ``||y - X w - b||² + alpha ||w||²`` over the
features *as the head sees them*, i.e. standardised per feature on the training samples. That
is ``make_pipeline(StandardScaler(), Ridge(alpha=alpha))`` of scikit-learn, layer by layer; the
target standardisation does not change it (ridge is equivariant to scaling the target).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..probes import create_probe
from ..train import TrainConfig
from ..train.metrics import grouped_split
from ..train.regression import fit_ridge_probes, r2_batched, random_split
from .base import ProbeEstimator
from .inputs import _is_cache
from .model import FeatureNorm, _layer_major, _load_linear, _set_selected_layer

__all__ = ["ProbeRegressor", "spearman"]


def spearman(y_true: Any, y_pred: Any) -> float:
    """Spearman rank correlation of two ``(N,)`` vectors (``(N, K)``: the mean over targets).

    Ties get average ranks (``scipy.stats.spearmanr``); a constant vector gives ``nan``.
    """
    from scipy.stats import spearmanr

    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    if t.shape != p.shape:
        raise DataError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = [spearmanr(t[:, k], p[:, k]).statistic for k in range(t.shape[1])]
    return float(np.mean(rhos))


class ProbeRegressor(ProbeEstimator):
    """A probe head regressing continuous targets from cached layer features.

    Args:
        head: registered head name (``probekit.probes.list_probes()``).
        head_params: the head's own keyword arguments; a list value makes that argument a grid
            axis.
        alpha: L2 strength of the ``"linear"`` head's exact ridge solver (see the module
            docstring for the objective); ``>= 0``.
        lr, weight_decay, dropout, epochs, batch_size, patience, refit, jitter: as
            :class:`~probekit.estimator.ProbeClassifier` (``None``: the head's recipe).
        val_size: random validation fraction used to pick configs, layers and epochs (by R²);
            0 disables validation.
        solver: ``"lbfgs"`` (``"linear"`` only: the exact ridge solution), ``"adamw"`` or
            ``"adam"`` (minibatch training with the MSE loss).
        tokens_per_layer, layers, pooling, device, random_state, verbose: as
            :class:`~probekit.estimator.ProbeClassifier`.

    Fitted attributes:
        n_targets_ (K), target_mean_ ``(K,)`` and target_scale_ ``(K,)`` (the standardisation;
        a constant target gets scale 1), n_layers_, dims_, tokens_per_layer_, layer_names_,
        model_ (outputs standardised targets), device_, best_params_, history_, best_score_
        (validation R² or ``None``), layer_scores_ ``(L,)`` (validation R² per layer, heads with
        per-layer outputs) and selected_layer_, feature_mean_, n_features_in_.
    """

    _task = "regression"
    _estimator_type = "regressor"
    stream = False  # not a parameter: training from a streamed cache is classification-only
    target_mean_: np.ndarray
    target_scale_: np.ndarray

    def __init__(
        self,
        head: str = "linear",
        head_params: Mapping[str, Any] | None = None,
        *,
        alpha: float = 1.0,
        lr: float | Sequence[float] | None = None,
        weight_decay: float | Sequence[float] | None = None,
        dropout: float | Sequence[float] | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        val_size: float | None = None,
        patience: int | None = None,
        refit: bool | None = None,
        solver: str | None = None,
        jitter: bool | float | None = None,
        tokens_per_layer: int | None = None,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        device: str | None = None,
        random_state: Any = None,
        verbose: bool = False,
    ) -> None:
        self.head = head
        self.head_params = head_params
        self.alpha = alpha
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.val_size = val_size
        self.patience = patience
        self.refit = refit
        self.solver = solver
        self.jitter = jitter
        self.tokens_per_layer = tokens_per_layer
        self.layers = layers
        self.pooling = pooling
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _settings(self) -> TrainConfig:
        alpha = self.alpha
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, (int, float, np.number))
            or not (np.isfinite(alpha) and alpha >= 0)
        ):
            raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
        return super()._settings()

    # ----------------------------------------------------------------- task hooks

    def _encode_y(self, y: Any, n: int) -> Tensor:
        """Set the target standardisation; the standardised targets ``(N, K)`` float32."""
        if isinstance(y, Tensor):
            y = y.detach().cpu().numpy()
        arr = np.asarray(y)
        if arr.dtype == object:  # numbers held as objects are numbers
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise DataError("regression targets must be numbers, got dtype object") from None
        if arr.dtype.kind not in "biuf":
            raise DataError(f"regression targets must be numbers, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2):
            raise DataError(f"y must be (N,) or (N, K), got shape {arr.shape}")
        if arr.shape[0] != n:
            raise DataError(f"X has {n} samples but y has {arr.shape[0]}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise DataError("y contains NaN or infinity")
        self.target_ndim_ = arr.ndim
        y2 = arr.reshape(n, -1)
        self.n_targets_ = y2.shape[1]
        self.target_mean_ = y2.mean(0)
        std = y2.std(0)
        self.target_scale_ = np.where(std > 1e-12, std, 1.0)
        return torch.from_numpy((y2 - self.target_mean_) / self.target_scale_).float()

    def _n_outputs(self) -> int:
        return int(self.n_targets_)

    def _task_state(self) -> dict[str, Any]:
        return {
            "task": "regression",
            "target_ndim": int(self.target_ndim_),
            "target_mean": self.target_mean_.tolist(),
            "target_scale": self.target_scale_.tolist(),
        }

    def _load_task_state(self, config: Mapping[str, Any]) -> None:
        self.target_ndim_ = int(config["target_ndim"])
        self.target_mean_ = np.asarray(config["target_mean"], dtype=np.float64)
        self.target_scale_ = np.asarray(config["target_scale"], dtype=np.float64)
        self.n_targets_ = int(self.target_mean_.size)

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
        """Per-layer ridge in closed form; the layer chosen by validation R²."""
        xl = _layer_major(x, norm, self.n_layers_, self.tokens_per_layer_, device)  # (L, N, F)
        y = y.to(device)
        alpha = float(self.alpha)
        history: list[dict[str, Any]] = []
        self.layer_scores_, self.selected_layer_, self.best_score_ = None, self.n_layers_ - 1, None
        sol = None
        if s.val_size > 0:
            tr, va = (
                torch.from_numpy(i).to(device)
                for i in (
                    random_split(x.shape[0], float(s.val_size), seed)
                    if getattr(self, "_groups", None) is None
                    else grouped_split(None, self._groups, float(s.val_size), seed, False)
                )
            )
            sol = fit_ridge_probes(xl[:, tr], y[tr], alpha)
            pred = torch.bmm(xl[:, va], sol.weight) + sol.bias[:, None]  # (L, n_val, K)
            r2 = r2_batched(pred, y[va]).cpu().numpy()
            self.layer_scores_ = r2
            self.selected_layer_ = int(np.argmax(r2))
            self.best_score_ = float(r2[self.selected_layer_])
            history += [
                {"phase": "search", "layer": j, "val_r2": float(v)} for j, v in enumerate(r2)
            ]
        if sol is None or s.refit:
            sol = fit_ridge_probes(xl, y, alpha)
            history += [{"phase": "refit", "layer": j} for j in range(self.n_layers_)]
        del xl
        head = create_probe(self.head, **self._head_kwargs(variant))
        _load_linear(head, sol.weight.cpu(), sol.bias.cpu())
        _set_selected_layer(head, self.selected_layer_)
        self.best_params_ = {"solver": "ridge", "alpha": alpha}
        self.history_ = history
        self.best_epoch_ = None
        self.grid_scores_ = None
        return head, dict(variant)

    # ----------------------------------------------------------------- predict

    def _unscale(self, z: np.ndarray) -> np.ndarray:
        """Standardised outputs ``(..., K)`` -> targets ``(...)`` (1-D y) or ``(..., K)``."""
        out = z.astype(np.float64) * self.target_scale_ + self.target_mean_
        return out[..., 0] if self.target_ndim_ == 1 else out

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets ``(N,)`` (or ``(N, K)`` when fitted on ``(N, K)`` targets)."""
        return self._unscale(
            np.concatenate([o.logits.float().cpu().numpy() for o in self._outputs(X)])
        )

    def predict_layers(self, X: Any) -> np.ndarray:
        """Per-layer predictions ``(N, L)`` (``(N, L, K)``), heads with one probe per layer."""
        outs = []
        for o in self._outputs(X):
            if o.layer_logits is None:
                raise ConfigError(f"head {self.head!r} has no per-layer outputs")
            outs.append(o.layer_logits.float().cpu().numpy())
        return self._unscale(np.concatenate(outs))

    def _targets(self, X: Any, y: Any) -> Any:
        if y is None:
            if not _is_cache(X):
                raise DataError("y is required unless X is a FeatureCache")
            y = np.asarray(X.labels)
        return y

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """R² on ``(X, y)`` (scikit-learn's ``r2_score``, averaged over targets)."""
        from sklearn.metrics import r2_score

        return float(r2_score(self._targets(X, y), self.predict(X), sample_weight=sample_weight))

    def spearman(self, X: Any, y: Any = None) -> float:
        """Spearman rho between :meth:`predict` and ``y`` (mean over targets)."""
        return spearman(self._targets(X, y), self.predict(X))
