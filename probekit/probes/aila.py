"""AILA aggregators over frozen layers (Arch 1: linear scoring; Arch 2: scaled dot-product).

There is no public code: this follows the paper's description of both architectures.
Features are standardised (``input_norm = "standardize"``: train-split mean and std per token
and feature) before the per-layer adapters ``h~_j = P_j X_j`` (d = 64; the P tokens of a
layer are concatenated first).

Layers are processed in depth order j = 0..L-1. Layer j chooses among its candidates: the
processed outputs ``h_i`` of every earlier layer i < j, and itself (``h~_j``, on the diagonal)::

    alpha_j = softmax over candidates                     (B, j + 1)
    a_j     = weighted sum of the candidates' values       (B, d)
    h_j     = LayerNorm(ReLU(h~_j + a_j))                  (B, d)
    logits  = Linear(h_{L-1})                              (B, C)

One LayerNorm is shared by all layers. Because ``h_j`` feeds every later layer, the loop over
depth is a true recurrence (each step is vectorised over the earlier layers).

Outputs: ``layer_map`` ``(B, L, L)``: row j holds alpha_j (head-averaged) in columns 0..j (column
j = the self-candidate), zeros above the diagonal, each row sums to 1. ``layer_weights``
``(B, L)`` is its last row: how the last layer mixes every earlier layer and itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import register_probe
from .base import GroupLinear, ProbeHead, ProbeOutput

__all__ = ["AILAAttention", "AILALinear"]


class _AILA(ProbeHead):
    """Shared adapters, recurrence, norm and classifier of both architectures."""

    input_norm = "standardize"

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int,
        dim: int,
        n_heads: int,
        dropout: float,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be a multiple of n_heads={n_heads}")
        self.dim, self.n_heads, self.head_dim = dim, n_heads, dim // n_heads
        self.adapters = GroupLinear(self.feature_mask(per_layer=True), dim)  # (L, P*D, d)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, n_classes)

    def mix(self, j: int, h_self: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        """Aggregate layer j's candidates.

        Args:
            j: layer index.
            h_self: ``(B, d)`` the adapted features ``h~_j``.
            prev: ``(B, j, d)`` the processed outputs ``h_i`` of the earlier layers.

        Returns:
            ``a_j`` ``(B, d)`` and the head-averaged weights ``(B, j + 1)`` (self last).
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)``, layer_weights ``(B, L)``, layer_map ``(B, L, L)``."""
        b, n = x.shape[0], self.n_layers
        h_tilde = self.adapters(x.reshape(b, n, -1))  # (B, L, d)
        hs: list[Tensor] = []
        rows: list[Tensor] = []
        for j in range(n):
            prev = torch.stack(hs, 1) if hs else h_tilde.new_zeros(b, 0, self.dim)  # (B, j, d)
            a, alpha = self.mix(j, h_tilde[:, j], prev)
            hs.append(self.norm(F.relu(h_tilde[:, j] + a)))  # h_j (B, d)
            rows.append(F.pad(alpha, (0, n - j - 1)))  # (B, L)
        layer_map = torch.stack(rows, 1)  # (B, L, L)
        logits = self.classifier(self.dropout(hs[-1]))
        return ProbeOutput(logits=logits, layer_weights=layer_map[:, -1], layer_map=layer_map)


@register_probe("aila-linear")
class AILALinear(_AILA):
    """AILA Arch 1, linear scoring.

    ``v_{j,i} = W_{j,i} h_i`` (one ``d x d`` matrix per pair i < j); the candidates of layer j
    are ``[v_{j,0}, ..., v_{j,j-1}, h~_j]``. Each candidate is split into H segments of width
    d / H (the segments of ``u_j = h~_j || v_{j,0} || ...``); head k scores candidate c as
    ``<c^(k), w_j^(k)>`` and softmaxes over the candidates; ``a_j = mean_k sum_c alpha^(k)_c c``.

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P.
        dim: d (64).
        n_heads: H (1).
        dropout: dropout on ``h_{L-1}`` before the classifier.
    """

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        dim: int = 64,
        n_heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer, dim, n_heads, dropout)
        n_pairs = n_layers * (n_layers - 1) // 2  # W_{j,i} packed row by row: j(j-1)/2 + i
        bound = 1 / math.sqrt(dim)
        self.pair_weight = nn.Parameter(torch.empty(n_pairs, dim, dim).uniform_(-bound, bound))
        bound = 1 / math.sqrt(self.head_dim)
        self.score = nn.Parameter(
            torch.empty(n_layers, n_heads, self.head_dim).uniform_(-bound, bound)
        )

    def mix(self, j: int, h_self: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        start = j * (j - 1) // 2
        v = torch.einsum("bid,ide->bie", prev, self.pair_weight[start : start + j])  # (B, j, d)
        cand = torch.cat([v, h_self.unsqueeze(1)], 1)  # (B, j+1, d)
        seg = cand.unflatten(-1, (self.n_heads, self.head_dim))  # (B, j+1, H, d/H)
        alpha = torch.einsum("bchk,hk->bch", seg, self.score[j]).softmax(1).mean(-1)  # (B, j+1)
        return torch.einsum("bc,bcd->bd", alpha, cand), alpha


@register_probe("aila-attention")
class AILAAttention(_AILA):
    """AILA Arch 2, scaled dot-product attention over earlier layers.

    ``q_j = W_Q h~_j``; for every candidate c in ``[h_0, ..., h_{j-1}, h~_j]``:
    ``k_c = W_K c``, ``v_c = W_V c`` (W_Q, W_K, W_V shared over layers);
    ``alpha_{j,c} = softmax_c(q_j . k_c / sqrt(d_k))`` per head; ``a_j = concat_h sum_c alpha v``.
    Computed without projecting every candidate: ``q . W_K c = (W_K^T q) . c`` and
    ``sum_c alpha_c W_V c = W_V sum_c alpha_c c`` (per head), which is exact.

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P.
        dim: d (64).
        n_heads: H (1; 4 gave about 1% in the paper); d_k = d / H.
        dropout: dropout on ``h_{L-1}`` before the classifier.
    """

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        dim: int = 64,
        n_heads: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer, dim, n_heads, dropout)
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)

    def mix(self, j: int, h_self: Tensor, prev: Tensor) -> tuple[Tensor, Tensor]:
        b, heads, dk = h_self.shape[0], self.n_heads, self.head_dim
        cand = torch.cat([prev, h_self.unsqueeze(1)], 1)  # (B, j+1, d)
        q = self.w_q(h_self).view(b, heads, dk)  # (B, H, d_k)
        w_k = self.w_k.weight.view(heads, dk, self.dim)  # rows of W_K per head
        q_in = torch.einsum("bhk,hkd->bhd", q, w_k)  # W_K^T q (B, H, d)
        alpha = (torch.einsum("bhd,bcd->bhc", q_in, cand) / math.sqrt(dk)).softmax(
            -1
        )  # (B, H, j+1)
        mixed = torch.einsum("bhc,bcd->bhd", alpha, cand)  # (B, H, d)
        w_v = self.w_v.weight.view(heads, dk, self.dim)
        a = torch.einsum("bhd,hkd->bhk", mixed, w_v).reshape(b, self.dim)  # (B, d)
        return a, alpha.mean(1)
