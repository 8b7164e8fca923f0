"""What a run's task decides: its targets, split, estimator, scores, tables and summary lines.

One :class:`Task` per task in :data:`TASKS`; the fit stage (:func:`probekit.runs.fit.fit_stage`),
``metrics.csv`` (:mod:`~probekit.runs.tables`), the terminal summary
(:mod:`~probekit.runs.summary`) and the report ask the run's task for each of them, so a new
metric (an AUROC, a recall at low false-positive rate) is added once, to its task's scorer, its
metric names and its CSV row.

* ``classification``: class labels, a stratified split, :class:`~probekit.ProbeClassifier`,
  accuracy and balanced accuracy with 95% bootstrap intervals; heads are compared with two
  linear baselines by a paired bootstrap of balanced accuracy.
* ``regression``: continuous targets (``CACHE/targets.json``), a random split,
  :class:`~probekit.ProbeRegressor`, R² and Spearman with 95% bootstrap intervals, and MSE.

Every interval of a scorer comes from :mod:`probekit.analysis.stats` over one ``(R, N)``
resample matrix (:func:`~probekit.analysis.stats.bootstrap_indices`) shared by every head and
layer of a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["LayerPlot", "TASKS", "Task", "get_task"]


@dataclass(frozen=True)
class LayerPlot:
    """The report's per-layer figure of the linear probes (the headline metric per layer).

    Attributes:
        stem: file stem of the figure (``RUN/figures/<stem>.html``).
        name: legend name of the curve.
        caption: the figure's caption.
        chance: ``metrics -> float``, the chance line.
        yaxis: plotly y-axis settings, or ``None`` for the display's own.
        title: the figure's title, or ``None`` for the display's own.
    """

    stem: str
    name: str
    caption: str
    chance: Callable[[dict[str, Any]], float]
    yaxis: dict[str, Any] | None = None
    title: str | None = None


@dataclass(frozen=True)
class Task:
    """One task of a run: every step that differs between tasks, asked by name.

    Attributes:
        name: the ``RunConfig.task`` value.
        estimator: name of the estimator class in :mod:`probekit.estimator` (imported on use:
            the CLI builds its parser without torch).
        targets: ``(cache, cfg) -> (y, header, label_names)``: ``(N,)`` targets of the cached
            samples, the keys ``metrics.json`` starts with, and its ``label_names``.
        split: ``(y, test_size, seed, groups) -> (train, test)``: sorted ``(N_train,)`` and
            ``(N_test,)`` positions; with ``groups`` (a word cache's samples) every group lies
            wholly on one side.
        split_name: how the split is drawn, for the report (``"stratified"``, ``"random"``).
        score: ``(y, pred, idx) -> dict``: the metrics of ``(N,)`` predictions of ``(N,)``
            targets with their 95% intervals over the ``(R, N)`` resamples ``idx``.
        metrics: the metrics of ``score`` with an interval (``<name>_ci`` beside ``<name>``).
        headline: the metric heads and layers are ranked by.
        compare: ``(y, pred_a, pred_b, idx) -> dict`` paired comparison of two heads' scores
            on the same resamples, or ``None`` (no ``paired`` entries).
        science: the measures of :mod:`probekit.runs.science` apply (control task, MDL, CKA,
            the random-init comparison).
        streams: the estimator takes ``memory_budget`` and reads rows from the cache when the
            features do not fit.
        csv_columns: ``metrics.csv``'s columns after ``head`` and ``layer``.
        csv_row: ``(entry, model) -> cells`` for :attr:`csv_columns` (``model``: ``"trained"``
            or ``"random"``).
        describe: ``metrics -> str`` said of the run in the summary's first line
            (``"regression of valence, "``).
        summary_header: the summary's column header line.
        summary_row: ``(head, entry) -> str``: one head's summary line (also what
            ``probekit fit`` prints).
        layer_line: ``per-layer entry -> str``: the best layer's score in the summary.
        layer_plot: the report's per-layer figure.
        per_class: the linear probes' recall of every class per layer and the best head's
            confusion counts are recorded (:mod:`probekit.runs.classes`).
    """

    name: str
    estimator: str
    targets: Callable[[Any, Any], tuple[np.ndarray, dict[str, Any], list[str]]]
    split: Callable[[np.ndarray, float, int, np.ndarray | None], tuple[np.ndarray, np.ndarray]]
    split_name: str
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]
    metrics: tuple[str, ...]
    headline: str
    compare: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], dict[str, Any]] | None
    science: bool
    streams: bool
    csv_columns: tuple[str, ...]
    csv_row: Callable[[dict[str, Any], str], list[str]]
    describe: Callable[[dict[str, Any]], str]
    summary_header: str
    summary_row: Callable[[str, dict[str, Any]], str]
    layer_line: Callable[[dict[str, Any]], str]
    layer_plot: LayerPlot
    per_class: bool = False

    def estimator_class(self) -> type:
        """The estimator class (:class:`~probekit.ProbeClassifier` or
        :class:`~probekit.ProbeRegressor`)."""
        from .. import estimator

        cls: type = getattr(estimator, self.estimator)
        return cls

    def best(self, entries: dict[str, dict[str, Any]]) -> str | None:
        """The key of ``entries`` (heads) with the highest :attr:`headline`; ``None`` if empty."""
        return max(entries, key=lambda h: entries[h][self.headline]) if entries else None


def _f4(v: float) -> str:
    return f"{v:.4f}"


def _num(v: Any) -> str:
    return "" if v is None or v == "" else f"{v:.4f}"


def _with_ci(entry: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """``value, lo, hi`` of each metric, 4 decimals."""
    return [_f4(v) for k in names for v in (entry[k], *entry[f"{k}_ci"])]


# ------------------------------------------------------------------------------ classification


def _class_targets(cache: Any, cfg: Any) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    labels = np.asarray(cache.labels)
    if np.unique(labels).size < 2:
        raise DataError("the cache holds a single class; probes need at least two")
    return labels, {}, list(cache.label_names)


def _stratified(
    y: np.ndarray, test_size: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, test)`` positions, sorted: the same split as the estimators'
    validation split (:func:`probekit.train.stratified_split`), so ``round(test_size * n_c)``
    samples of every class ``c`` with two or more samples go to test; by group (sentence) when
    ``groups`` is given."""
    from ..train.metrics import stratified_split

    return stratified_split(y, test_size, seed, groups)


def _class_scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    from ..analysis.stats import (
        percentile_interval,
        resampled_accuracy,
        resampled_balanced_accuracy,
    )
    from ..train.metrics import accuracy, balanced_accuracy

    return {
        "accuracy": accuracy(y, pred),
        "accuracy_ci": percentile_interval(resampled_accuracy(y, pred, idx)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "balanced_accuracy_ci": percentile_interval(resampled_balanced_accuracy(y, pred, idx)),
    }


def _class_compare(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, idx: np.ndarray
) -> dict[str, Any]:
    """Balanced accuracy of A minus B on the same resamples: ``difference`` (on the test
    samples themselves), ``ci`` (95% percentile interval) and ``p_le0`` (fraction of resamples
    where A - B <= 0); see :func:`probekit.analysis.stats.paired_bootstrap`."""
    from ..analysis.stats import paired_bootstrap

    res = paired_bootstrap(y, pred_a, pred_b, idx=idx)
    return {"difference": res.difference, "ci": [res.lo, res.hi], "p_le0": res.p_not_better}


_PAIRED = tuple(f"vs_{ref}" for ref in ("last_layer", "best_layer"))


def _class_csv_row(r: dict[str, Any], model: str) -> list[str]:
    cmp: list[str] = []
    for ref in _PAIRED:
        c = r.get("paired", {}).get(ref)
        cmp += (
            [_f4(c["difference"]), _f4(c["ci"][0]), _f4(c["ci"][1]), _f4(c["p_le0"])]
            if c
            else ["", "", "", ""]
        )
    sel = r.get("selectivity_ci", ["", ""])
    return [
        *_with_ci(r, ("accuracy", "balanced_accuracy")),
        *cmp,
        _num(r.get("control_accuracy")),
        _num(r.get("selectivity")),
        _num(sel[0]),
        _num(sel[1]),
        model,
    ]


def _class_row(head: str, e: dict[str, Any]) -> str:
    lo, hi = e["balanced_accuracy_ci"]
    return f"  {head:<16s} {e['balanced_accuracy']:>12.3f}  [{lo:.3f}, {hi:.3f}]"


def _class_layer(r: dict[str, Any]) -> str:
    lo, hi = r["balanced_accuracy_ci"]
    return f"{r['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"


CLASSIFICATION = Task(
    name="classification",
    estimator="ProbeClassifier",
    targets=_class_targets,
    split=_stratified,
    split_name="stratified",
    score=_class_scores,
    metrics=("accuracy", "balanced_accuracy"),
    headline="balanced_accuracy",
    compare=_class_compare,
    science=True,
    streams=True,
    csv_columns=(
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "balanced_accuracy",
        "balanced_accuracy_lo",
        "balanced_accuracy_hi",
        *(f"{ref}{s}" for ref in _PAIRED for s in ("", "_lo", "_hi", "_p_le0")),
        "control_accuracy",
        "selectivity",
        "selectivity_lo",
        "selectivity_hi",
        "model",
    ),
    csv_row=_class_csv_row,
    describe=lambda metrics: "",
    summary_header=f"  {'head':<16s} {'balanced acc':>12s}  95% interval",
    summary_row=_class_row,
    layer_line=_class_layer,
    layer_plot=LayerPlot(
        stem="accuracy",
        name="linear probe (balanced accuracy)",
        caption="Balanced test accuracy of one linear probe per layer, with a 95% bootstrap "
        "interval.",
        chance=lambda metrics: 1.0 / len(metrics["label_names"]),
    ),
    per_class=True,
)


# ---------------------------------------------------------------------------------- regression


def _regression_targets(cache: Any, cfg: Any) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    from .folder import cache_targets

    y, target_name = cache_targets(cache, cfg.cache_dir)
    if np.ptp(y) == 0:
        raise DataError("the cache's regression targets are constant; probes need them to vary")
    return y, {"task": "regression", "target_name": target_name}, [target_name]


def _random_split(
    y: np.ndarray, test_size: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``train_test_split`` of the positions, sorted (by group, when given)."""
    from sklearn.model_selection import train_test_split

    if groups is not None:
        from ..train.metrics import grouped_split

        return grouped_split(y, groups, test_size, seed, stratify=False)
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed)
    return np.sort(train), np.sort(test)


def _regression_scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import mean_squared_error, r2_score

    from ..analysis.stats import percentile_interval, resampled_r2, resampled_spearman
    from ..estimator.regressor import spearman

    return {
        "r2": float(r2_score(y, pred)),
        "r2_ci": percentile_interval(resampled_r2(y, pred, idx)),
        "spearman": spearman(y, pred),
        "spearman_ci": percentile_interval(resampled_spearman(y, pred, idx)),
        "mse": float(mean_squared_error(y, pred)),
    }


def _regression_row(head: str, e: dict[str, Any]) -> str:
    lo, hi = e["r2_ci"]
    return f"  {head:<16s} {e['r2']:>7.3f}  [{lo:.3f}, {hi:.3f}]  {e['spearman']:>8.3f}"


def _regression_layer(r: dict[str, Any]) -> str:
    lo, hi = r["r2_ci"]
    return f"R2 {r['r2']:.3f} [{lo:.3f}, {hi:.3f}]"


REGRESSION = Task(
    name="regression",
    estimator="ProbeRegressor",
    targets=_regression_targets,
    split=_random_split,
    split_name="random",
    score=_regression_scores,
    metrics=("r2", "spearman"),
    headline="r2",
    compare=None,
    science=False,
    streams=False,
    csv_columns=(
        "r2",
        "r2_lo",
        "r2_hi",
        "spearman",
        "spearman_lo",
        "spearman_hi",
        "mse",
    ),
    csv_row=lambda r, model: [*_with_ci(r, ("r2", "spearman")), f"{r['mse']:.6g}"],
    describe=lambda metrics: f"regression of {metrics.get('target_name')}, ",
    summary_header=f"  {'head':<16s} {'R2':>7s}  95% interval     Spearman",
    summary_row=_regression_row,
    layer_line=_regression_layer,
    layer_plot=LayerPlot(
        stem="r2",
        name="linear probe (R²)",
        caption="Test R² of one ridge probe per layer, with a 95% bootstrap interval "
        "(0 = predicting the mean).",
        chance=lambda metrics: 0.0,
        yaxis={"title": "R²", "tickformat": ".2f"},
        title="Per-layer ridge probes: test R²",
    ),
)


TASKS: dict[str, Task] = {t.name: t for t in (CLASSIFICATION, REGRESSION)}
"""Every task by name; a run's ``task`` option picks one."""


def get_task(name_or_metrics: str | dict[str, Any]) -> Task:
    """The :class:`Task` named ``name_or_metrics``, or of a run's ``metrics.json`` dict (its
    ``"task"`` key; none: classification).

    Raises:
        ConfigError: an unknown task name.
    """
    name = (
        name_or_metrics.get("task", "classification")
        if isinstance(name_or_metrics, dict)
        else name_or_metrics
    )
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
