"""The report's per-class figures of a classification run: each class's recall per layer (the
linear probes) and the best head's confusion matrix, from ``metrics.json``'s ``per_class`` and
``confusion`` (:mod:`probekit.runs.classes`). :mod:`probekit.report.html` places them."""

from __future__ import annotations

from typing import Any

__all__ = ["class_figures"]


def class_figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures, as dicts of :class:`probekit.report.Figure` fields (none for a run saved
    before they were recorded)."""
    from ..viz.classes import ClassRecallDisplay, ConfusionDisplay

    figs: list[dict[str, Any]] = []
    linear = metrics["heads"].get("linear", {})
    table = linear.get("per_class")
    if table:
        disp = ClassRecallDisplay.from_table(table, linear.get("per_class_support"))
        figs.append(
            {
                "name": "per-class-recall",
                "title": "Per-layer linear probes: recall of each class",
                "caption": "Each cell: the fraction of a class's test rows that one layer's "
                "linear probe labels correctly (n: the class's test rows); which layers "
                "know which classes. Classes without test rows are left out.",
                "figure": disp.figure_,
                "key": True,
            }
        )
    confusion = metrics.get("confusion")
    if confusion:
        head = confusion["head"]
        matrix = ConfusionDisplay.from_counts(
            confusion["counts"],
            metrics["label_names"],
            title=f"Confusion matrix of {head} (normalised per true class)",
        )
        figs.append(
            {
                "name": "confusion",
                "title": f"{head}: confusion matrix on the test split",
                "caption": f"Rows: true class (n: its test rows); columns: the class {head} "
                "(the best head by balanced accuracy) predicts; each row sums to 1. Classes "
                "neither true nor predicted are left out.",
                "figure": matrix.figure_,
            }
        )
    return figs
