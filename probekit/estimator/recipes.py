"""Each head's training recipe, as a validated :class:`~probekit.train.TrainConfig`.

A :class:`~probekit.estimator.ProbeClassifier` parameter left at ``None`` takes its head's
recipe value; every parameter the user sets replaces it through ``dataclasses.replace``, so a
bad value fails once, when the settings are made, with the allowed range
(:class:`~probekit.errors.ConfigError`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..train import TrainConfig

__all__ = ["DROPOUT_PARAM", "HEAD_DEFAULTS", "HEAD_VARIANTS", "JITTER", "OVERRIDABLE", "recipe_for"]

JITTER = (0.5, 0.05)
"""(probability per sample, std) of the ALF train-time noise that ``jitter=True`` turns on."""

_MINIBATCH = TrainConfig(
    solver="adamw",
    lr=1e-3,
    weight_decay=1e-4,
    epochs=50,
    min_steps=0,
    batch_size=256,
    min_batches=1,
    val_size=0.1,
    patience=5,
    refit=False,
    jitter_p=0.0,
    jitter_std=JITTER[1],
    schedule="cosine",
)

HEAD_DEFAULTS: dict[str, TrainConfig] = {
    "default": _MINIBATCH,
    # scikit-learn's LogisticRegression(C=1.0) per layer; the minibatch fields are used with
    # solver="adamw" (e.g. when streaming from a cache).
    "linear": dataclasses.replace(
        _MINIBATCH,
        solver="lbfgs",
        C=1.0,
        max_iter=100,
        val_size=0.2,
        refit=True,
        lr=1e-2,
        weight_decay=0.0,
        patience=10,
        epochs=100,
    ),
    # closed form (no optimiser): a validation split to choose the layer, then a refit on all
    "diff-means": dataclasses.replace(_MINIBATCH, val_size=0.2, refit=True, patience=None),
    # ALF recipe (Ciernik et al.): AdamW, cosine to 1e-6, 40 epochs and >= 1000 steps, batch
    # 2048 with >= 5 batches, jitter, lr x wd grid on a stratified 80/20 split, refit on all.
    "alf": dataclasses.replace(
        _MINIBATCH,
        lr=[1e-1, 1e-2, 1e-3],
        weight_decay=[float(w) for w in np.logspace(-6, 0, 7)],
        epochs=40,
        min_steps=1000,
        batch_size=2048,
        min_batches=5,
        val_size=0.2,
        patience=None,
        refit=True,
        jitter_p=JITTER[0],
    ),
    # LAYA recipe (Vessio): Adam 3e-4, batch 128, <= 50 epochs, early stopping on a 10%
    # validation split (patience 5, best weights restored), no refit.
    "laya": dataclasses.replace(
        _MINIBATCH,
        solver="adam",
        lr=3e-4,
        weight_decay=0.0,
        batch_size=128,
        epochs=50,
        patience=5,
        val_size=0.1,
        schedule="constant",
    ),
}
"""Head name -> its recipe; heads without an entry use ``"default"``."""

HEAD_VARIANTS: dict[str, dict[str, list[Any]]] = {
    # ALF's reference grid also picks the attention dropout in {0, 0.1, 0.3} on validation
    # balanced accuracy: with lr x weight decay that is 3 x 7 x 3 = 63 configurations.
    "alf": {"attn_dropout": [0.0, 0.1, 0.3]},
}
"""Head name -> head keyword axes of its recipe's grid, used unless the user sets that keyword."""

DROPOUT_PARAM: dict[str, str] = {"alf": "attn_dropout"}
"""Head name -> the head keyword that ``ProbeClassifier(dropout=...)`` sets (default
``"dropout"``). For ALF it is the attention dropout, the one its reference tunes."""

OVERRIDABLE = (
    "lr", "weight_decay", "C", "epochs", "batch_size", "val_size", "patience", "refit", "solver",
    "max_iter", "jitter", "class_weight",
)  # fmt: skip
"""ProbeClassifier parameters that override the recipe (``None`` means "the recipe's")."""


def recipe_for(head: str, params: dict[str, Any]) -> TrainConfig:
    """The head's recipe with every non-``None`` parameter of ``params`` applied, validated.

    Args:
        head: a registered head name.
        params: ProbeClassifier parameters (names of :data:`OVERRIDABLE`); ``jitter`` is
            ``True`` (p = 0.5), ``False`` or a probability; an explicit ``epochs`` is taken as
            is (no minimum step count).

    Raises:
        ConfigError: a value outside its allowed range, or ``solver="lbfgs"`` for a head
            other than ``"linear"``.
    """
    changes = {k: v for k, v in params.items() if k in OVERRIDABLE and v is not None}
    if "class_weight" in params:  # None is a real value here (no weighting)
        changes["class_weight"] = params["class_weight"]
    if "jitter" in changes:
        jit = changes.pop("jitter")
        if isinstance(jit, bool):
            changes["jitter_p"] = JITTER[0] if jit else 0.0
        else:
            changes["jitter_p"] = jit
    if changes.get("epochs") is not None:
        changes["min_steps"] = 0
    cfg = dataclasses.replace(HEAD_DEFAULTS.get(head, HEAD_DEFAULTS["default"]), **changes)
    if cfg.solver == "lbfgs" and head != "linear":
        raise ConfigError(f"solver='lbfgs' is only for head='linear', not {head!r}")
    return cfg
