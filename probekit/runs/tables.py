"""The run's ``metrics.csv``: one row per head, then one per layer of the linear probe.

Classification: accuracy and balanced accuracy with their 95% intervals, the paired comparisons
with the last layer's and the validation-chosen layer's linear probe; with a control task,
each layer's control accuracy and selectivity (with its paired interval); with
``compare_random``, the random-init model's rows follow, their ``model`` column saying
``random`` (``trained`` otherwise). Regression: R² and Spearman with their intervals, and MSE.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["write_classification_csv", "write_regression_csv"]


def write_classification_csv(metrics: dict[str, Any], run_dir: Path) -> None:
    """Write ``run_dir/metrics.csv`` for a classification run's ``metrics``."""
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        paired = [
            f"{ref}{suffix}"
            for ref in ("vs_last_layer", "vs_best_layer")
            for suffix in ("", "_lo", "_hi", "_p_le0")
        ]
        w.writerow(
            [
                "head",
                "layer",
                "accuracy",
                "accuracy_lo",
                "accuracy_hi",
                "balanced_accuracy",
                "balanced_accuracy_lo",
                "balanced_accuracy_hi",
                *paired,
                "control_accuracy",
                "selectivity",
                "selectivity_lo",
                "selectivity_hi",
                "model",
            ]
        )
        runs = [("trained", metrics["heads"])]
        if metrics.get("random_init"):
            runs.append(("random", metrics["random_init"]["heads"]))
        for model, heads in runs:
            for head, e in heads.items():
                rows = [(head, "all", e)] + [(head, r["layer"], r) for r in e.get("per_layer", [])]
                for h, layer, r in rows:
                    cmp = []
                    for ref in ("vs_last_layer", "vs_best_layer"):
                        c = r.get("paired", {}).get(ref)
                        cmp += (
                            [
                                f"{c['difference']:.4f}",
                                f"{c['ci'][0]:.4f}",
                                f"{c['ci'][1]:.4f}",
                                f"{c['p_le0']:.4f}",
                            ]
                            if c
                            else ["", "", "", ""]
                        )
                    sel = r.get("selectivity_ci", ["", ""])
                    w.writerow(
                        [
                            h,
                            layer,
                            f"{r['accuracy']:.4f}",
                            f"{r['accuracy_ci'][0]:.4f}",
                            f"{r['accuracy_ci'][1]:.4f}",
                            f"{r['balanced_accuracy']:.4f}",
                            f"{r['balanced_accuracy_ci'][0]:.4f}",
                            f"{r['balanced_accuracy_ci'][1]:.4f}",
                            *cmp,
                            _num(r.get("control_accuracy")),
                            _num(r.get("selectivity")),
                            _num(sel[0]),
                            _num(sel[1]),
                            model,
                        ]
                    )


def _num(v: Any) -> str:
    return "" if v is None or v == "" else f"{v:.4f}"


def write_regression_csv(metrics: dict[str, Any], run_dir: Path) -> None:
    """Write ``run_dir/metrics.csv`` for a regression run's ``metrics``."""
    keys = ("r2", "spearman")
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "head",
                "layer",
                "r2",
                "r2_lo",
                "r2_hi",
                "spearman",
                "spearman_lo",
                "spearman_hi",
                "mse",
            ]
        )
        for head, e in metrics["heads"].items():
            rows = [(head, "all", e)] + [(head, r["layer"], r) for r in e.get("per_layer", [])]
            for h, layer, r in rows:
                values = [f"{v:.4f}" for k in keys for v in (r[k], *r[f"{k}_ci"])]
                w.writerow([h, layer, *values, f"{r['mse']:.6g}"])
