"""The training settings (:class:`TrainConfig`) and what a grid returns (:class:`GridResult`).

A :class:`TrainConfig` is checked once, when it is made: every field has a constraint in
:data:`CONSTRAINTS` (in the spirit of scikit-learn's ``_parameter_constraints``), and a bad
value raises :class:`~probekit.errors.ConfigError` naming the field and its allowed range.
Head recipes are ``TrainConfig`` values; change one with ``dataclasses.replace(recipe, lr=...)``,
which validates again.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor, nn

__all__ = ["CONSTRAINTS", "GridResult", "HeadFactory", "TrainConfig"]

HeadFactory = Callable[..., "nn.Module"]
"""Builds one freshly initialised head from a variant's keyword arguments."""

SOLVERS = ("adamw", "adam", "lbfgs")


def _is_number(v: Any) -> bool:
    """A finite real number (Python or numpy scalar), not a bool."""
    if isinstance(v, bool):
        return False
    numpy_scalar = type(v).__module__ == "numpy" and getattr(v, "dtype", None) is not None
    if not (isinstance(v, (int, float)) or (numpy_scalar and v.dtype.kind in "iuf")):
        return False
    return math.isfinite(float(v))


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and (
        isinstance(v, int)
        or (
            type(v).__module__ == "numpy"
            and getattr(v, "dtype", None) is not None
            and v.dtype.kind in "iu"
        )
    )


def _number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    none: bool = False,
) -> tuple[Callable[[Any], bool], str]:
    """A constraint: a number (an int with ``integer``) in an interval, or ``None`` with ``none``."""

    def check(v: Any) -> bool:
        if v is None:
            return none
        if not (_is_int(v) if integer else _is_number(v)):
            return False
        if low is not None and (v < low or (low_open and v == low)):
            return False
        return not (high is not None and (v > high or (high_open and v == high)))

    kind = "an int" if integer else "a number"
    lo = "" if low is None else f"{'(' if low_open else '['}{low:g}"
    hi = "" if high is None else f"{high:g}{')' if high_open else ']'}"
    if low is not None and high is not None:
        desc = f"{kind} in {lo}, {hi}"
    elif low is not None:
        desc = f"{kind} {'>' if low_open else '>='} {low:g}"
    else:
        desc = kind
    return check, desc + (" or None" if none else "")


def _choice(*values: Any) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in values), "one of " + ", ".join(repr(v) for v in values)


def _grid_of(check: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    """A non-empty list of values each meeting ``check`` (a grid axis)."""
    fn, desc = check
    return (lambda v: isinstance(v, list) and len(v) > 0 and all(fn(x) for x in v)), (
        f"{desc}, or a non-empty list of them"
    )


def _nonneg(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) >= 0
    )


CONSTRAINTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": _grid_of(_number(0, low_open=True)),
    "weight_decay": _grid_of(_number(0)),
    "solver": _choice(*SOLVERS),
    "epochs": _number(1, integer=True),
    "min_steps": _number(0, integer=True),
    "batch_size": _number(1, integer=True),
    "min_batches": _number(1, integer=True),
    "schedule": _choice("cosine", "constant"),
    "min_lr": _number(0),
    "grad_clip": _number(0, low_open=True, none=True),
    "class_weight": (
        lambda v: (
            v in ("balanced", None)
            or (isinstance(v, Mapping) and all(_nonneg(w) for w in v.values()))
            or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_nonneg(w) for w in v))
        ),
        "'balanced', None, {label: weight} or a list of per-class weights (numbers >= 0)",
    ),
    "jitter_p": _number(0, 1),
    "jitter_std": _number(0),
    "val_size": _number(0, 1, high_open=True),
    "patience": _number(1, integer=True, none=True),
    "refit": _choice(True, False),
    "seed": _number(integer=True),
    "verbose": _choice(True, False),
    "eval_batch_size": _number(1, integer=True),
    "vectorize": _choice("auto", "vmap", "loop"),
    "betas": (
        (
            lambda v: (
                isinstance(v, (tuple, list))
                and len(v) == 2
                and all(_is_number(b) and 0 <= b < 1 for b in v)
            )
        ),
        "two numbers in [0, 1)",
    ),
    "eps": _number(0, low_open=True),
    "C": _number(0, low_open=True),
    "max_iter": _number(1, integer=True),
}
"""Field -> ``(check, allowed range)``: what :meth:`TrainConfig.__post_init__` enforces."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training recipe; list-valued ``lr`` / ``weight_decay`` form a grid.

    Validated at construction (see :data:`CONSTRAINTS`): a bad value raises
    :class:`~probekit.errors.ConfigError` naming the field and its allowed range. Derive a
    variant with ``dataclasses.replace(config, lr=[1e-2, 1e-3])`` (validated again).

    Attributes:
        lr: learning rate or learning rates (grid axis); stored as a list of floats.
        weight_decay: weight decay or weight decays (grid axis); stored as a list of floats.
        solver: ``"adamw"`` (decoupled decay), ``"adam"`` (L2 added to the gradient), or
            ``"lbfgs"`` (full-batch L-BFGS of :func:`~probekit.train.fit_linear_probes`, for
            per-layer linear probes only; the minibatch loops refuse it).
        epochs: number of epochs (at least enough for ``min_steps``).
        min_steps: minimum optimisation steps (ALF: 1000).
        batch_size: minibatch size, shrunk so there are at least ``min_batches`` batches.
        min_batches: see ``batch_size``.
        schedule: ``"cosine"`` (per step, to ``min_lr``, no warm-up) or ``"constant"``.
        min_lr: end of the cosine schedule.
        grad_clip: max gradient norm per config (``None``: no clipping).
        class_weight: ``"balanced"``, ``None``, or per-class weights: a list in class-index
            order, or ``{label: weight}`` (which the estimator turns into that list once it
            knows the classes).
        jitter_p: probability per sample of adding Gaussian noise at train time (ALF: 0.5).
        jitter_std: standard deviation of that noise (ALF: 0.05).
        val_size: fraction held out (stratified) to select configs, layers and epochs.
        patience: early stopping patience in epochs (``None``: train all epochs and score the
            final weights).
        refit: after selection, retrain the best config on all samples (see
            :func:`~probekit.train.train_grid`).
        seed: seeds initialisation, split, batch order, jitter and dropout.
        device: where to train.
        verbose: show a tqdm progress bar.
        eval_batch_size: chunk size of validation forward passes.
        vectorize: ``"vmap"``, ``"loop"`` (one functional call per config, same maths) or
            ``"auto"`` (vmap, falling back to loop if the head cannot be vmapped).
        betas, eps: Adam's.
        C: inverse L2 strength of the L-BFGS linear probes, as scikit-learn's.
        max_iter: L-BFGS iterations per layer.
        stratify: ``(N,)`` labels whose classes the validation split keeps in proportion,
            instead of the training labels (a control task reuses its task's split this way).
        groups: ``(N,)`` group of each row (a unit cache: the input each word comes from);
            the validation split then keeps every group on one side.
    """

    lr: float | Sequence[float] = (1e-3,)
    weight_decay: float | Sequence[float] = (1e-4,)
    solver: str = "adamw"
    epochs: int = 50
    min_steps: int = 0
    batch_size: int = 256
    min_batches: int = 1
    schedule: str = "cosine"
    min_lr: float = 1e-6
    grad_clip: float | None = 5.0
    class_weight: str | Mapping[Any, float] | Sequence[float] | None = "balanced"
    jitter_p: float = 0.0
    jitter_std: float = 0.05
    val_size: float = 0.2
    patience: int | None = None
    refit: bool = False
    seed: int = 0
    device: Any = "cpu"
    verbose: bool = False
    eval_batch_size: int = 4096
    vectorize: str = "auto"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    C: float = 1.0
    max_iter: int = 100
    stratify: Any = field(default=None, repr=False, compare=False)
    groups: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
                value = list(value)
            else:
                value = [value]
            setattr(self, name, [float(v) if _is_number(v) else v for v in value])
        for name, (check, allowed) in CONSTRAINTS.items():
            value = getattr(self, name)
            if not check(value):
                raise ConfigError(f"TrainConfig.{name} must be {allowed}, got {value!r}")

    @property
    def lrs(self) -> list[float]:
        """The learning rates of the grid (``lr`` is stored as a list once validated)."""
        return [float(v) for v in self.lr] if isinstance(self.lr, Sequence) else [float(self.lr)]

    @property
    def weight_decays(self) -> list[float]:
        """The weight decays of the grid."""
        wd = self.weight_decay
        return [float(v) for v in wd] if isinstance(wd, Sequence) else [float(wd)]

    def grid(self, variants: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """All configurations: variant-major, then lr, then weight decay."""
        return [
            {"lr": lr, "weight_decay": wd, **dict(v)}
            for v in variants
            for lr in self.lrs
            for wd in self.weight_decays
        ]


@dataclass
class GridResult:
    """What :func:`~probekit.train.train_grid` returns.

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
