"""The run's ``metrics.csv``: one row per head, then one per layer of the linear probe.

The columns after ``head`` and ``layer`` are the run's task's (:attr:`Task.csv_columns
<probekit.runs.task.Task>`). Classification: accuracy and balanced accuracy with their 95%
intervals, the paired comparisons with the last layer's and the validation-chosen layer's
linear probe; with a control task, each layer's control accuracy and selectivity (with its
paired interval); with ``compare_random``, the random-init model's rows follow, their ``model``
column saying ``random`` (``trained`` otherwise). Binary tasks fill AUROC, AUPRC and recall
at 1% FPR with their intervals and their paired comparison with the last layer's linear probe
(``vs_last_layer_auroc``...; empty cells otherwise). Regression: R² and Spearman with their
intervals, and MSE.

Classification runs also write ``per_class.csv``: the test recall of every class per layer of
the linear probes, one row per ``head, layer, model, class`` with its ``recall`` and
``support`` (test rows of the class).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .task import get_task

__all__ = ["write_metrics", "write_metrics_csv"]


def write_metrics_csv(metrics: dict[str, Any], run_dir: Path) -> None:
    """Write ``run_dir/metrics.csv`` (and ``per_class.csv``) for a run's ``metrics`` (its task from ``metrics["task"]``)."""
    task = get_task(metrics)
    runs = [("trained", metrics["heads"])]
    if metrics.get("random_init"):
        runs.append(("random", metrics["random_init"]["heads"]))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["head", "layer", *task.csv_columns])
        for model, heads in runs:
            for head, e in heads.items():
                rows = [("all", e)] + [(r["layer"], r) for r in e.get("per_layer", [])]
                for layer, r in rows:
                    w.writerow([head, layer, *task.csv_row(r, model)])
    if task.csv_extra is None:
        return
    with open(run_dir / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["head", "layer", "model", "class", "recall", "support"])
        for model, heads in runs:
            for head, e in heads.items():
                w.writerows(task.csv_extra(head, e, model))


def write_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    """``metrics.json``, ``metrics.csv`` (and ``per_class.csv`` for classification)."""
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_metrics_csv(metrics, run_dir)
