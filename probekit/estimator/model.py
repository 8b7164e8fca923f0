"""``model_`` of a fitted probe: the input normalisation (:class:`FeatureNorm`) and the head
(:class:`ProbeModel`), plus the helpers that fill them.

Shapes: ``B`` batch, ``N`` samples, ``T`` tokens (``L`` layers x ``P`` poolings), ``D`` features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..probes.base import ProbeOutput

__all__ = ["FeatureNorm", "ProbeModel", "fit_feature_norm"]


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
            raise ConfigError(f"input_norm must be 'standardize', 'l2' or 'none', got {mode!r}")
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


def fit_feature_norm(mode: str, x: Tensor, chunk: int = 8192) -> FeatureNorm:
    """Fit a :class:`FeatureNorm` of ``mode`` on ``x`` ``(N, T, D)`` (float64 two-pass stats)."""
    norm = FeatureNorm(mode, x.shape[1], x.shape[2])
    if mode == "standardize":
        mean = sum(c.sum(0, dtype=torch.float64) for c in x.split(chunk)) / x.shape[0]
        var = torch.zeros_like(mean)
        for c in x.split(chunk):
            d = c.double().sub_(mean)  # one float64 temporary per chunk
            var += d.square_().sum(0)
        var /= x.shape[0]
        std = var.sqrt()
        norm.mean.copy_(mean.float())
        norm.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)).float())
    return norm


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
            row["val_balanced_accuracy"] = float(acc[layer])
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


def finish_linear(
    clf: Any, s: Any, variant: dict[str, Any], sol: Any, history: list[dict[str, Any]]
) -> tuple[nn.Module, dict[str, Any]]:
    """The ``linear`` head from per-layer solutions ``sol`` (``weight (L, F, C)``, ``bias (L, C)``,
    ``n_iter``), with ``clf``'s fitted attributes set as every fit of it (in memory or streamed)
    leaves them; ``clf.selected_layer_`` is already chosen."""
    from ..probes import create_probe

    head = create_probe(clf.head, **clf._head_kwargs(variant))
    _load_linear(head, sol.weight.cpu(), sol.bias.cpu())
    _set_selected_layer(head, clf.selected_layer_)
    clf.best_params_ = {"solver": "lbfgs", "C": float(s.C), "max_iter": int(s.max_iter)}
    clf.history_ = history
    clf.best_epoch_ = None
    clf.grid_scores_ = None
    clf.grid_configs_ = None
    clf.n_iter_ = sol.n_iter
    return head, dict(variant)
