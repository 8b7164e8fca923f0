"""LAYA, layer-wise attention aggregator (Vessio et al.; reference gvessio/LAYA, ``LAYA.ipynb``).

Our own PyTorch code following the reference Keras head. Features are standardised
(``input_norm = "standardize"``: train-split mean and std per token and feature), so the
per-layer adapters start from inputs of comparable scale whatever the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import GroupLinear, ProbeHead, ProbeOutput
from .registry import register_probe

__all__ = ["LAYAHead"]


@register_probe("laya")
class LAYAHead(ProbeHead):
    """LAYA: adapters, an MLP scorer over all layers together, softmax over layers.

    ::

        z_i = W_i h_i + b_i                        (B, T, d*)   one adapter per token
        u_i = psi(z_i)                             (B, T, d*)   identity, or shared Dense-GELU x2
        s   = W_2 GELU(W_1 concat_i(u_i) + b_1) + b_2   (B, T)   no query, no key
        alpha = softmax(s / tau)                   (B, T)
        logits = W (sum_i alpha_i z_i) + b         (B, C)

    With P tokens per layer every token is its own "layer" inside the head, and ``alpha`` is
    summed over the tokens of each layer for ``layer_weights`` ``(B, L)``.

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P.
        adapter_dim: d* (96 in the reference).
        hidden: width of the scorer's hidden layer (192).
        tau: softmax temperature, fixed (1.5).
        psi: ``"identity"`` or ``"mlp"`` (two shared Dense(d*) + GELU layers, as the reference).
        dropout: dropout on the aggregated vector before the classifier (0 = the reference).
    """

    input_norm = "standardize"

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        adapter_dim: int = 96,
        hidden: int = 192,
        tau: float = 1.5,
        psi: str = "identity",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        if psi not in ("identity", "mlp"):
            raise ValueError(f"psi must be 'identity' or 'mlp', got {psi!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.adapters = GroupLinear(self.feature_mask(), adapter_dim)  # (T, D, d*)
        self.psi: nn.Module = nn.Identity()
        if psi == "mlp":
            self.psi = nn.Sequential(
                nn.Linear(adapter_dim, adapter_dim), nn.GELU(),
                nn.Linear(adapter_dim, adapter_dim), nn.GELU(),
            )  # fmt: skip
        self.scorer = nn.Sequential(
            nn.Linear(self.n_tokens * adapter_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, self.n_tokens),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(adapter_dim, n_classes)

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)`` and layer_weights ``(B, L)``."""
        z = self.adapters(x)  # (B, T, d*)
        scores = self.scorer(self.psi(z).flatten(1))  # (B, T)
        alpha = (scores / self.tau).softmax(-1)  # (B, T)
        h_agg = (alpha.unsqueeze(-1) * z).sum(1)  # (B, d*)
        logits = self.classifier(self.dropout(h_agg))
        return ProbeOutput(logits=logits, layer_weights=self.fold_tokens(alpha))


# Old names (before every head class ended in ``Head``), kept for one release.
