"""The minibatch training loop: a grid of configurations in one pass (:func:`train_grid`), or
one configuration fed by a stream of batches (:func:`train_stream`).

Shapes: ``N`` samples, ``T`` tokens, ``D`` features, ``L`` layers, ``C`` classes, ``G`` configs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import ConfigError
from .config import GridResult, HeadFactory, TrainConfig
from .metrics import (
    batch_size_for,
    class_weights,
    grouped_split,
    selection_accuracy,
    stratified_split,
)
from .regression import check_task, evaluate_regression, mse_loss, random_split
from .stacked import _backward, _Grid, _HeadStack, _jitter, _lr_at, _StackedAdam, _weighted_ce

__all__ = ["train_grid", "train_stream"]


# --------------------------------------------------------------------------- the loop


def _check_minibatch_solver(cfg: TrainConfig) -> None:
    if cfg.solver not in ("adamw", "adam"):
        raise ConfigError(
            f"the minibatch loop trains with solver 'adamw' or 'adam', got {cfg.solver!r} "
            "('lbfgs' is fit_linear_probes')"
        )


@dataclass
class _Phase:
    """One training run of a stack: which samples, how long, whether to validate."""

    name: str
    train_idx: Tensor
    val_idx: Tensor | None
    epochs: int
    patience: int | None


# the validation score that selects configs and epochs, per task
_SELECT = {"classification": "bacc", "regression": "r2"}


@torch.no_grad()
def _evaluate(
    grid: _Grid,
    X: Tensor,
    y: Tensor,
    idx: Tensor,
    n_classes: int,
    chunk: int,
    task: str = "classification",
    class_weight: Any = None,
) -> dict[str, Tensor]:
    """Validation scores of every config.

    ``class_weight``: the recipe's; ``bacc`` is :func:`~probekit.train.metrics.selection_accuracy`
    (the balanced accuracy, or the accuracy weighted by the user's per-class weights).

    Returns:
        ``acc`` / ``bacc`` ``(G,)``, plus ``layer_acc`` / ``layer_bacc`` ``(G, L)`` for heads
        with layer logits (then ``acc`` / ``bacc`` are the best layer's). Regression: ``r2``
        ``(G,)`` and ``layer_r2`` ``(G, L)`` (see :func:`~probekit.train.regression.evaluate_regression`).
    """
    if task == "regression":
        outs = [grid.forward(X[part], train=False) for part in idx.split(chunk)]
        return evaluate_regression(
            [o["logits"] for o in outs],
            [o["layer_logits"] for o in outs if "layer_logits" in o],
            y[idx],
        )
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
        res["layer_bacc"] = selection_accuracy(lp, yv, n_classes, class_weight)
        res["acc"] = res["layer_acc"].max(-1).values
        res["bacc"] = res["layer_bacc"].max(-1).values
    else:
        p = torch.cat(preds, -1)  # (G, n)
        res["acc"] = (p == yv).double().mean(-1)
        res["bacc"] = selection_accuracy(p, yv, n_classes, class_weight)
    return res


def _run_phase(
    grid: _Grid,
    X: Tensor,
    y: Tensor,
    phase: _Phase,
    configs: Sequence[Mapping[str, Any]],
    n_classes: int,
    cfg: TrainConfig,
    task: str = "classification",
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
    _check_minibatch_solver(cfg)
    opt = _StackedAdam(grid.flats, lr0, wd, cfg.solver == "adamw", cfg.betas, cfg.eps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    regression = task == "regression"
    weights = None if regression else class_weights(y[phase.train_idx], n_classes, cfg.class_weight)
    key = _SELECT[task]
    n = phase.train_idx.numel()
    n_batches = _n_batches(n, cfg)
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
            out = grid.forward(xb, train=True)
            loss = mse_loss(out, y[idx]) if weights is None else _weighted_ce(out, y[idx], weights)
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
            scores = _evaluate(
                grid, X, y, phase.val_idx, n_classes, cfg.eval_batch_size, task, cfg.class_weight
            )
        history += _history_rows(phase.name, epoch, configs, losses, scores)
        if scores is None:
            continue
        bacc = scores[key].cpu()
        if best_scores is None:
            improved = torch.ones(grid.size, dtype=torch.bool)
            best_scores = {k: v.clone() for k, v in scores.items()}
        elif phase.patience is None:  # no early stopping: keep the final weights
            improved = torch.ones(grid.size, dtype=torch.bool)
        else:
            improved = bacc > best_scores[key].cpu()
        for k, v in scores.items():
            best_scores[k][improved.to(v.device)] = v[improved.to(v.device)]
        assert best_state is not None
        grid.update_where(best_state, improved.to(device))
        best_epoch[improved] = epoch
        bad = torch.where(improved, torch.zeros_like(bad), bad + 1)
        bar.set_postfix({f"best_{key}": f"{float(best_scores[key].max()):.4f}"})
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
        if scores is not None and "r2" in scores:
            row["val_r2"] = float(scores["r2"][g])
        elif scores is not None:
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


def _n_batches(n: int, cfg: TrainConfig) -> int:
    """Batches per epoch over ``n`` samples; never a batch of one sample out of several (a
    head with BatchNorm cannot train on it), so at most ``n // 2`` batches."""
    n_batches = math.ceil(n / batch_size_for(n, cfg.batch_size, cfg.min_batches))
    return max(1, min(n_batches, n // 2)) if n >= 2 else n_batches


def _epochs_for(cfg: TrainConfig, n: int) -> int:
    """``cfg.epochs`` raised so that ``n`` samples give at least ``cfg.min_steps`` steps."""
    n_batches = _n_batches(n, cfg)
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(n_batches, 1)), 1)


def train_grid(
    build: HeadFactory,
    X: Tensor,
    y: Tensor,
    n_classes: int,
    config: TrainConfig,
    variants: Sequence[Mapping[str, Any]] = ({},),
    task: str = "classification",
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
        task: ``"classification"`` (``y`` class indices, class-weighted cross-entropy,
            stratified split, selection by balanced accuracy) or ``"regression"`` (``y``
            ``(N,)`` or ``(N, K)`` float targets with ``K = n_classes`` head outputs, MSE loss,
            random split, selection by validation R²; ``layer_scores`` are per-layer R²).

    Returns:
        A :class:`GridResult` with the chosen head's state dict.
    """
    device = torch.device(config.device)
    check_task(task)
    X = X.to(device=device, dtype=torch.float32)
    if task == "regression":
        y = y.to(device=device, dtype=torch.float32).reshape(X.shape[0], -1)
    else:
        y = y.to(device=device, dtype=torch.long)
    configs = config.grid(variants)
    per_variant = len(config.lrs) * len(config.weight_decays)
    torch.manual_seed(config.seed)
    layered = _has_layer_logits(build, variants[0], X)
    if config.val_size <= 0 and len(configs) > 1:
        raise ConfigError("a grid of configurations needs val_size > 0 to choose one")
    skip_search = config.val_size <= 0 or (
        len(configs) == 1 and config.refit and config.patience is None and not layered
    )
    all_idx = torch.arange(X.shape[0], device=device)
    result = GridResult(state_dict={}, best_index=0, best_params=dict(configs[0]), configs=configs)
    if not skip_search:
        if task == "regression" and config.groups is not None:
            tr, va = grouped_split(None, config.groups, config.val_size, config.seed, False)
        elif task == "regression":
            tr, va = random_split(X.shape[0], config.val_size, config.seed)
        else:
            strata = y.cpu().numpy() if config.stratify is None else config.stratify
            tr, va = stratified_split(strata, config.val_size, config.seed, config.groups)
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
        state, scores, best_epoch, hist = _run_phase(
            grid, X, y, phase, configs, n_classes, config, task
        )
        result.history += hist
        if scores is not None:
            bacc = scores[_SELECT[task]].cpu().numpy()
            g = int(np.argmax(bacc))
            result.scores, result.best_index, result.best_params = bacc, g, dict(configs[g])
            assert best_epoch is not None
            result.best_epoch = int(best_epoch[g])
            if "layer_r2" in scores:
                result.layer_scores = scores["layer_r2"][g].cpu().numpy()
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
        state, _, _, hist = _run_phase(grid, X, y, phase, best, n_classes, refit_cfg, task)
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
    cfg1 = {"lr": config.lrs[0], "weight_decay": config.weight_decays[0], **variant}
    torch.manual_seed(config.seed)
    grid = _build_grid(build, [(variant, 1)], config.seed, device, config.vectorize)
    lr0 = torch.tensor([cfg1["lr"]], device=device)
    wd = torch.tensor([cfg1["weight_decay"]], device=device)
    _check_minibatch_solver(config)
    opt = _StackedAdam(grid.flats, lr0, wd, config.solver == "adamw", config.betas, config.eps)
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
