"""ALF, attentive layer fusion: one learned query cross-attends over the tokens of every layer.

Follows the computation of ``AttentiveProbeModel`` in lciernik/attentive-layer-fusion
(``src/tasks/attentive_probe.py``, itself adapted from CAE's attentive block); this is our own
code. Tokens are L2-normalised (``input_norm = "l2"``: each token divided by its L2 norm,
as the reference's feature combiner does, so that layers whose activations differ in scale by
orders of magnitude enter the attention on an equal footing) and zero-padded to D = max(dims).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import ProbeHead, ProbeOutput
from .registry import register_probe

__all__ = ["ALFHead", "alf_head_dim"]


def alf_head_dim(dim: int, n_heads: int) -> int:
    """The reference's head width ``d_h = 2 * floor(D / H)``, at least 2.

    The reference doubles CAE's ``D // H``. When ``H > D`` that is 0 and the reference fails
    (``0 ** -0.5``); we use 2, the smallest width the reference itself produces.
    """
    return max(2 * (dim // n_heads), 2)


@register_probe("alf")
class ALFHead(ProbeHead):
    """Attentive layer fusion (single cross-attention block, no residual, no MLP).

    ::

        Q = LN_q(q0) W_q                 (1, H*d_h)   q0 ~ N(0, 0.02^2), shape (1, 1, D)
        K = LN_k(X) W_k, V = LN_v(X) W_v (B, T, H*d_h) three LayerNorms, no q/k/v bias
        A = softmax_T(Q_h K_h^T / sqrt(d_h))         (B, H, T), then attention dropout
        o = concat_h(A_h V_h) W_o + b_o               (B, D), then dropout
        logits = Linear(BatchNorm1d(o))               (B, C)
        layer_weights = A averaged over heads, tokens of a layer summed   (B, L)

    Args:
        n_layers: L.
        dims: width of every layer (tokens zero-padded to D = max(dims)).
        n_classes: C.
        tokens_per_layer: P (2 for the paper's CLS + mean); T = L * P tokens.
        n_heads: H; default T (one head per token, as in the paper).
        head_dim: d_h; default :func:`alf_head_dim` ``(D, H)``.
        attn_dropout: dropout on the attention weights (paper grid {0, 0.1, 0.3}).
        dropout: dropout after the output projection (the reference's ``proj_drop``).

    Note:
        BatchNorm1d needs B >= 2 in training mode; in eval mode it uses running statistics.
    """

    input_norm = "l2"

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        n_heads: int | None = None,
        head_dim: int | None = None,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        dim = self.max_dim
        self.n_heads = n_heads if n_heads is not None else self.n_tokens
        self.head_dim = head_dim if head_dim is not None else alf_head_dim(dim, self.n_heads)
        inner = self.n_heads * self.head_dim
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)  # q0 (1, 1, D)
        self.norm_q, self.norm_k, self.norm_v = (
            nn.LayerNorm(dim),
            nn.LayerNorm(dim),
            nn.LayerNorm(dim),
        )
        self.w_q = nn.Linear(dim, inner, bias=False)
        self.w_k = nn.Linear(dim, inner, bias=False)
        self.w_v = nn.Linear(dim, inner, bias=False)
        self.w_o = nn.Linear(inner, dim)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.dropout = nn.Dropout(dropout)
        self.bn = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)`` L2-normalised tokens. Returns logits ``(B, C)``, layer_weights ``(B, L)``.

        With a single query, ``K`` and ``V`` are never formed: ``Q_h K_h^T = LN_k(X) (W_k,h^T Q_h)``
        projects the query into input space (``(B, T, D) @ (D, H)``), and
        ``A_h V_h = (A_h LN_v(X)) W_v,h`` averages the tokens before projecting them. The result
        is the reference's, re-associated: B*T*D*H instead of B*T*D*H*d_h multiply-adds per
        projection, which is what makes the head cheap on a CPU.
        """
        b, _, dim = x.shape
        heads, dh = self.n_heads, self.head_dim
        q = self.w_q(self.norm_q(self.query)).view(heads, dh)  # (H, d_h)
        q_in = torch.einsum("hk,hkd->hd", q, self.w_k.weight.view(heads, dh, dim))  # (H, D)
        scores = self.norm_k(x) @ (q_in.t() / math.sqrt(dh))  # (B, T, H)
        attn = scores.softmax(dim=1)  # (B, T, H), over tokens
        pooled = torch.einsum("bth,btd->bhd", self.attn_dropout(attn), self.norm_v(x))  # (B, H, D)
        o = torch.einsum(
            "bhd,hkd->bhk", pooled, self.w_v.weight.view(heads, dh, dim)
        )  # (B, H, d_h)
        o = self.dropout(self.w_o(o.reshape(b, heads * dh)))  # (B, D)
        logits = self.classifier(self.bn(o))  # (B, C)
        token_weights = attn.mean(-1)  # (B, T)
        return ProbeOutput(logits=logits, layer_weights=self.fold_tokens(token_weights))
