"""What a run's task decides: its targets, split, estimator, scores, tables and summary lines.

One :class:`Task` per task in :data:`TASKS`; the fit stage (:func:`probekit.runs.fit.fit_stage`),
``metrics.csv`` (:mod:`~probekit.runs.tables`), the terminal summary
(:mod:`~probekit.runs.summary`) and the report ask the run's task for each of them, so a new
metric (an AUROC, a recall at low false-positive rate) is added once, to its task's scorer, its
metric names and its CSV row.

* ``classification``: class labels, a stratified split, :class:`~probekit.ProbeClassifier`,
  accuracy and balanced accuracy with 95% bootstrap intervals; heads are compared with two
  linear baselines by a paired bootstrap of balanced accuracy. Binary tasks add AUROC, AUPRC
  (average precision) and recall at 1% FPR of each head's score (``decision_function``), with
  intervals and the same paired comparisons (:func:`~probekit.analysis.stats.binary_scores`).
* ``regression``: continuous targets (``CACHE/targets.json``), a random split,
  :class:`~probekit.ProbeRegressor`, R² and Spearman with 95% bootstrap intervals, and MSE.

Every interval of a scorer comes from :mod:`probekit.analysis.stats` over one set of resamples
(:func:`~probekit.analysis.stats.bootstrap_indices`) shared by every head and layer of a run:
of the test rows, or of the test inputs (a cluster bootstrap) when rows are words, tokens or
spans.
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
        score: ``(y, pred, idx, score) -> dict``: the metrics of ``(N,)`` predictions of
            ``(N,)`` targets with their 95% intervals over the resamples ``idx``; ``score``:
            the ``(N,)`` continuous score of a binary classifier (else ``None``).
        metrics: the metrics of ``score`` with an interval (``<name>_ci`` beside ``<name>``).
        headline: the metric heads and layers are ranked by.
        compare: ``(y, pred_a, pred_b, idx, score_a, score_b) -> dict`` paired comparison of
            two heads on the same resamples (``score_*``: binary scores or ``None``), or
            ``None`` (no ``paired`` entries).
        science: the measures of :mod:`probekit.runs.science` apply (control task, MDL, CKA,
            the random-init comparison).
        streams: the estimator takes ``memory_budget`` and reads rows from the cache when the
            features do not fit.
        csv_columns: ``metrics.csv``'s columns after ``head`` and ``layer``.
        csv_row: ``(entry, model) -> cells`` for :attr:`csv_columns` (``model``: ``"trained"``
            or ``"random"``).
        csv_extra: ``(head, entry, model) -> rows`` of ``per_class.csv`` (each ``[head,
            layer, model, class, recall, support]``: a tidy table of its own, so that
            ``metrics.csv`` keeps one row per head and layer), or ``None``.
        describe: ``metrics -> str`` said of the run in the summary's first line
            (``"regression of valence, "``).
        summary_header: ``metrics -> str``: the summary's column header line.
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
    score: Callable[[np.ndarray, np.ndarray, Any, np.ndarray | None], dict[str, Any]]
    metrics: tuple[str, ...]
    headline: str
    compare: Callable[..., dict[str, Any]] | None
    science: bool
    streams: bool
    csv_columns: tuple[str, ...]
    csv_row: Callable[[dict[str, Any], str], list[str]]
    describe: Callable[[dict[str, Any]], str]
    summary_header: Callable[[dict[str, Any]], str]
    summary_row: Callable[[str, dict[str, Any]], str]
    layer_line: Callable[[dict[str, Any]], str]
    layer_plot: LayerPlot
    per_class: bool = False
    csv_extra: Callable[[str, dict[str, Any], str], list[list[str]]] | None = None

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


def _class_scores(
    y: np.ndarray, pred: np.ndarray, idx: Any, score: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy and balanced accuracy with 95% intervals; with a binary ``score``, also
    AUROC, AUPRC and recall at 1% FPR (:func:`probekit.analysis.stats.binary_intervals`)."""
    from ..analysis.stats import (
        binary_intervals,
        percentile_interval,
        resampled_accuracy,
        resampled_balanced_accuracy,
    )
    from ..train.metrics import accuracy, balanced_accuracy

    out = {
        "accuracy": accuracy(y, pred),
        "accuracy_ci": percentile_interval(resampled_accuracy(y, pred, idx)),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "balanced_accuracy_ci": percentile_interval(resampled_balanced_accuracy(y, pred, idx)),
    }
    if score is not None:
        out.update(binary_intervals(y, score, idx))
    return out


def _class_compare(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    idx: Any,
    score_a: np.ndarray | None = None,
    score_b: np.ndarray | None = None,
) -> dict[str, Any]:
    """Balanced accuracy of A minus B on the same resamples: ``difference`` (on the test
    samples themselves), ``ci`` (95% percentile interval) and ``p_le0`` (fraction of resamples
    where A - B <= 0); see :func:`probekit.analysis.stats.paired_bootstrap`. With binary
    scores, ``auroc``, ``auprc`` and ``recall_at_1fpr`` each give the same three of A minus B
    (:func:`probekit.analysis.stats.paired_binary`), on the same resamples."""
    from ..analysis.stats import paired_binary, paired_bootstrap

    res = paired_bootstrap(y, pred_a, pred_b, idx=idx)
    out: dict[str, Any] = {
        "difference": res.difference,
        "ci": [res.lo, res.hi],
        "p_le0": res.p_not_better,
    }
    if score_a is not None and score_b is not None:
        out.update(paired_binary(y, score_a, score_b, idx))
    return out


_PAIRED = tuple(f"vs_{ref}" for ref in ("last_layer", "best_layer"))
_BINARY = ("auroc", "auprc", "recall_at_1fpr")  # analysis.stats.BINARY_METRICS (no import here)


def _paired_cells(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return ["", "", "", ""]
    return [_f4(c["difference"]), _f4(c["ci"][0]), _f4(c["ci"][1]), _f4(c["p_le0"])]


def _class_csv_row(r: dict[str, Any], model: str) -> list[str]:
    cmp: list[str] = []
    for ref in _PAIRED:
        cmp += _paired_cells(r.get("paired", {}).get(ref))
    binary: list[str] = []
    for name in _BINARY:
        ci = r.get(f"{name}_ci", ["", ""])
        binary += [_num(r.get(name)), _num(ci[0]), _num(ci[1])]
    last = r.get("paired", {}).get("vs_last_layer", {})
    for name in _BINARY:
        binary += _paired_cells(last.get(name))
    sel = r.get("selectivity_ci", ["", ""])
    return [
        *_with_ci(r, ("accuracy", "balanced_accuracy")),
        *cmp,
        _num(r.get("control_accuracy")),
        _num(r.get("selectivity")),
        _num(sel[0]),
        _num(sel[1]),
        model,
        *binary,
    ]


def _class_csv_extra(head: str, e: dict[str, Any], model: str) -> list[list[str]]:
    """Rows of the per-class recall (``per_class``): ``[head, layer, model, class, recall,
    support]``."""
    table, support = e.get("per_class") or {}, e.get("per_class_support") or {}
    return [
        [head, layer, model, cls, _num(recall), str(support.get(cls, ""))]
        for layer, recalls in table.items()
        for cls, recall in recalls.items()
    ]


def _class_header(metrics: dict[str, Any]) -> str:
    head = f"  {'head':<16s} {'balanced acc':>12s}  95% interval"
    binary = any("auroc" in e for e in metrics.get("heads", {}).values())
    return head + ("       AUROC   AUPRC  R@1%FPR" if binary else "")


def _class_row(head: str, e: dict[str, Any]) -> str:
    lo, hi = e["balanced_accuracy_ci"]
    line = f"  {head:<16s} {e['balanced_accuracy']:>12.3f}  [{lo:.3f}, {hi:.3f}]"
    if "auroc" in e:
        line += f"  {e['auroc']:>6.3f}  {e['auprc']:>6.3f}  {e['recall_at_1fpr']:>7.3f}"
    return line


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
        *(f"{m}{s}" for m in _BINARY for s in ("", "_lo", "_hi")),
        *(f"vs_last_layer_{m}{s}" for m in _BINARY for s in ("", "_lo", "_hi", "_p_le0")),
    ),
    csv_row=_class_csv_row,
    describe=lambda metrics: "",
    summary_header=_class_header,
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
    csv_extra=_class_csv_extra,
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


def _regression_scores(
    y: np.ndarray, pred: np.ndarray, idx: Any, score: np.ndarray | None = None
) -> dict[str, Any]:
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
    summary_header=lambda metrics: f"  {'head':<16s} {'R2':>7s}  95% interval     Spearman",
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
