"""Training loops over cached features: one head, or a grid of heads trained at once.

Everything here works on tensors that are already normalised (the estimator folds the
normalisation into ``model_``). Three entry points:

* :func:`train_grid` — minibatch training of a head, or of a *grid* of configurations
  (learning rate x weight decay x head variants such as dropout) in one vectorised pass:
  the G copies of the head are stacked (``torch.func.stack_module_state``) and run with
  ``vmap(functional_call)``; one vectorised AdamW updates all of them with per-config
  learning rates and weight decays. Head variants (dropout, or anything that changes the
  module) are separate stacks trained in lockstep. Every config sees the same minibatches
  and the same jitter noise, so a config trained inside a grid follows the same path as the
  config trained alone with the same seed (up to float rounding and dropout draws).
* :func:`train_stream` — the same loop fed by an iterator of batches (a
  :class:`~probekit.cache.FeatureCache` that does not fit in memory). Simple version: one
  configuration, fixed epochs, no validation split.
* :func:`fit_linear_probes` — full-batch L-BFGS for per-layer logistic regression, one
  independent solve per layer, with scikit-learn's objective (``C``, class weights).

Shapes: ``N`` samples, ``T`` tokens, ``D`` features, ``L`` layers, ``C`` classes, ``G`` configs.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

__all__ = [
    "GridResult",
    "LinearSolution",
    "TrainConfig",
    "accuracy",
    "balanced_accuracy",
    "class_weights",
    "fit_linear_probes",
    "stratified_split",
    "train_grid",
    "train_stream",
]

HeadFactory = Callable[..., nn.Module]
"""Builds one freshly initialised head from a variant's keyword arguments."""


# --------------------------------------------------------------------------- metrics


def _as_long_tensor(y: Any) -> Tensor:
    if isinstance(y, Tensor):
        return y.detach().long().cpu()
    return torch.as_tensor(np.asarray(y)).long()


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions.

    Args:
        y_true: ``(N,)`` integer labels (array or tensor).
        y_pred: ``(N,)`` predicted labels.

    Returns:
        Accuracy in [0, 1].
    """
    t, p = _as_long_tensor(y_true), _as_long_tensor(y_pred)
    if t.shape != p.shape or t.numel() == 0:
        raise ValueError(
            f"need two non-empty label vectors of one shape, got {t.shape} and {p.shape}"
        )
    return float((t == p).double().mean())


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition).

    Args:
        y_true: ``(N,)`` integer labels (array or tensor).
        y_pred: ``(N,)`` predicted labels.

    Returns:
        Balanced accuracy in [0, 1].
    """
    t, p = _as_long_tensor(y_true), _as_long_tensor(y_pred)
    if t.shape != p.shape or t.numel() == 0:
        raise ValueError(
            f"need two non-empty label vectors of one shape, got {t.shape} and {p.shape}"
        )
    classes = torch.unique(torch.cat([t, p]))
    t, p = torch.searchsorted(classes, t), torch.searchsorted(classes, p)
    return float(_balanced_accuracy_batched(p, t, classes.numel()))


def _balanced_accuracy_batched(pred: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Balanced accuracy of many prediction vectors at once.

    Args:
        pred: ``(..., N)`` predicted class indices.
        y: ``(N,)`` true class indices in ``[0, n_classes)``.
        n_classes: C.

    Returns:
        ``(...)`` float64 balanced accuracies (mean recall over classes present in ``y``).
    """
    onehot = F.one_hot(y, n_classes).double()  # (N, C)
    counts = onehot.sum(0)  # (C,)
    hits = (pred == y).double()  # (..., N)
    recall = (hits @ onehot) / counts.clamp_min(1)  # (..., C)
    present = counts > 0
    return recall[..., present].mean(-1)


# --------------------------------------------------------------------------- data helpers


def stratified_split(y: Any, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into train and validation, keeping class proportions.

    Every class with at least two samples puts ``round(val_size * n_c)`` of them (at least
    one, and never all) into validation; single-sample classes stay in train.

    Args:
        y: ``(N,)`` integer labels.
        val_size: fraction in (0, 1).
        seed: seed of the shuffle.

    Returns:
        ``(train_idx, val_idx)`` sorted int64 index arrays.
    """
    if not 0.0 < val_size < 1.0:
        raise ValueError(f"val_size must be in (0, 1), got {val_size}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if idx.size < 2:
            continue
        k = min(max(int(round(val_size * idx.size)), 1), idx.size - 1)
        val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    mask = np.ones(y.size, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx.astype(np.int64)


def class_weights(y: Tensor, n_classes: int, mode: str | None) -> Tensor:
    """Per-class loss weights.

    Args:
        y: ``(N,)`` class indices.
        n_classes: C.
        mode: ``"balanced"`` (``N / (K * count_c)``, K = classes present, as scikit-learn;
            absent classes get 0) or ``None`` (all ones).

    Returns:
        ``(C,)`` float32 weights on ``y``'s device.
    """
    if mode is None:
        return torch.ones(n_classes, device=y.device)
    if mode != "balanced":
        raise ValueError(f"class_weight must be 'balanced' or None, got {mode!r}")
    counts = torch.bincount(y, minlength=n_classes).float()
    present = counts > 0
    w = torch.zeros(n_classes, device=y.device)
    w[present] = y.numel() / (int(present.sum()) * counts[present])
    return w


def batch_size_for(n: int, batch_size: int, min_batches: int = 1) -> int:
    """Shrink ``batch_size`` so that ``n`` samples give at least ``min_batches`` batches."""
    return max(1, min(batch_size, n // max(min_batches, 1) or 1))


# --------------------------------------------------------------------------- config / result


@dataclass
class TrainConfig:
    """Hyper-parameters of the minibatch loop; list-valued ``lr`` / ``weight_decay`` form a grid.

    Attributes:
        lr: learning rates (grid axis).
        weight_decay: weight decays (grid axis).
        optimizer: ``"adamw"`` (decoupled decay) or ``"adam"`` (L2 added to the gradient).
        epochs: number of epochs (at least enough for ``min_steps``).
        min_steps: minimum optimisation steps (ALF: 1000).
        batch_size: minibatch size, shrunk so there are at least ``min_batches`` batches.
        min_batches: see ``batch_size``.
        schedule: ``"cosine"`` (per step, to ``min_lr``, no warm-up) or ``"constant"``.
        min_lr: end of the cosine schedule.
        grad_clip: max gradient norm per config (``None``: no clipping).
        class_weight: ``"balanced"`` or ``None``.
        jitter_p: probability per sample of adding Gaussian noise at train time (ALF: 0.5).
        jitter_std: standard deviation of that noise (ALF: 0.05).
        val_size: fraction held out (stratified) to select configs, layers and epochs.
        patience: early stopping patience in epochs (``None``: train all epochs and score the
            final weights).
        refit: after selection, retrain the best config on all samples (see :func:`train_grid`).
        seed: seeds initialisation, split, batch order, jitter and dropout.
        device: where to train.
        verbose: show a tqdm progress bar.
        eval_batch_size: chunk size of validation forward passes.
        vectorize: ``"vmap"``, ``"loop"`` (one functional call per config, same maths) or
            ``"auto"`` (vmap, falling back to loop if the head cannot be vmapped).
    """

    lr: Sequence[float] = (1e-3,)
    weight_decay: Sequence[float] = (1e-4,)
    optimizer: str = "adamw"
    epochs: int = 50
    min_steps: int = 0
    batch_size: int = 256
    min_batches: int = 1
    schedule: str = "cosine"
    min_lr: float = 1e-6
    grad_clip: float | None = 5.0
    class_weight: str | None = "balanced"
    jitter_p: float = 0.0
    jitter_std: float = 0.05
    val_size: float = 0.2
    patience: int | None = None
    refit: bool = False
    seed: int = 0
    device: str | torch.device = "cpu"
    verbose: bool = False
    eval_batch_size: int = 4096
    vectorize: str = "auto"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def grid(self, variants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """All configurations: variant-major, then lr, then weight decay."""
        return [
            {"lr": float(lr), "weight_decay": float(wd), **dict(v)}
            for v in variants
            for lr in self.lr
            for wd in self.weight_decay
        ]


@dataclass
class GridResult:
    """What :func:`train_grid` returns.

    Attributes:
        state_dict: the chosen head's state (CPU tensors), ready for ``load_state_dict``.
        best_index: index of the chosen config in ``configs``.
        best_params: the chosen config (``lr``, ``weight_decay`` and the variant's keys).
        configs: every config of the grid.
        scores: ``(G,)`` validation balanced accuracy per config (``None`` without validation).
        best_epoch: epoch (0-based) whose weights were kept in the search phase.
        layer_scores: ``(L,)`` validation accuracy per layer of the chosen config, for heads
            that return ``layer_logits``; else ``None``.
        layer_balanced_scores: same, balanced accuracy.
        history: one dict per (phase, epoch, config) with losses and validation scores.
        refit_epochs: epochs of the refit phase (0 when there was none).
    """

    state_dict: dict[str, Tensor]
    best_index: int
    best_params: dict[str, Any]
    configs: list[dict[str, Any]]
    scores: np.ndarray | None = None
    best_epoch: int | None = None
    layer_scores: np.ndarray | None = None
    layer_balanced_scores: np.ndarray | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    refit_epochs: int = 0


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


# --------------------------------------------------------------------------- the loop


@dataclass
class _Phase:
    """One training run of a stack: which samples, how long, whether to validate."""

    name: str
    train_idx: Tensor
    val_idx: Tensor | None
    epochs: int
    patience: int | None


@torch.no_grad()
def _evaluate(
    grid: _Grid, X: Tensor, y: Tensor, idx: Tensor, n_classes: int, chunk: int
) -> dict[str, Tensor]:
    """Validation scores of every config.

    Returns:
        ``acc`` / ``bacc`` ``(G,)``, plus ``layer_acc`` / ``layer_bacc`` ``(G, L)`` for heads
        with layer logits (then ``acc`` / ``bacc`` are the best layer's).
    """
    preds, layer_preds = [], []
    for part in idx.split(chunk):
        out = grid.forward(X[part], train=False)
        preds.append(out["logits"].argmax(-1))
        if "layer_logits" in out:
            layer_preds.append(out["layer_logits"].argmax(-1).transpose(1, 2))  # (G, L, b)
    yv = y[idx]
    res: dict[str, Tensor] = {}
    if layer_preds:
        lp = torch.cat(layer_preds, -1)  # (G, L, n)
        res["layer_acc"] = (lp == yv).double().mean(-1)
        res["layer_bacc"] = _balanced_accuracy_batched(lp, yv, n_classes)
        res["acc"] = res["layer_acc"].max(-1).values
        res["bacc"] = res["layer_bacc"].max(-1).values
    else:
        p = torch.cat(preds, -1)  # (G, n)
        res["acc"] = (p == yv).double().mean(-1)
        res["bacc"] = _balanced_accuracy_batched(p, yv, n_classes)
    return res


def _run_phase(
    grid: _Grid,
    X: Tensor,
    y: Tensor,
    phase: _Phase,
    configs: Sequence[Mapping[str, Any]],
    n_classes: int,
    cfg: TrainConfig,
) -> tuple[list[dict[str, Tensor]], dict[str, Tensor] | None, Tensor | None, list[dict[str, Any]]]:
    """Train every config of ``grid`` on ``phase.train_idx``.

    Returns:
        ``(state, best_scores, best_epoch, history)``: the kept stacked state (best epoch per
        config with early stopping, else the final one), the validation scores of that state
        (dict of ``(G,)`` / ``(G, L)`` tensors, ``None`` without validation), the kept epoch per
        config ``(G,)`` and the history rows.
    """
    device = X.device
    lr0 = torch.tensor([c["lr"] for c in configs], device=device, dtype=torch.float32)
    wd = torch.tensor([c["weight_decay"] for c in configs], device=device, dtype=torch.float32)
    if cfg.optimizer not in ("adamw", "adam"):
        raise ValueError(f"optimizer must be 'adamw' or 'adam', got {cfg.optimizer!r}")
    opt = _StackedAdam(grid.flats, lr0, wd, cfg.optimizer == "adamw", cfg.betas, cfg.eps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    weights = class_weights(y[phase.train_idx], n_classes, cfg.class_weight)
    n = phase.train_idx.numel()
    n_batches = math.ceil(n / batch_size_for(n, cfg.batch_size, cfg.min_batches))
    total = phase.epochs * n_batches
    validate = phase.val_idx is not None and phase.val_idx.numel() > 0
    best_state = grid.snapshot() if validate else None
    best_scores: dict[str, Tensor] | None = None
    best_epoch = torch.full((grid.size,), -1, dtype=torch.long)
    bad = torch.zeros(grid.size, dtype=torch.long)
    history: list[dict[str, Any]] = []
    step = 0
    bar = tqdm(
        range(phase.epochs), desc=f"probekit {phase.name}", disable=not cfg.verbose, leave=False
    )
    for epoch in bar:
        loss_sum = torch.zeros(grid.size, device=device)
        perm = phase.train_idx[torch.randperm(n, generator=gen, device=device)]
        for idx in torch.tensor_split(perm, n_batches):
            xb = _jitter(X[idx], cfg.jitter_p, cfg.jitter_std, gen)
            loss = _weighted_ce(grid.forward(xb, train=True), y[idx], weights)  # (G,)
            opt.zero_grad()
            _backward(loss)
            if cfg.grad_clip is not None:
                opt.clip_grad_norm(cfg.grad_clip)
            opt.step(_lr_at(step, total, lr0, cfg))
            step += 1
            loss_sum += loss.detach()
        losses = (loss_sum / n_batches).cpu()
        scores = None
        if validate:
            assert phase.val_idx is not None
            scores = _evaluate(grid, X, y, phase.val_idx, n_classes, cfg.eval_batch_size)
        history += _history_rows(phase.name, epoch, configs, losses, scores)
        if scores is None:
            continue
        bacc = scores["bacc"].cpu()
        if best_scores is None:
            improved = torch.ones(grid.size, dtype=torch.bool)
            best_scores = {k: v.clone() for k, v in scores.items()}
        elif phase.patience is None:  # no early stopping: keep the final weights
            improved = torch.ones(grid.size, dtype=torch.bool)
        else:
            improved = bacc > best_scores["bacc"].cpu()
        for k, v in scores.items():
            best_scores[k][improved.to(v.device)] = v[improved.to(v.device)]
        assert best_state is not None
        grid.update_where(best_state, improved.to(device))
        best_epoch[improved] = epoch
        bad = torch.where(improved, torch.zeros_like(bad), bad + 1)
        bar.set_postfix(best_bacc=f"{float(best_scores['bacc'].max()):.4f}")
        if phase.patience is not None and bool((bad >= phase.patience).all()):
            break
    bar.close()
    state = best_state if best_state is not None else grid.snapshot()
    return state, best_scores, (best_epoch if validate else None), history


def _history_rows(
    phase: str,
    epoch: int,
    configs: Sequence[Mapping[str, Any]],
    losses: Tensor,
    scores: Mapping[str, Tensor] | None,
) -> list[dict[str, Any]]:
    rows = []
    for g, c in enumerate(configs):
        row: dict[str, Any] = {"phase": phase, "epoch": epoch, "config": g, **c}
        row["train_loss"] = float(losses[g])
        if scores is not None:
            row["val_accuracy"] = float(scores["acc"][g])
            row["val_balanced_accuracy"] = float(scores["bacc"][g])
        rows.append(row)
    return rows


def _build_grid(
    build: HeadFactory,
    groups: Sequence[tuple[Mapping[str, Any], int]],
    seed: int,
    device: torch.device,
    vectorize: str,
) -> _Grid:
    """One stack per ``(variant, n_configs)``, every head initialised from ``seed`` as if alone."""
    stacks = []
    for variant, n in groups:
        heads = []
        for _ in range(n):
            torch.manual_seed(seed)
            heads.append(build(**variant).to(device))
        stacks.append(_HeadStack(heads, vectorize))
    return _Grid(stacks)


def _has_layer_logits(build: HeadFactory, variant: Mapping[str, Any], x: Tensor) -> bool:
    head = build(**variant).to(x.device).eval()
    with torch.no_grad():
        return head(x[:2]).layer_logits is not None


def _epochs_for(cfg: TrainConfig, n: int) -> int:
    """``cfg.epochs`` raised so that ``n`` samples give at least ``cfg.min_steps`` steps."""
    n_batches = math.ceil(n / batch_size_for(n, cfg.batch_size, cfg.min_batches))
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(n_batches, 1)), 1)


def train_grid(
    build: HeadFactory,
    X: Tensor,
    y: Tensor,
    n_classes: int,
    config: TrainConfig,
    variants: Sequence[Mapping[str, Any]] = ({},),
) -> GridResult:
    """Train a grid of configurations of one head in one vectorised pass and pick the best.

    The grid is ``variants x config.lr x config.weight_decay``; variants are keyword
    arguments of ``build`` (e.g. ``[{"dropout": 0.0}, {"dropout": 0.1}]``). All G heads are
    initialised from ``config.seed``, see the same minibatches and jitter, and are updated
    by one vectorised AdamW.

    Procedure:
        1. Search: a stratified ``val_size`` split; every config trains on the rest and is
           scored on validation every epoch by balanced accuracy (for heads with
           ``layer_logits``: the best layer's). With ``patience`` each config keeps its best
           epoch (early stopping, best weights restored); without, its final weights.
        2. Select the config with the highest validation balanced accuracy (first on ties).
        3. With ``refit``: retrain that config alone on all samples, for the full epoch
           budget without ``patience``, or for ``best_epoch + 1`` epochs with it (cosine
           schedule over the refit length). Without ``refit`` the search weights are kept.
           With ``val_size=0`` (one config only), or a single config with ``refit``, no
           ``patience`` and no layer logits, the search is skipped (nothing to choose) and
           the config trains on all samples.

    Dropout and other random draws inside the head differ between a config trained in the
    grid and alone (vmap draws them per config); everything else is shared.

    Args:
        build: ``build(**variant) -> nn.Module`` returning a freshly initialised head whose
            forward maps ``(B, T, D)`` to a :class:`~probekit.probes.base.ProbeOutput`.
        X: ``(N, T, D)`` normalised features (moved to ``config.device`` once, float32).
        y: ``(N,)`` class indices in ``[0, n_classes)``.
        n_classes: C.
        config: the loop's hyper-parameters.
        variants: head keyword sets forming the third grid axis.

    Returns:
        A :class:`GridResult` with the chosen head's state dict.
    """
    device = torch.device(config.device)
    X = X.to(device=device, dtype=torch.float32)
    y = y.to(device=device, dtype=torch.long)
    configs = config.grid(variants)
    per_variant = len(config.lr) * len(config.weight_decay)
    torch.manual_seed(config.seed)
    layered = _has_layer_logits(build, variants[0], X)
    if config.val_size <= 0 and len(configs) > 1:
        raise ValueError("a grid of configurations needs val_size > 0 to choose one")
    skip_search = config.val_size <= 0 or (
        len(configs) == 1 and config.refit and config.patience is None and not layered
    )
    all_idx = torch.arange(X.shape[0], device=device)
    result = GridResult(state_dict={}, best_index=0, best_params=dict(configs[0]), configs=configs)
    if not skip_search:
        tr, va = stratified_split(y.cpu().numpy(), config.val_size, config.seed)
        phase = _Phase(
            "search",
            torch.as_tensor(tr, device=device),
            torch.as_tensor(va, device=device),
            _epochs_for(config, len(tr)),
            config.patience,
        )
        torch.manual_seed(config.seed)
        groups = [(v, per_variant) for v in variants]
        grid = _build_grid(build, groups, config.seed, device, config.vectorize)
        torch.manual_seed(config.seed)
        state, scores, best_epoch, hist = _run_phase(grid, X, y, phase, configs, n_classes, config)
        result.history += hist
        if scores is not None:
            bacc = scores["bacc"].cpu().numpy()
            g = int(np.argmax(bacc))
            result.scores, result.best_index, result.best_params = bacc, g, dict(configs[g])
            assert best_epoch is not None
            result.best_epoch = int(best_epoch[g])
            if "layer_acc" in scores:
                result.layer_scores = scores["layer_acc"][g].cpu().numpy()
                result.layer_balanced_scores = scores["layer_bacc"][g].cpu().numpy()
        result.state_dict = grid.unstack(state, result.best_index)
    if config.refit or skip_search:
        full = _epochs_for(config, X.shape[0])
        epochs = (
            full if config.patience is None or result.best_epoch is None else result.best_epoch + 1
        )
        best = [result.best_params]
        variant = variants[result.best_index // per_variant]
        grid = _build_grid(build, [(variant, 1)], config.seed, device, config.vectorize)
        torch.manual_seed(config.seed)
        phase = _Phase("refit", all_idx, None, epochs, None)
        refit_cfg = copy.copy(config)
        refit_cfg.min_steps = 0 if config.patience is not None else config.min_steps
        state, _, _, hist = _run_phase(grid, X, y, phase, best, n_classes, refit_cfg)
        result.history += hist
        result.refit_epochs = epochs
        result.state_dict = grid.unstack(state, 0)
    return result


def train_stream(
    build: HeadFactory,
    batches: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    n_samples: int,
    n_classes: int,
    class_counts: Sequence[int],
    config: TrainConfig,
    transform: Callable[[Tensor], Tensor] | None = None,
    variant: Mapping[str, Any] | None = None,
) -> GridResult:
    """Train one configuration from a stream of batches (features that do not fit in memory).

    Simple version of :func:`train_grid`: one config (the first ``lr`` and ``weight_decay``),
    ``config.epochs`` passes over the stream, the same optimiser, schedule, clipping,
    class weights and jitter; no validation split, no early stopping, no refit.

    Args:
        build: ``build(**variant) -> nn.Module`` head factory.
        batches: called once per epoch; yields ``(X (b, T, D), y (b,))`` raw batches,
            ideally shuffled.
        n_samples: N, to size the cosine schedule.
        n_classes: C.
        class_counts: ``(C,)`` class counts of the whole stream (for class weights).
        config: the loop's hyper-parameters.
        transform: applied to every ``X`` batch on the device (the normalisation).
        variant: keyword arguments of ``build``.

    Returns:
        A :class:`GridResult` with the final head's state dict.
    """
    device = torch.device(config.device)
    variant = dict(variant or {})
    cfg1 = {"lr": float(config.lr[0]), "weight_decay": float(config.weight_decay[0]), **variant}
    torch.manual_seed(config.seed)
    grid = _build_grid(build, [(variant, 1)], config.seed, device, config.vectorize)
    lr0 = torch.tensor([cfg1["lr"]], device=device)
    wd = torch.tensor([cfg1["weight_decay"]], device=device)
    opt = _StackedAdam(grid.flats, lr0, wd, config.optimizer == "adamw", config.betas, config.eps)
    counts = torch.as_tensor(np.asarray(class_counts), device=device, dtype=torch.float32)
    pseudo_y = torch.repeat_interleave(torch.arange(n_classes, device=device), counts.long())
    weights = class_weights(pseudo_y, n_classes, config.class_weight)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    total = config.epochs * math.ceil(n_samples / config.batch_size)
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in tqdm(
        range(config.epochs), desc="probekit stream", disable=not config.verbose, leave=False
    ):
        loss_sum, n_b = torch.zeros(1, device=device), 0
        for xb, yb in batches():
            xb = xb.to(device=device, dtype=torch.float32)
            yb = torch.as_tensor(yb).to(device=device, dtype=torch.long)
            if transform is not None:
                xb = transform(xb)
            xb = _jitter(xb, config.jitter_p, config.jitter_std, gen)
            loss = _weighted_ce(grid.forward(xb, train=True), yb, weights)
            opt.zero_grad()
            _backward(loss)
            if config.grad_clip is not None:
                opt.clip_grad_norm(config.grad_clip)
            opt.step(_lr_at(min(step, total), total, lr0, config))
            step, n_b, loss_sum = step + 1, n_b + 1, loss_sum + loss.detach()
        history += _history_rows("stream", epoch, [cfg1], (loss_sum / max(n_b, 1)).cpu(), None)
    return GridResult(
        state_dict=grid.unstack(grid.snapshot(), 0),
        best_index=0,
        best_params=cfg1,
        configs=[cfg1],
        history=history,
        refit_epochs=config.epochs,
    )


# --------------------------------------------------------------------------- linear probes


@dataclass
class LinearSolution:
    """Per-layer logistic regression solved by :func:`fit_linear_probes`.

    Attributes:
        weight: ``(L, F, C)`` weights (for two classes: ``[-w/2, w/2]``, so the softmax equals
            the binary logistic model ``sigmoid(x @ w + b)``).
        bias: ``(L, C)`` intercepts.
        n_iter: ``(L,)`` L-BFGS iterations per layer.
        loss: ``(L,)`` final objective per layer.
    """

    weight: Tensor
    bias: Tensor
    n_iter: np.ndarray
    loss: np.ndarray


def _logistic_objective(
    X: Tensor, Y: Tensor, sw: Tensor, W: Tensor, b: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean weighted log-loss plus ``alpha/2 ||W||^2`` and its gradient, without autograd.

    Layouts chosen for the CPU: weights class-major ``(K, F)`` so that ``X @ W.T`` and
    ``r @ X`` are the fast skinny products, and the softmax over classes-major ``(K, N)``
    logits (``log_softmax`` over a last dimension of 2 to 10 classes is ~10x slower).

    Args:
        X: ``(N, F)`` features.
        Y: ``(N,)`` labels in {0, 1} as float (binary, K = 1) or ``(K, N)`` one-hot.
        sw: ``(N,)`` sample weights divided by their sum.
        W: ``(K, F)`` weights; ``b``: ``(K,)`` intercepts.
        alpha: L2 strength on the mean loss (``1 / (C * sum of sample weights)``).

    Returns:
        ``(loss, grad_W (K, F), grad_b (K,))``.
    """
    z = torch.addmm(b, X, W.T).T.contiguous()  # (K, N)
    if Y.ndim == 1:
        z1 = z[0]
        loss = (sw * (F.softplus(z1) - Y * z1)).sum()
        r = (sw * (torch.sigmoid(z1) - Y)).unsqueeze(0)  # (1, N)
    else:
        logp = z.log_softmax(0)
        loss = -(sw * (Y * logp).sum(0)).sum()
        r = (logp.exp_() - Y).mul_(sw)  # (K, N)
    gW = torch.mm(r, X).add_(W, alpha=alpha)
    loss = loss + 0.5 * alpha * W.pow(2).sum()
    return loss, gW, r.sum(1)


def _lbfgs(
    fg: Callable[[Tensor], tuple[Tensor, Tensor]],
    w0: Tensor,
    max_iter: int,
    tol: float,
    history: int = 10,
    ftol: float = 1e-10,
) -> tuple[Tensor, int]:
    """Minimise a smooth convex function with L-BFGS and a backtracking Armijo line search.

    Enough for L2-regularised logistic regression (strictly convex, so every step keeps the
    curvature pair positive), without ``torch.optim`` (whose first use imports TorchDynamo).

    Args:
        fg: ``w -> (f (), grad (P,))``.
        w0: ``(P,)`` start.
        max_iter: iterations (one gradient evaluation each, more when the step is cut).
        tol: stop when ``max |grad| <= tol`` (scipy's ``pgtol``, scikit-learn's ``tol``).
        history: number of curvature pairs kept.
        ftol: stop when the objective changes by less than ``ftol * max(|f|, 1)``.

    Returns:
        ``(w, n_iter)``.
    """
    w = w0.clone()
    f, g = fg(w)
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    rho: list[Tensor] = []
    d = -g
    it = 0
    while it < max_iter and float(g.abs().max()) > tol:
        it += 1
        gtd = float(g @ d)
        if gtd >= 0:  # not a descent direction (numerical trouble): restart from -g
            s_hist, y_hist, rho, d = [], [], [], -g
            gtd = float(g @ d)
        t = min(1.0, 1.0 / float(g.abs().sum())) if not s_hist else 1.0
        f0 = float(f)
        for _ in range(30):
            w_new = w + t * d
            f_new, g_new = fg(w_new)
            if float(f_new) <= f0 + 1e-4 * t * gtd:
                break
            quad = -gtd * t * t / (2 * (float(f_new) - f0 - gtd * t))  # minimiser of the parabola
            t = min(max(quad, 0.1 * t), 0.5 * t)
        s, yv = w_new - w, g_new - g
        ys = s @ yv
        if float(ys) > 1e-12:
            if len(s_hist) == history:
                del s_hist[0], y_hist[0], rho[0]
            s_hist.append(s)
            y_hist.append(yv)
            rho.append(1.0 / ys)
        w, f, g = w_new, f_new, g_new
        if abs(f0 - float(f)) <= ftol * max(abs(f0), abs(float(f)), 1.0):
            break
        d = _two_loop(g, s_hist, y_hist, rho)
    return w, it


def _two_loop(g: Tensor, s_hist: list[Tensor], y_hist: list[Tensor], rho: list[Tensor]) -> Tensor:
    """L-BFGS direction ``-H g`` from the stored curvature pairs (Nocedal & Wright, Alg. 7.4)."""
    q = -g
    alphas = []
    for s, yv, r in zip(reversed(s_hist), reversed(y_hist), reversed(rho), strict=True):
        a = r * (s @ q)
        q = q - a * yv
        alphas.append(a)
    if s_hist:
        q = q * ((s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1]))
    for s, yv, r, a in zip(s_hist, y_hist, rho, reversed(alphas), strict=True):
        q = q + s * (a - r * (yv @ q))
    return q


def _solve_one_layer(
    X: Tensor,
    Y: Tensor,
    sw: Tensor,
    alpha: float,
    W0: Tensor,
    b0: Tensor,
    max_iter: int,
    tol: float,
) -> tuple[Tensor, Tensor, int, float]:
    """L-BFGS on one layer's logistic regression; weights ``(K, F)`` and bias ``(K,)`` flattened."""
    K, Fdim = W0.shape

    def fg(w: Tensor) -> tuple[Tensor, Tensor]:
        W, b = w[: K * Fdim].view(K, Fdim), w[K * Fdim :]
        loss, gW, gb = _logistic_objective(X, Y, sw, W, b, alpha)
        return loss, torch.cat([gW.reshape(-1), gb])

    w, n_iter = _lbfgs(fg, torch.cat([W0.reshape(-1), b0]), max_iter, tol)
    loss, _ = fg(w)
    return w[: K * Fdim].view(K, Fdim).clone(), w[K * Fdim :].clone(), n_iter, float(loss)


def fit_linear_probes(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    C: float = 1.0,
    class_weight: str | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    init: LinearSolution | None = None,
    n_jobs: int | None = None,
    verbose: bool = False,
) -> LinearSolution:
    """Per-layer L2-regularised logistic regression, scikit-learn's objective, L-BFGS.

    Minimises per layer ``sum_i s_i CE_i / sum_i s_i + ||W||^2 / (2 C sum_i s_i)`` (the
    intercept is not penalised): the objective of ``LogisticRegression(C=C)``. Two classes
    use one weight vector (sigmoid), as scikit-learn does. Every layer is an independent
    L-BFGS solve (one shared L-BFGS over all layers needs a joint line search and many more
    evaluations); on CPU the layers are solved by ``n_jobs`` threads, each running
    single-threaded kernels on one layer's block, which stays in cache.

    Args:
        X: ``(L, N, F)`` features, layer-major (normalised; float32 recommended).
        y: ``(N,)`` class indices in ``[0, n_classes)``.
        n_classes: C.
        C: inverse regularisation strength, as in scikit-learn.
        class_weight: ``"balanced"`` or ``None``.
        max_iter: L-BFGS iterations per layer (scikit-learn's default is 100).
        tol: stop when the largest gradient entry falls below it (scikit-learn's ``tol``).
        init: warm start (e.g. the solution on a subset).
        n_jobs: threads over layers on CPU (default: torch's thread count); ignored on GPU.
        verbose: tqdm bar over layers.

    Returns:
        A :class:`LinearSolution`.
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    L, _, Fdim = X.shape
    y = y.to(X.device).long()
    binary = n_classes == 2
    K = 1 if binary else n_classes
    Y = y.to(X.dtype) if binary else F.one_hot(y, n_classes).T.to(X.dtype).contiguous()
    sw_raw = class_weights(y, n_classes, class_weight).to(X.dtype)[y]
    alpha = 1.0 / (C * float(sw_raw.sum()))
    sw = sw_raw / sw_raw.sum()

    def solve(layer: int) -> tuple[Tensor, Tensor, int, float]:
        if init is not None:
            W0, b0 = _to_k_rows(init.weight[layer], init.bias[layer], binary)
        else:
            W0, b0 = X.new_zeros(K, Fdim), X.new_zeros(K)
        return _solve_one_layer(X[layer], Y, sw, alpha, W0.to(X), b0.to(X), max_iter, tol)

    jobs = 1 if X.device.type != "cpu" else min(L, n_jobs or torch.get_num_threads())
    bar = tqdm(total=L, desc="probekit linear", disable=not verbose, leave=False)
    results = _map_layers(solve, L, jobs, bar)
    bar.close()
    W = torch.stack([r[0] for r in results]).transpose(1, 2)  # (L, F, K)
    b = torch.stack([r[1] for r in results])  # (L, K)
    if binary:
        W = torch.cat([-W / 2, W / 2], -1)
        b = torch.cat([-b / 2, b / 2], -1)
    return LinearSolution(
        W.contiguous(), b, np.asarray([r[2] for r in results]), np.asarray([r[3] for r in results])
    )


def _map_layers(fn: Callable[[int], Any], n: int, jobs: int, bar: Any) -> list[Any]:
    """``[fn(0), ..., fn(n-1)]``, on ``jobs`` threads with single-threaded torch kernels."""
    if jobs <= 1:
        out = []
        for i in range(n):
            out.append(fn(i))
            bar.update()
        return out
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(fn, i) for i in range(n)]
            out = []
            for f in futures:
                out.append(f.result())
                bar.update()
            return out
    finally:
        torch.set_num_threads(threads)


def _to_k_rows(W: Tensor, b: Tensor, binary: bool) -> tuple[Tensor, Tensor]:
    """``(F, C)`` weights of a solution back to the solver's ``(K, F)`` layout."""
    if binary:
        return (W[:, 1:] - W[:, :1]).T, (b[1:] - b[:1])
    return W.T, b
