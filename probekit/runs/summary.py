"""The few lines ``probekit run`` prints at the end of a run (read from its ``metrics.json``)."""

from __future__ import annotations

from pathlib import Path

from .folder import read_metrics
from .task import get_task

__all__ = ["summary_table"]


def summary_table(run_dir: str | Path) -> str:
    """A few lines for the terminal: each head's headline score with its 95% interval (the
    task's summary line: balanced accuracy, or R² and Spearman), the best layer of the
    per-layer linear probes, and where the report is."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    task = get_task(metrics)
    heads = metrics["heads"]
    lines = [
        f"run {run_dir}  ({metrics.get('model')} on {metrics.get('data')}, "
        f"{task.describe(metrics)}{metrics.get('n_train')} train / {metrics.get('n_test')} test)",
        task.summary_header(metrics),
    ]
    best = task.best(heads)
    for head, e in heads.items():
        mark = "  <- best" if head == best else ""
        lines.append(task.summary_row(head, e) + mark)
    rows = heads.get("linear", {}).get("per_layer")
    if rows:
        top = max(rows, key=lambda r: r[task.headline])
        lines.append(f"  best layer (linear probe): {top['layer']}  {task.layer_line(top)}")
    report = run_dir / "report.html"
    lines.append(f"  report: {report}" if report.is_file() else "  report: not written")
    return "\n".join(lines)
