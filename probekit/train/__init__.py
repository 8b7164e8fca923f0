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

The package is split along those seams: :mod:`.metrics` (accuracy, splits, class weights),
:mod:`.config` (:class:`TrainConfig`, :class:`GridResult`), :mod:`.stacked` (stacked heads and
the stacked optimiser), :mod:`.loop` (the training loops and grids), :mod:`.linear` (the
L-BFGS solver for linear probes) and :mod:`.regression` (``task="regression"``: MSE loss, R²,
random split, closed-form ridge for linear probes).
"""

from __future__ import annotations

from .config import GridResult, HeadFactory, TrainConfig
from .linear import LinearSolution, fit_linear_probes
from .loop import train_grid, train_stream
from .metrics import (
    accuracy,
    balanced_accuracy,
    batch_size_for,
    class_weights,
    grouped_split,
    selection_accuracy,
    stratified_split,
)

__all__ = [
    "GridResult",
    "HeadFactory",
    "LinearSolution",
    "TrainConfig",
    "accuracy",
    "balanced_accuracy",
    "selection_accuracy",
    "batch_size_for",
    "class_weights",
    "fit_linear_probes",
    "grouped_split",
    "stratified_split",
    "train_grid",
    "train_stream",
]
