"""The run's ``metrics.csv``: one row per head, then one per layer of the linear probe.

The columns after ``head`` and ``layer`` are the run's task's (:attr:`Task.csv_columns
<probekit.runs.task.Task>`). Classification: accuracy and balanced accuracy with their 95%
intervals, the paired comparisons with the last layer's and the validation-chosen layer's
linear probe; with a control task, each layer's control accuracy and selectivity (with its
paired interval); with ``compare_random``, the random-init model's rows follow, their ``model``
column saying ``random`` (``trained`` otherwise). Binary tasks fill AUROC, AUPRC and recall
at 1% FPR with their intervals and their paired comparison with the last layer's linear probe
(``vs_last_layer_auroc``...; empty cells otherwise). The per-class recall of the linear
probes follows each head's rows as long rows: ``head, layer``, the ``class``, its ``recall``
and ``support`` (test rows), every other cell empty. Regression: R² and Spearman with their
intervals, and MSE.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .task import get_task

__all__ = ["write_metrics", "write_metrics_csv"]


def write_metrics_csv(metrics: dict[str, Any], run_dir: Path) -> None:
    """Write ``run_dir/metrics.csv`` for a run's ``metrics`` (its task from ``metrics["task"]``)."""
    task = get_task(metrics)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["head", "layer", *task.csv_columns])
        runs = [("trained", metrics["heads"])]
        if metrics.get("random_init"):
            runs.append(("random", metrics["random_init"]["heads"]))
        for model, heads in runs:
            for head, e in heads.items():
                rows = [("all", e)] + [(r["layer"], r) for r in e.get("per_layer", [])]
                for layer, r in rows:
                    w.writerow([head, layer, *task.csv_row(r, model)])
                if task.csv_extra is not None:
                    w.writerows(task.csv_extra(head, e, model))


def write_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    """``metrics.json`` and ``metrics.csv``."""
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_metrics_csv(metrics, run_dir)
