"""Linear baselines: per-layer probes, one probe over all layers, and an ELMo scalar mix.

All three read standardised features (``input_norm = "standardize"``: train-split mean and std
per token and feature), so that one learning rate and weight decay suit every layer whatever
the scale of its activations. Layers narrower than D are zero-padded; the weights that would
read the padding are masked to zero.

Shapes: x ``(B, T, D)`` with T = L * P; the P tokens of a layer are read as one vector of
width P * D (``x.reshape(B, L, P * D)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import GroupLinear, ProbeHead, ProbeOutput
from .registry import register_probe

__all__ = ["ConcatHead", "LinearHead", "ScalarMixHead"]


@register_probe("linear")
class LinearHead(ProbeHead):
    """One independent linear probe per layer, trained together as one batched problem.

    ``layer_logits[:, l] = X_l @ W_l + b_l`` with ``W`` of shape ``(L, P * D, C)`` (one einsum);
    training sums one loss per layer, so every probe is fitted as if alone. ``logits`` is the
    probe of ``selected_layer`` (a persistent int buffer, default L - 1, that the estimator sets
    to the best validation layer after fit).

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P; each layer's probe reads its P tokens concatenated.
        dropout: dropout on the input features during training.

    Returns (forward):
        ``ProbeOutput(logits (B, C), layer_weights=None, layer_logits (B, L, C))``.
    """

    input_norm = "standardize"

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        self.dropout = nn.Dropout(dropout)
        self.probes = GroupLinear(self.feature_mask(per_layer=True), n_classes)
        self.register_buffer("selected_layer", torch.tensor(n_layers - 1, dtype=torch.long))

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)`` and layer_logits ``(B, L, C)``."""
        x = self.dropout(x).reshape(x.shape[0], self.n_layers, -1)  # (B, L, P*D)
        layer_logits = self.probes(x)  # (B, L, C)
        return ProbeOutput(logits=layer_logits[:, self.selected_layer], layer_logits=layer_logits)


@register_probe("concat")
class ConcatHead(ProbeHead):
    """One linear probe over all layers concatenated: ``logits = concat_l X_l @ W + b``.

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P.
        dropout: dropout on the input features during training.

    Returns (forward):
        ``ProbeOutput(logits (B, C), layer_weights=None)``; ``W`` is ``(T * D, C)`` masked.
    """

    input_norm = "standardize"

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        self.dropout = nn.Dropout(dropout)
        self.probe = GroupLinear(self.feature_mask().reshape(1, -1), n_classes)

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)``."""
        x = self.dropout(x).reshape(x.shape[0], 1, -1)  # (B, 1, T*D)
        return ProbeOutput(logits=self.probe(x)[:, 0])


@register_probe("scalar-mix")
class ScalarMixHead(ProbeHead):
    """ELMo scalar mix (Peters et al., 2018): ``h = gamma * sum_l softmax(w)_l X_l``, ``logits = h @ W + b``.

    The layer weights ``softmax(w)`` ``(L,)`` are learned but the same for every input. Narrow
    layers are zero-padded to D, which makes the sum well-defined (a narrow layer contributes
    only to its first features).

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P; a layer's P tokens are mixed as one vector of width P * D.
        dropout: dropout on the input features during training.

    Returns (forward):
        ``ProbeOutput(logits (B, C), layer_weights (B, L))``, the weights broadcast over B.
    """

    input_norm = "standardize"

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        self.dropout = nn.Dropout(dropout)
        self.mix_logits = nn.Parameter(torch.zeros(n_layers))  # w (L,)
        self.gamma = nn.Parameter(torch.ones(()))
        self.classifier = nn.Linear(tokens_per_layer * self.max_dim, n_classes)

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)`` and layer_weights ``(B, L)``."""
        x = self.dropout(x).reshape(x.shape[0], self.n_layers, -1)  # (B, L, P*D)
        weights = self.mix_logits.softmax(0)  # (L,)
        h = self.gamma * torch.einsum("l,blk->bk", weights, x)  # (B, P*D)
        return ProbeOutput(logits=self.classifier(h), layer_weights=weights.expand(x.shape[0], -1))
