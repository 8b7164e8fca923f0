"""The difference-of-means ("mass-mean") probe of Marks & Tegmark (2023), one per layer.

*The Geometry of Truth* (Marks & Tegmark, 2023, sec. 4) probes a binary concept with the
direction between the two class means, no optimisation::

    theta      = mu_1 - mu_0                                  (F,)  class means on train
    theta_iid  = Sigma_r^-1 theta                             whiten=True ("IID" variant)
    Sigma      = 1/N sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T  (F, F) pooled within-class
    Sigma_r    = Sigma + shrinkage * tr(Sigma) / F * I        shrinkage keeps it invertible
    s(x)       = theta . x                                    the score
    t          = theta . (mu_1 + mu_0) / 2                    threshold: the midpoint of the
                 - log(pi_1 / pi_0) / a                       projected class means (priors)
    z(x)       = a (s(x) - t),   a = (theta.mu_1 - theta.mu_0) / sigma^2
    logits     = [-z/2, z/2]     so softmax(logits)[1] = sigmoid(z), decision_function = z

``sigma^2`` is the pooled within-class variance of the train scores ``s``: ``z`` is then the
log-odds of two equal-prior Gaussians of that variance along ``theta`` (LDA in one dimension),
so probabilities are calibrated on that model and AUROC ranks by the score ``s`` itself.
The priors ``pi_c`` are proportional to ``class weight * count``: the estimator's default
``class_weight="balanced"`` makes them equal, so the threshold is the paper's midpoint;
``class_weight=None`` uses the train class frequencies (the Bayes threshold of that model).

More than two classes (our extension; the paper is binary): one-vs-rest, class c's direction
``mu_c - mu_not_c`` (``mu_not_c`` the mean of the other classes' samples), each with its own
midpoint threshold (prior ``pi_c`` against ``1 - pi_c``) and scale, ``logits[:, c] = z_c``, prediction the argmax. ``Sigma`` is then
pooled over all C classes. With two classes this is exactly the binary probe.

The head reads raw features (``input_norm = "none"``, as the paper): whitening makes the score
affine-invariant, and the unwhitened direction is the paper's mean difference in the model's
own coordinates. The head subtracts the train mean of each layer (``center``) before its
linear map only for float32 accuracy; the math is unchanged. Padded features are ignored.

Fitted in closed form by :meth:`DiffMeansHead.fit_layer` (the estimator calls it, one layer at a
time, in float64; ``closed_form = True``); the forward is a per-layer linear map like the
``linear`` head's, so the head also passes the gradient contract, but gradient training is
never used.

Shapes: x ``(B, T, D)`` with T = L * P, a layer's P tokens read as one vector of width
F = P * D (``x.reshape(B, L, P * D)``); ``direction`` ``(L, F, K)``, ``threshold`` and
``scale`` ``(L, K)`` with K = 1 for two classes, else C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import GroupLinear, ProbeHead, ProbeOutput
from .registry import register_probe

__all__ = ["DiffMeansHead", "mass_mean_probe"]


def _group_means(x: Tensor, member: Tensor) -> tuple[Tensor, Tensor]:
    """Means of the rows in and out of each group: ``member`` ``(N, K)`` bool -> 2 x ``(K, F)``."""
    m = member.to(x.dtype)  # (N, K)
    n_in = m.sum(0).clamp_min(1.0)[:, None]
    n_out = (1 - m).sum(0).clamp_min(1.0)[:, None]
    total = x.sum(0)  # (F,)
    s_in = m.T @ x  # (K, F)
    return s_in / n_in, (total - s_in) / n_out


def mass_mean_probe(
    x: Tensor,
    y: Tensor,
    n_classes: int,
    *,
    whiten: bool = False,
    shrinkage: float = 0.1,
    prior: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The mass-mean probe of one layer, in closed form (float64).

    Args:
        x: ``(N, F)`` train features (real features only, no padding).
        y: ``(N,)`` class indices in ``[0, n_classes)``.
        n_classes: C >= 2.
        whiten: use ``Sigma_r^-1 (mu_a - mu_b)`` (the paper's IID variant).
        shrinkage: ``Sigma_r = Sigma + shrinkage * tr(Sigma) / F * I`` (whiten only).
        prior: ``(C,)`` class priors (any positive scale); ``None``: equal (the midpoint).

    Returns:
        ``(direction (F, K), threshold (K,), scale (K,))``, K = 1 for two classes (class 1 vs
        class 0), else C (class c vs the rest): ``z = scale * (x @ direction - threshold)``.
    """
    x = x.double()
    y = y.long()
    if n_classes == 2:
        member = (y == 1)[:, None]  # (N, 1): class 1 against class 0
    else:
        member = y[:, None] == torch.arange(n_classes, device=y.device)  # (N, C)
    mu_a, mu_b = _group_means(x, member)  # (K, F) each
    delta = mu_a - mu_b  # (K, F)
    if whiten:
        counts = torch.bincount(y, minlength=n_classes).clamp_min(1).to(x.dtype)
        class_mean = torch.zeros(n_classes, x.shape[1], dtype=x.dtype, device=x.device)
        class_mean.index_add_(0, y, x)
        resid = x - (class_mean / counts[:, None])[y]  # (N, F)
        sigma = resid.T @ resid / max(x.shape[0], 1)  # (F, F) pooled within-class
        ridge = float(sigma.diagonal().mean()) * shrinkage
        if ridge <= 0:  # no within-class spread (or shrinkage 0 on a singular Sigma): the identity
            ridge = 1.0 if float(sigma.abs().max()) == 0 else 1e-12
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        direction = torch.linalg.solve(sigma + ridge * eye, delta.T)  # (F, K)
    else:
        direction = delta.T.clone()  # (F, K)
    proj_a = (mu_a * direction.T).sum(1)  # (K,)
    proj_b = (mu_b * direction.T).sum(1)
    threshold = (proj_a + proj_b) / 2
    s = x @ direction  # (N, K)
    resid_s = s - torch.where(member, proj_a, proj_b)
    var = resid_s.pow(2).mean(0) if x.shape[0] else torch.ones_like(proj_a)
    gap = proj_a - proj_b
    var = torch.maximum(var, 1e-12 * gap.pow(2) + 1e-300)  # no spread: a large, finite scale
    scale = gap / var
    if prior is not None:
        pi = prior.to(x).clamp_min(1e-12)
        pi = pi / pi.sum()
        log_odds = (pi[1] / pi[0]).log()[None] if n_classes == 2 else (pi / (1 - pi)).log()
        threshold = threshold - torch.where(scale != 0, log_odds / scale, 0.0)
    return direction, threshold, scale


@register_probe("diff-means")
class DiffMeansHead(ProbeHead):
    """Mass-mean (difference of class means) probe per layer, fitted in closed form.

    See the module docstring for the math. ``logits`` is the probe of ``selected_layer`` (set
    by the estimator to the best validation layer, like ``linear``); ``layer_logits`` holds
    every layer's; there are no layer weights.

    Args:
        n_layers: L.
        dims: width of every layer.
        n_classes: C >= 2 (a classifier only: ``n_classes=1`` is a ValueError).
        tokens_per_layer: P; each layer's probe reads its P tokens concatenated.
        whiten: ``Sigma_r^-1 (mu_1 - mu_0)`` instead of ``mu_1 - mu_0`` (default False).
        shrinkage: ``eps`` of ``Sigma + eps * tr(Sigma) / F * I`` (default 0.1; whiten only).

    Buffers (saved): ``center (L, F)``, ``direction (L, F, K)``, ``threshold (L, K)``,
    ``scale (L, K)``, ``selected_layer``.

    Returns (forward):
        ``ProbeOutput(logits (B, C), layer_weights=None, layer_logits (B, L, C))``.
    """

    input_norm = "none"
    closed_form = True
    tasks = ("classification",)
    center: Tensor
    direction: Tensor
    threshold: Tensor
    scale: Tensor
    selected_layer: Tensor

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        whiten: bool = False,
        shrinkage: float = 0.1,
    ) -> None:
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        if n_classes < 2:
            raise ValueError(f"diff-means is a classifier: needs n_classes >= 2, got {n_classes}")
        if not shrinkage >= 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        self.whiten, self.shrinkage = bool(whiten), float(shrinkage)
        mask = self.feature_mask(per_layer=True)  # (L, F)
        k = 1 if n_classes == 2 else n_classes
        self.probes = GroupLinear(mask, n_classes)
        self.register_buffer("center", torch.zeros(mask.shape))
        self.register_buffer("direction", torch.zeros(*mask.shape, k))
        self.register_buffer("threshold", torch.zeros(n_layers, k))
        self.register_buffer("scale", torch.ones(n_layers, k))
        self.register_buffer("selected_layer", torch.tensor(n_layers - 1, dtype=torch.long))

    @torch.no_grad()
    def fit_layer(self, layer: int, x: Tensor, y: Tensor, prior: Tensor | None = None) -> None:
        """Fit layer ``layer``'s probe on its train features ``x`` ``(N, F)`` (F = P * D, padded
        columns ignored), class indices ``y`` ``(N,)`` and class priors ``prior`` ``(C,)``
        (``None``: equal); writes its buffers and weights."""
        real = self.feature_mask(per_layer=True)[layer].to(x.device)  # (F,)
        xr = x[:, real].double()
        direction, threshold, scale = mass_mean_probe(
            xr, y, self.n_classes, whiten=self.whiten, shrinkage=self.shrinkage, prior=prior
        )
        center = xr.mean(0) if xr.shape[0] else torch.zeros_like(xr[0])
        center = center.float().double()  # the stored value, so the offset below is exact
        offset = threshold - center @ direction  # (K,): z = a ((x - c) . theta - offset)
        w = direction * scale  # (F_real, K)
        b = -offset * scale  # (K,)
        if self.n_classes == 2:
            w, b = torch.cat([-w / 2, w / 2], 1), torch.cat([-b / 2, b / 2])
        dev = self.center.device
        full = torch.zeros(real.shape[0], w.shape[1], dtype=torch.float64, device=x.device)
        full[real] = w
        self.probes.weight[layer] = full.float().to(dev)
        assert self.probes.bias is not None
        self.probes.bias[layer] = b.float().to(dev)
        self.center[layer].zero_()
        self.center[layer, real.to(dev)] = center.float().to(dev)
        self.direction[layer].zero_()
        self.direction[layer, real.to(dev)] = direction.float().to(dev)
        self.threshold[layer] = threshold.float().to(dev)
        self.scale[layer] = scale.float().to(dev)

    def layer_logits_of(self, layer: int, x: Tensor) -> Tensor:
        """Logits of one layer's probe: ``x`` ``(N, F)`` -> ``(N, C)``."""
        return self.probes.one(x - self.center[layer], layer)

    def forward(self, x: Tensor) -> ProbeOutput:
        """Args: x ``(B, T, D)``. Returns logits ``(B, C)`` and layer_logits ``(B, L, C)``."""
        x = x.reshape(x.shape[0], self.n_layers, -1) - self.center  # (B, L, P*D)
        layer_logits = self.probes(x)  # (B, L, C)
        return ProbeOutput(logits=layer_logits[:, self.selected_layer], layer_logits=layer_logits)
