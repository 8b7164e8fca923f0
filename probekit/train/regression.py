"""Regression pieces of the training loops: the MSE loss, R² scores, a random split, and the
closed-form ridge solution of per-layer linear probes.

Targets are ``(N, K)`` floats (the estimator standardises them first); a head's ``C`` outputs
are the ``K`` predicted targets. Shapes: ``G`` configs, ``B`` batch, ``L`` layers, ``F``
features per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = ["RidgeSolution", "fit_ridge_probes", "mse_loss", "r2_batched", "random_split"]

TASKS = ("classification", "regression")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def random_split(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train / validation sample indices (regression: there are no classes to stratify).

    Args:
        n: number of samples.
        val_size: fraction in (0, 1); at least one sample goes to each side.
        seed: seed of the shuffle.

    Returns:
        ``(train_idx, val_idx)`` sorted int64 index arrays.
    """
    if not 0.0 < val_size < 1.0:
        raise ConfigError(f"val_size must be in (0, 1), got {val_size}")
    if n < 2:
        raise DataError(
            f"need at least 2 samples to hold some out for validation, got n_samples={n}"
        )
    k = min(max(int(round(val_size * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]).astype(np.int64), np.sort(perm[:k]).astype(np.int64)


def mse_loss(out: Mapping[str, Tensor], y: Tensor) -> Tensor:
    """Mean squared error per config.

    Args:
        out: ``logits (G, B, K)`` and optionally ``layer_logits (G, B, L, K)``; with layer
            logits the loss is the sum over layers of each layer's MSE (as the classification
            loss sums each layer's cross-entropy).
        y: ``(B, K)`` targets.

    Returns:
        ``(G,)`` losses (mean over samples and targets).
    """
    if "layer_logits" in out:
        err = out["layer_logits"].float() - y[None, :, None, :]  # (G, B, L, K)
        return err.pow(2).mean(dim=(1, 3)).sum(-1)
    return (out["logits"].float() - y[None]).pow(2).mean(dim=(1, 2))


def r2_batched(pred: Tensor, y: Tensor) -> Tensor:
    """Coefficient of determination of many prediction sets at once.

    ``R² = 1 - sum (y - pred)² / sum (y - mean y)²`` per target, averaged over the ``K``
    targets (scikit-learn's ``r2_score`` with ``multioutput="uniform_average"``). A constant
    target scores 1 when predicted exactly, else 0, as in scikit-learn.

    Args:
        pred: ``(..., N, K)`` predictions.
        y: ``(N, K)`` targets.

    Returns:
        ``(...)`` float64 R² values.
    """
    y64 = y.double()
    ss_res = (pred.double() - y64).pow(2).sum(-2)  # (..., K)
    ss_tot = (y64 - y64.mean(0)).pow(2).sum(0)  # (K,)
    safe = torch.where(ss_tot > 0, ss_tot, torch.ones_like(ss_tot))
    r2 = torch.where(
        ss_tot > 0,
        1 - ss_res / safe,
        torch.where(ss_res == 0, torch.ones_like(ss_res), torch.zeros_like(ss_res)),
    )
    return r2.mean(-1)


@torch.no_grad()
def evaluate_regression(
    preds: list[Tensor], layer_preds: list[Tensor], y: Tensor
) -> dict[str, Tensor]:
    """Validation scores of every config from chunks of predictions.

    Args:
        preds: chunks of ``(G, b, K)`` predictions.
        layer_preds: chunks of ``(G, b, L, K)`` per-layer predictions (empty when the head has
            none).
        y: ``(n, K)`` validation targets.

    Returns:
        ``r2 (G,)``, plus ``layer_r2 (G, L)`` for heads with layer logits (then ``r2`` is the
        best layer's, as classification scores the best layer).
    """
    if layer_preds:
        lp = torch.cat(layer_preds, 1).transpose(1, 2)  # (G, L, n, K)
        layer_r2 = r2_batched(lp, y)
        return {"layer_r2": layer_r2, "r2": layer_r2.max(-1).values}
    return {"r2": r2_batched(torch.cat(preds, 1), y)}


@dataclass
class RidgeSolution:
    """Per-layer ridge regressions.

    Attributes:
        weight: ``(L, F, K)``.
        bias: ``(L, K)``.
    """

    weight: Tensor
    bias: Tensor


def fit_ridge_probes(X: Tensor, Y: Tensor, alpha: float = 1.0) -> RidgeSolution:
    """Per-layer ridge regression in closed form: scikit-learn's ``Ridge(alpha)`` objective.

    Minimises per layer ``||Y - X W - 1 b^T||² + alpha ||W||²_F`` (sums over samples, the
    intercept not penalised), exactly the objective of ``sklearn.linear_model.Ridge(alpha=alpha,
    fit_intercept=True)`` on the same ``X``: ``X`` and ``Y`` are centred, then
    ``W = (Xc^T Xc + alpha I)^{-1} Xc^T Yc`` (or the dual form ``Xc^T (Xc Xc^T + alpha I)^{-1} Yc``
    when ``N < F``), ``b = mean(Y) - mean(X) W``; solved in float64. ``alpha = 0`` is least
    squares (minimum-norm solution).

    Scaling ``Y`` by a constant scales ``W`` and ``b`` by it and leaves the objective's
    minimiser otherwise unchanged, so fitting standardised targets and transforming back is
    the same model as fitting the raw targets.

    Args:
        X: ``(L, N, F)`` features, layer-major (as the linear head sees them, i.e. normalised).
        Y: ``(N, K)`` targets.
        alpha: L2 strength, ``>= 0``.

    Returns:
        A :class:`RidgeSolution` (float32, on ``X``'s device).
    """
    if not (alpha >= 0 and np.isfinite(alpha)):
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha}")
    L, n, f = X.shape
    Y64 = Y.to(X.device, torch.float64).reshape(n, -1)
    y_mean = Y64.mean(0)
    Yc = Y64 - y_mean
    weights, biases = [], []
    for layer in range(L):
        x = X[layer].double()
        x_mean = x.mean(0)
        xc = x - x_mean
        if alpha == 0:
            w = torch.linalg.lstsq(xc.cpu(), Yc.cpu(), driver="gelsd").solution.to(X.device)
        elif n >= f:
            gram = xc.T @ xc
            gram.diagonal().add_(alpha)
            w = torch.linalg.solve(gram, xc.T @ Yc)
        else:
            gram = xc @ xc.T
            gram.diagonal().add_(alpha)
            w = xc.T @ torch.linalg.solve(gram, Yc)
        weights.append(w)
        biases.append(y_mean - x_mean @ w)
    return RidgeSolution(torch.stack(weights).float(), torch.stack(biases).float())
