"""The few lines ``probekit run`` prints at the end of a run (read from its ``metrics.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .folder import read_metrics

__all__ = ["summary_table"]


def summary_table(run_dir: str | Path) -> str:
    """A few lines for the terminal: each head's balanced accuracy with its 95% interval, the
    best layer of the per-layer linear probes, and where the report is."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    if metrics.get("task") == "regression":
        return _regression_summary(run_dir, metrics)
    heads = metrics["heads"]
    lines = [
        f"run {run_dir}  ({metrics.get('model')} on {metrics.get('data')}, "
        f"{metrics.get('n_train')} train / {metrics.get('n_test')} test)",
        f"  {'head':<16s} {'balanced acc':>12s}  95% interval",
    ]
    best = max(heads, key=lambda h: heads[h]["balanced_accuracy"]) if heads else None
    for head, e in heads.items():
        lo, hi = e["balanced_accuracy_ci"]
        mark = "  <- best" if head == best else ""
        lines.append(f"  {head:<16s} {e['balanced_accuracy']:>12.3f}  [{lo:.3f}, {hi:.3f}]{mark}")
    rows = heads.get("linear", {}).get("per_layer")
    if rows:
        top = max(rows, key=lambda r: r["balanced_accuracy"])
        lo, hi = top["balanced_accuracy_ci"]
        lines.append(
            f"  best layer (linear probe): {top['layer']}  "
            f"{top['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    report = run_dir / "report.html"
    lines.append(f"  report: {report}" if report.is_file() else "  report: not written")
    return "\n".join(lines)


def _regression_summary(run_dir: Path, metrics: dict[str, Any]) -> str:
    heads = metrics["heads"]
    lines = [
        f"run {run_dir}  ({metrics.get('model')} on {metrics.get('data')}, regression of "
        f"{metrics.get('target_name')}, {metrics.get('n_train')} train / "
        f"{metrics.get('n_test')} test)",
        f"  {'head':<16s} {'R2':>7s}  95% interval     Spearman",
    ]
    best = max(heads, key=lambda h: heads[h]["r2"]) if heads else None
    for head, e in heads.items():
        lo, hi = e["r2_ci"]
        mark = "  <- best" if head == best else ""
        lines.append(
            f"  {head:<16s} {e['r2']:>7.3f}  [{lo:.3f}, {hi:.3f}]  {e['spearman']:>8.3f}{mark}"
        )
    rows = heads.get("linear", {}).get("per_layer")
    if rows:
        top = max(rows, key=lambda r: r["r2"])
        lo, hi = top["r2_ci"]
        lines.append(
            f"  best layer (linear probe): {top['layer']}  R2 {top['r2']:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    report = run_dir / "report.html"
    lines.append(f"  report: {report}" if report.is_file() else "  report: not written")
    return "\n".join(lines)
