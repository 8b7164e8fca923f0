"""G copies of a head trained as one: stacked parameters and a vectorised Adam/AdamW.

Shapes: ``G`` configs, ``B`` batch, ``C`` classes, ``L`` layers, ``P`` parameters per config.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .config import TrainConfig

# --------------------------------------------------------------------------- stacked heads


class _HeadStack:
    """G copies of one head: parameters stored in one flat tensor ``(G, P)``, buffers ``(G, ...)``.

    Each parameter is a leaf that is a ``(G, ...)`` view of ``flat``, and its ``.grad`` is the
    matching view of ``flat.grad``: backward accumulates straight into one ``(G, P)`` gradient,
    and the optimiser and the clipping are a handful of ops on ``flat`` whatever the number of
    parameter tensors. BatchNorm works: its running statistics are stacked buffers, passed
    through ``functional_call`` and updated in place, one slice per config.
    """

    def __init__(self, heads: Sequence[nn.Module], vectorize: str = "auto") -> None:
        if vectorize not in ("auto", "vmap", "loop"):
            raise ValueError(f"vectorize must be 'auto', 'vmap' or 'loop', got {vectorize!r}")
        params, self.buffers = stack_module_state(list(heads))
        self.size = len(heads)
        trainable = {k: v.detach() for k, v in params.items() if v.requires_grad}
        first = next(iter(params.values()))
        parts = [v.reshape(self.size, -1) for v in trainable.values()]
        self.flat = torch.cat(parts, 1) if parts else first.new_zeros(self.size, 0)  # (G, P)
        self.flat.grad = torch.zeros_like(self.flat)
        self.params = {k: v.detach() for k, v in params.items() if not v.requires_grad}
        offset = 0
        for name, v in trainable.items():
            n = v[0].numel()
            leaf = self.flat[:, offset : offset + n].view_as(v).requires_grad_(True)
            leaf.grad = self.flat.grad[:, offset : offset + n].view_as(v)
            self.params[name] = leaf
            offset += n
        self.base = copy.deepcopy(heads[0]).to("meta")
        self.persistent = set(heads[0].state_dict())
        # a single config gains nothing from vmap; "auto" runs it directly
        self.vectorize = "loop" if vectorize == "auto" and self.size == 1 else vectorize

    def tensors(self) -> dict[str, Tensor]:
        """Parameters and buffers by name, each ``(G, ...)``."""
        return {**self.params, **self.buffers}

    def _call_one(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor):
        out = functional_call(self.base, (params, buffers), (x,))
        res = {"logits": out.logits}
        if out.layer_logits is not None:
            res["layer_logits"] = out.layer_logits
        return res

    def forward(self, x: Tensor, train: bool) -> dict[str, Tensor]:
        """Run every config on the same batch.

        Args:
            x: ``(B, T, D)`` input shared by all configs.
            train: train mode (dropout on, BatchNorm batch statistics) or eval mode.

        Returns:
            ``{"logits": (G, B, C)}`` plus ``"layer_logits": (G, B, L, C)`` when the head has them.
        """
        self.base.train(train)
        params = self.params
        if self.vectorize != "loop":
            try:
                return vmap(self._call_one, in_dims=(0, 0, None), randomness="different")(
                    params, self.buffers, x
                )
            except (RuntimeError, NotImplementedError, TypeError) as err:
                if self.vectorize == "vmap":
                    raise
                warnings.warn(
                    f"head cannot run under vmap ({err}); training the grid config by config",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.vectorize = "loop"
        outs = [
            self._call_one(
                {k: v[g] for k, v in params.items()},
                {k: v[g] for k, v in self.buffers.items()},
                x,
            )
            for g in range(self.size)
        ]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def snapshot(self) -> dict[str, Tensor]:
        """A detached copy of all stacked tensors."""
        return {k: v.detach().clone() for k, v in self.tensors().items()}

    def update_where(self, best: dict[str, Tensor], mask: Tensor) -> None:
        """Copy the current state of configs ``mask`` ``(G,)`` into ``best``."""
        for k, v in self.tensors().items():
            best[k][mask] = v.detach()[mask]

    def unstack(self, state: Mapping[str, Tensor], g: int) -> dict[str, Tensor]:
        """State dict (persistent entries) of config ``g`` on the CPU."""
        return {k: v[g].detach().cpu().clone() for k, v in state.items() if k in self.persistent}


class _Grid:
    """Stacks of head variants (one :class:`_HeadStack` per variant) trained in lockstep.

    Variants may differ in structure or in non-tensor attributes (dropout probability), so
    each variant is its own stack; the configs of all stacks are concatenated along ``G``.
    """

    def __init__(self, stacks: Sequence[_HeadStack]) -> None:
        self.stacks = list(stacks)
        sizes = [s.size for s in self.stacks]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.size = int(sum(sizes))

    @property
    def flats(self) -> list[Tensor]:
        """The flat parameter leaf of every stack, ``(G_v, P_v)``."""
        return [s.flat for s in self.stacks]

    def forward(self, x: Tensor, train: bool) -> dict[str, Tensor]:
        """Outputs of all configs on one batch, concatenated: ``logits (G, B, C)`` etc."""
        outs = [s.forward(x, train) for s in self.stacks]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def snapshot(self) -> list[dict[str, Tensor]]:
        return [s.snapshot() for s in self.stacks]

    def update_where(self, best: list[dict[str, Tensor]], mask: Tensor) -> None:
        """Copy the current state of configs ``mask`` ``(G,)`` into ``best``."""
        for i, s in enumerate(self.stacks):
            s.update_where(best[i], mask[self.offsets[i] : self.offsets[i + 1]])

    def unstack(self, state: list[dict[str, Tensor]], g: int) -> dict[str, Tensor]:
        """State dict of config ``g`` on the CPU."""
        i = int(np.searchsorted(self.offsets, g, side="right")) - 1
        return self.stacks[i].unstack(state[i], g - self.offsets[i])


class _StackedAdam:
    """Adam / AdamW over stacked parameters with a learning rate and weight decay per config.

    Matches ``torch.optim.AdamW`` (``decoupled=True``) or ``torch.optim.Adam`` with
    ``weight_decay`` (``decoupled=False``) config by config.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Tensor,
        weight_decay: Tensor,
        decoupled: bool,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.wd = lr, weight_decay  # (G,)
        # params[i] holds the rows rows[i] of the G configs (one stack of variants each)
        ends = np.cumsum([p.shape[0] for p in self.params]).tolist()
        self.rows = [slice(e - p.shape[0], e) for p, e in zip(self.params, ends, strict=True)]
        if ends[-1] != lr.shape[0]:
            raise ValueError(f"{ends[-1]} stacked configs but {lr.shape[0]} learning rates")
        self.decoupled, self.betas, self.eps = decoupled, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        """Zero the gradients in place (the stacks' parameter leaves hold views of them)."""
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> Tensor:
        """Clip each config's total gradient norm to ``max_norm``; returns ``(G,)`` norms."""
        g0 = next((p.grad for p in self.params if p.grad is not None), None)
        if g0 is None:
            return self.lr.new_zeros(self.lr.shape)
        norm = torch.zeros(self.lr.shape, device=g0.device, dtype=torch.float32)
        for p, rows in zip(self.params, self.rows, strict=True):
            if p.grad is not None:
                norm[rows] = torch.linalg.vector_norm(p.grad.reshape(p.shape[0], -1).float(), dim=1)
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p, rows in zip(self.params, self.rows, strict=True):
            if p.grad is not None:
                p.grad.mul_(coef[rows].view(-1, *[1] * (p.ndim - 1)).to(p.grad.dtype))
        return norm

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One update with the per-config learning rates ``lr`` ``(G,)`` of this step."""
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v, rows in zip(self.params, self.m, self.v, self.rows, strict=True):
            if p.grad is None:
                continue
            shape = (-1, *[1] * (p.ndim - 1))
            lr_p, wd_p = lr[rows].view(shape).to(p.dtype), self.wd[rows].view(shape).to(p.dtype)
            g = p.grad
            if self.decoupled:
                p.mul_(1 - lr_p * wd_p)
            else:
                g = g + wd_p * p
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            # lr/bc1 * m / (sqrt(v/bc2) + eps), with the bias corrections folded in
            denom = v.sqrt().add_(self.eps * math.sqrt(bc2))
            p.sub_((m / denom).mul_(lr_p * (math.sqrt(bc2) / bc1)))


def _lr_at(step: int, total: int, base: Tensor, cfg: TrainConfig) -> Tensor:
    """Learning rate ``(G,)`` at ``step`` of ``total``: cosine to ``min_lr`` or constant."""
    if cfg.schedule == "constant" or total <= 1:
        return base
    if cfg.schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")
    floor = torch.minimum(base, torch.full_like(base, cfg.min_lr))
    return floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * step / total))


def _weighted_ce(out: Mapping[str, Tensor], y: Tensor, weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy per config.

    Args:
        out: ``logits (G, B, C)`` and optionally ``layer_logits (G, B, L, C)``; with layer
            logits the loss is the sum over layers of each layer's weighted mean CE.
        y: ``(B,)`` class indices.
        weights: ``(C,)`` class weights.

    Returns:
        ``(G,)`` losses.
    """
    z = out.get("layer_logits", out["logits"])
    logp = z.float().log_softmax(-1)
    idx = y.view(1, -1, *[1] * (z.ndim - 2)).expand(*z.shape[:-1], 1)
    nll = -logp.gather(-1, idx).squeeze(-1)  # (G, B) or (G, B, L)
    sw = weights[y]  # (B,)
    per = (nll * sw.view(1, -1, *[1] * (nll.ndim - 2))).sum(1) / sw.sum().clamp_min(1e-12)
    return per.reshape(per.shape[0], -1).sum(1)


def _backward(loss: Tensor) -> None:
    """Backward of the summed per-config losses ``(G,)`` into the stacks' flat gradients."""
    with warnings.catch_warnings():
        # the parameter leaves are strided (G, ...) views of (G, P): a harmless layout warning
        warnings.filterwarnings("ignore", message="grad and param do not obey")
        loss.sum().backward()


def _jitter(x: Tensor, p: float, std: float, gen: torch.Generator) -> Tensor:
    """With probability ``p`` per sample add ``N(0, std^2)`` noise to ``x`` ``(B, ...)``."""
    if p <= 0 or std <= 0:
        return x
    mask = torch.rand(x.shape[0], generator=gen, device=x.device) < p
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return x + noise * (std * mask.to(x.dtype)).view(-1, *[1] * (x.ndim - 1))
