"""AILA aggregators over frozen layers (Arch 1: linear scoring; Arch 2: scaled dot-product).

Follows the two aggregators of the AILA paper (Claster et al.), for which there is no public
code. Features are standardised (``input_norm = "standardize"``: train-split mean and std per
token and feature) before the per-layer adapters ``h~_j = P_j X_j`` (d = 64; the P tokens of
a layer are concatenated first).

Layers are processed in depth order j = 0..L-1; layer j integrates the processed outputs
``h_i`` of the earlier layers i < j::

    a_j     = aggregate of the earlier layers          (B, d)
    h_j     = LayerNorm(ReLU(h~_j + a_j))              (B, d)
    logits  = Linear(h_{L-1})                          (B, C)

One LayerNorm is shared by all layers. Because ``h_j`` feeds every later layer, the loop over
depth is a true recurrence (each step is vectorised over the earlier layers).

The candidates differ between the architectures:

* Arch 1 (``aila-linear``) scores ``[v_{j,0}, ..., v_{j,j-1}, h~_j]``: the earlier layers and
  layer j itself, so ``layer_map`` row j covers columns 0..j (column j = the self-candidate)
  and layer 0 has only itself.
* Arch 2 (``aila-attention``) attends over the earlier layers only (the paper's Eq. 4-5): row j
  covers columns 0..j-1, and row 0 is all zero (layer 0 has no earlier layer, ``a_0 = 0``).

Outputs: ``layer_map`` ``(B, L, L)``, row j = the head-averaged weights of layer j over its
candidates, zeros elsewhere; every row with candidates sums to 1. ``layer_weights`` ``(B, L)``
is its last row: how the last layer mixes the earlier layers (and itself, in Arch 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import GroupLinear, ProbeHead, ProbeOutput
from .registry import register_probe

__all__ = ["AILAAttentionHead", "AILALinearHead"]


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

    def prepare(self, h_tilde: Tensor) -> Tensor | None:
        """Per-layer work that does not depend on the recurrence, batched over layers.

        Args:
            h_tilde: ``(B, L, d)`` the adapted features of every layer.

        Returns:
            Whatever :meth:`mix` needs as ``ctx`` (``None`` by default).
        """
        return None

    def mix(
        self, j: int, h_self: Tensor, prev: Tensor, ctx: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Aggregate layer j's candidates.

        Args:
            j: layer index.
            h_self: ``(B, d)`` the adapted features ``h~_j``.
            prev: ``(B, j, d)`` the processed outputs ``h_i`` of the earlier layers.
            ctx: the result of :meth:`prepare`.

        Returns:
            ``a_j`` ``(B, d)`` and the head-averaged weights over the candidates, written into
            a ``(B, L)`` row of ``layer_map``.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)``, layer_weights ``(B, L)``, layer_map ``(B, L, L)``."""
        b, n = x.shape[0], self.n_layers
        h_tilde = self.adapters(x.reshape(b, n, -1))  # (B, L, d)
        ctx = self.prepare(h_tilde)
        hs: list[Tensor] = []
        rows: list[Tensor] = []
        for j in range(n):
            prev = torch.stack(hs, 1) if hs else h_tilde.new_zeros(b, 0, self.dim)  # (B, j, d)
            a, row = self.mix(j, h_tilde[:, j], prev, ctx)
            hs.append(self.norm(F.relu(h_tilde[:, j] + a)))  # h_j (B, d)
            rows.append(row)
        layer_map = torch.stack(rows, 1)  # (B, L, L)
        logits = self.classifier(self.dropout(hs[-1]))
        return ProbeOutput(
            logits=logits, layer_weights=self.last_row(layer_map), layer_map=layer_map
        )

    def last_row(self, layer_map: Tensor) -> Tensor:
        """``layer_weights`` ``(B, L)``: the last row of ``layer_map``."""
        return layer_map[:, -1]


@register_probe("aila-linear")
class AILALinearHead(_AILA):
    """AILA Arch 1, linear scoring.

    ``v_{j,i} = W_{j,i} h_i`` (one ``d x d`` matrix per pair i < j); the candidates of layer j
    are ``[v_{j,0}, ..., v_{j,j-1}, h~_j]``. Each candidate is split into H segments of width
    d / H (the segments of ``u_j = h~_j || v_{j,0} || ...``); head k scores candidate c as
    ``<c^(k), w_j^(k)>`` and softmaxes over the candidates; ``a_j = mean_k sum_c alpha^(k)_c c``.

    Shapes: ``pair_weight`` ``(L(L-1)/2, d, d)``, ``score`` ``(L, H, d/H)``; x ``(B, T, D)`` ->
    logits ``(B, C)``, layer_weights ``(B, L)``, layer_map ``(B, L, L)`` (row j over 0..j).

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

    def mix(
        self, j: int, h_self: Tensor, prev: Tensor, ctx: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        start = j * (j - 1) // 2
        v = torch.einsum("bid,ide->bie", prev, self.pair_weight[start : start + j])  # (B, j, d)
        cand = torch.cat([v, h_self.unsqueeze(1)], 1)  # (B, j+1, d)
        seg = cand.unflatten(-1, (self.n_heads, self.head_dim))  # (B, j+1, H, d/H)
        alpha = torch.einsum("bchk,hk->bch", seg, self.score[j]).softmax(1).mean(-1)  # (B, j+1)
        a = torch.einsum("bc,bcd->bd", alpha, cand)
        return a, F.pad(alpha, (0, self.n_layers - j - 1))


@register_probe("aila-attention")
class AILAAttentionHead(_AILA):
    """AILA Arch 2, scaled dot-product attention over the earlier layers (Eq. 4-5).

    Every target layer j has its own query, key and value maps (the key and value maps of
    layer j are shared by its sources i, as in the paper)::

        q_j     = h~_j W_j^Q                                   (B, H, d_k)
        k_{j,i} = h_i W_j^K,  v_{j,i} = h_i W_j^V,  i < j      (B, j, H, d_k)
        alpha_j = softmax_{i<j}(q_j . k_{j,i} / sqrt(d_k))    (B, H, j)   per head
        a_j     = concat_h sum_{i<j} alpha_{j,i} v_{j,i}       (B, d);   a_0 = 0

    The layer itself is never a candidate: ``h~_j`` enters ``a_j`` only through its query.
    ``W^Q, W^K, W^V`` are stacked ``(L, d, d)`` (row j acts as ``x @ W[j]``; row 0 is never used,
    since layer 0 has no earlier layer, and is kept so that row j belongs to layer j), so the
    queries of all layers are one batched matmul. Computed without projecting every candidate:
    ``q . (h W_K) = (W_K q) . h`` and ``sum_i alpha_i h_i W_V = (sum_i alpha_i h_i) W_V``
    (per head), which is exact.

    ``layer_map`` row j is the head-averaged ``alpha_j`` in columns 0..j-1 (row 0 all zero);
    ``layer_weights`` is its last row. With a single layer there is nothing to attend to and
    ``layer_weights`` is 1 on that layer, the only one the prediction reads.

    Shapes: x ``(B, T, D)`` -> logits ``(B, C)``, layer_weights ``(B, L)``, layer_map
    ``(B, L, L)``; ``w_q``, ``w_k``, ``w_v`` ``(L, d, d)``, or ``(1, d, d)`` when tied.

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C.
        tokens_per_layer: P.
        dim: d (64).
        n_heads: H (1; 4 gave about 1% in the paper); d_k = d / H.
        tie_weights: share one ``W^Q, W^K, W^V`` over all target layers (a smaller head than
            the paper's; the stacked parameters are then ``(1, d, d)``).
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
        tie_weights: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer, dim, n_heads, dropout)
        self.tie_weights = bool(tie_weights)
        n_maps = 1 if self.tie_weights else n_layers
        bound = 1 / math.sqrt(dim)  # nn.Linear's default init, per matrix

        def stacked() -> nn.Parameter:
            return nn.Parameter(torch.empty(n_maps, dim, dim).uniform_(-bound, bound))

        self.w_q, self.w_k, self.w_v = stacked(), stacked(), stacked()

    def weights_of(self, j: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(W_j^Q, W_j^K, W_j^V)``, each ``(d, d)``, applied as ``x @ W``."""
        k = 0 if self.tie_weights else j
        return self.w_q[k], self.w_k[k], self.w_v[k]

    def prepare(self, h_tilde: Tensor) -> Tensor:
        """``W_j^K q_j`` per head for every layer at once: ``(B, L, d) -> (B, L, H, d)``."""
        b, n = h_tilde.shape[:2]
        heads, dk = self.n_heads, self.head_dim
        w_q: Tensor = self.w_q
        w_k: Tensor = self.w_k
        if self.tie_weights:
            w_q, w_k = w_q.expand(n, -1, -1), w_k.expand(n, -1, -1)
        q = torch.einsum("bld,lde->ble", h_tilde, w_q).view(b, n, heads, dk)  # q_j
        return torch.einsum("blhk,ldhk->blhd", q, w_k.view(n, self.dim, heads, dk))

    def mix(
        self, j: int, h_self: Tensor, prev: Tensor, ctx: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        b = h_self.shape[0]
        if j == 0:  # no earlier layer: a_0 = 0, row 0 of layer_map empty
            return h_self.new_zeros(b, self.dim), h_self.new_zeros(b, self.n_layers)
        assert ctx is not None
        heads, dk = self.n_heads, self.head_dim
        q_in = ctx[:, j]  # W_j^K q_j (B, H, d)
        scores = torch.einsum("bhd,bid->bhi", q_in, prev) / math.sqrt(dk)  # (B, H, j)
        alpha = scores.softmax(-1)
        mixed = torch.einsum("bhi,bid->bhd", alpha, prev)  # (B, H, d)
        w_v = self.weights_of(j)[2].view(self.dim, heads, dk)
        a = torch.einsum("bhd,dhk->bhk", mixed, w_v).reshape(b, self.dim)  # (B, d)
        return a, F.pad(alpha.mean(1), (0, self.n_layers - j))

    def last_row(self, layer_map: Tensor) -> Tensor:
        if self.n_layers == 1:  # nothing to attend to: the prediction reads layer 0 alone
            return torch.ones_like(layer_map[:, -1])
        return layer_map[:, -1]


# Old names (before every head class ended in ``Head``), kept for one release.
