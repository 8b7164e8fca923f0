"""What every probe head shares: its output type, its input layout, and its base class.

Input layout (the same for every head)::

    x          (B, T, D)  pooled features; T = n_layers * tokens_per_layer tokens, layer-major
                          (layer 0 token 0, layer 0 token 1, ..., layer 1 token 0, ...).
                          Layers narrower than D are zero-padded on the right to D = max(dims).
    layer_of   (T,)       which layer each token came from (``arange(T) // tokens_per_layer``).

Heads only import torch (and the standard library).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["GroupLinear", "ProbeHead", "ProbeOutput"]


@dataclass
class ProbeOutput:
    """What a head returns for one batch.

    Attributes:
        logits: ``(B, C)`` class scores of the head's prediction.
        layer_weights: ``(B, L)`` the head's own attribution, non-negative, each row sums to 1;
            ``None`` for heads that have no per-sample weights (``linear``, ``concat``).
        layer_logits: ``(B, L, C)`` per-layer logits, for heads that train one probe per layer
            (``linear``); ``None`` otherwise. When set, training sums one loss per layer.
        layer_map: ``(B, L, L)`` layer-to-layer attention (AILA: row j = how layer j mixes the
            earlier layers), ``None`` for other heads.
    """

    logits: Tensor
    layer_weights: Tensor | None = None
    layer_logits: Tensor | None = None
    layer_map: Tensor | None = None


class ProbeHead(nn.Module):
    """Base class of every registered head.

    Args:
        n_layers: L, the number of layers.
        dims: width of every layer, an int (all equal) or a sequence of L ints.
        n_classes: C.
        tokens_per_layer: P, tokens per layer (e.g. 2 for CLS + mean); T = L * P.

    Class attributes:
        input_norm: how the estimator prepares features before this head:
            ``"standardize"`` (train-split mean and std per token and feature) or ``"l2"``
            (each token L2-normalised) or ``"none"``.
        closed_form: the head is fitted in closed form, one layer at a time, by
            ``fit_layer(layer, x (N, P * D), y (N,))`` (``diff-means``), not by gradient steps.
        tasks: the estimator tasks the head serves (``"classification"``, ``"regression"``).
    """

    input_norm: str = "standardize"
    closed_form: bool = False
    tasks: tuple[str, ...] = ("classification", "regression")

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(dims, int):
            dims = [dims] * n_layers
        dims = tuple(int(d) for d in dims)
        if n_layers < 1 or len(dims) != n_layers:
            raise ValueError(
                f"dims must give one width per layer: n_layers={n_layers}, dims={dims}"
            )
        if n_classes < 1:  # 1: a single output (regression of one target)
            raise ValueError(f"need at least 1 output, got n_classes={n_classes}")
        if tokens_per_layer < 1:
            raise ValueError(f"tokens_per_layer must be >= 1, got {tokens_per_layer}")
        self.n_layers = n_layers
        self.dims = dims
        self.n_classes = n_classes
        self.tokens_per_layer = tokens_per_layer
        self.register_buffer(
            "layer_of", torch.arange(self.n_tokens) // tokens_per_layer, persistent=False
        )

    @property
    def n_tokens(self) -> int:
        """T = L * P."""
        return self.n_layers * self.tokens_per_layer

    @property
    def max_dim(self) -> int:
        """D, the padded width of the input."""
        return max(self.dims)

    @property
    def token_dims(self) -> tuple[int, ...]:
        """Width of each of the T tokens."""
        return tuple(d for d in self.dims for _ in range(self.tokens_per_layer))

    def fold_tokens(self, w: Tensor) -> Tensor:
        """Sum per-token weights into per-layer weights: ``(B, T) -> (B, L)``."""
        if self.tokens_per_layer == 1:
            return w
        return w.unflatten(-1, (self.n_layers, self.tokens_per_layer)).sum(-1)

    def feature_mask(self, per_layer: bool = False) -> Tensor:
        """Which input features are real (not zero padding).

        Args:
            per_layer: if False, one row per token: ``(T, D)``; if True, the P tokens of each
                layer concatenated: ``(L, P * D)``, matching ``x.reshape(B, L, P * D)``.

        Returns:
            Boolean mask, ``(T, D)`` or ``(L, P * D)``.
        """
        widths = torch.tensor(self.token_dims)
        mask = torch.arange(self.max_dim) < widths[:, None]  # (T, D)
        return mask.reshape(self.n_layers, -1) if per_layer else mask

    def forward(self, x: Tensor) -> ProbeOutput:  # pragma: no cover - abstract
        raise NotImplementedError


class GroupLinear(nn.Module):
    """G independent linear maps, one per group (layer or token), over zero-padded inputs.

    ``y[:, g] = x[:, g] @ (W[g] * mask[g]) + b[g]``: masking the weight makes every group read
    only its own real features, so layers of different widths share one batched einsum.
    Initialised like ``nn.Linear`` with each group's real fan-in.

    Args:
        mask: ``(G, K)`` boolean, True where group g's input feature k is real.
        out_features: width of every output.
        bias: learn a bias ``(G, out_features)``.

    Shapes:
        x ``(B, G, K)`` -> ``(B, G, out_features)``. ``weight`` is ``(G, K, out_features)``.
    """

    mask: Tensor  # (G, K, 1) float, not saved in the state dict
    bias: Tensor | None

    def __init__(self, mask: Tensor, out_features: int, bias: bool = True) -> None:
        super().__init__()
        mask = mask.bool()
        n_groups, in_features = mask.shape
        self.register_buffer("mask", mask[:, :, None].float(), persistent=False)  # (G, K, 1)
        bound = mask.sum(1).clamp(min=1).float().rsqrt()[:, None, None]  # (G, 1, 1)
        weight = (torch.rand(n_groups, in_features, out_features) * 2 - 1) * bound
        self.weight = nn.Parameter(weight * self.mask)
        b = (torch.rand(n_groups, out_features) * 2 - 1) * bound[:, 0]
        self.register_parameter("bias", nn.Parameter(b) if bias else None)

    def masked_weight(self) -> Tensor:
        """``(G, K, out_features)``, zero outside the mask."""
        return self.weight * self.mask

    def one(self, x: Tensor, g: int) -> Tensor:
        """Group g alone: ``(B, K) -> (B, out_features)`` (for recurrences over groups)."""
        y = x @ (self.weight[g] * self.mask[g])
        return y if self.bias is None else y + self.bias[g]

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("bgk,gko->bgo", x, self.masked_weight())
        return y if self.bias is None else y + self.bias
