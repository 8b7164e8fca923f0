"""The report's binary-task parts: the per-layer AUROC curve (the linear probes, and the
``diff-means`` probes when the run has them) and the AUROC, AUPRC and recall at 1% FPR cells of
the head and layer tables, from ``metrics.json`` (:mod:`probekit.runs.task`). Multi-class runs
have none of these entries, so every function here returns nothing for them.
:mod:`probekit.report.html` places them."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["binary_figures", "binary_head_cells", "binary_layer_cells"]

_NAMES = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("recall_at_1fpr", "recall @ 1% FPR"))


def _is_binary(metrics: dict[str, Any]) -> bool:
    return any("auroc" in e for e in metrics["heads"].values())


def binary_figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-layer AUROC curve with its 95% intervals, as dicts of
    :class:`probekit.report.Figure` fields (none for a multi-class run)."""
    from ..viz import LayerAccuracyDisplay

    curves = [
        (head, e["per_layer"])
        for head, e in metrics["heads"].items()
        if head in ("linear", "diff-means") and e.get("per_layer") and "auroc" in e["per_layer"][0]
    ]
    if not curves:
        return []
    fig = None
    colors = ("#1f77b4", "#d62728")
    for (head, rows), color in zip(curves, colors, strict=False):
        disp = LayerAccuracyDisplay(
            metrics["layer_names"],
            [r["auroc"] for r in rows],
            [r["auroc_ci"][0] for r in rows],
            [r["auroc_ci"][1] for r in rows],
            chance=0.5 if fig is None else None,
            name=f"{head} probe (AUROC)",
        ).plot(fig, color=color, band_color=None if fig is None else "rgba(214,39,40,0.15)")
        fig = disp.figure_
    assert fig is not None
    fig.update_yaxes(title="AUROC", tickformat=".2f")
    fig.update_layout(title="Per-layer probes: test AUROC")
    heads = " and ".join(h for h, _ in curves)
    return [
        {
            "name": "auroc",
            "title": "Per-layer probes: AUROC",
            "caption": f"Test AUROC of one {heads} probe per layer (the probe's score ranks "
            "the positive class), with a 95% bootstrap interval; 0.5 = chance.",
            "figure": fig,
            "key": True,
        }
    ]


def _value(e: dict[str, Any], name: str) -> str:
    if name not in e:
        return "<td></td>"
    lo, hi = e[f"{name}_ci"]
    return f"<td>{e[name]:.3f} [{lo:.3f}, {hi:.3f}]</td>"


def _paired(e: dict[str, Any]) -> str:
    c = e.get("paired", {}).get("vs_last_layer", {}).get("auroc")
    if not c:
        return "<td></td>"
    lo, hi = c["ci"]
    return f"<td>{c['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({c['p_le0']:.3f})</td>"


def binary_head_cells(metrics: dict[str, Any], e: dict[str, Any] | None) -> str:
    """The head table's binary cells of one head (``e``), or its header cells (``None``);
    empty for a multi-class run."""
    if not _is_binary(metrics):
        return ""
    if e is None:
        last = html.escape(str(metrics.get("baselines", {}).get("last_layer", "last layer")))
        return "".join(f"<th>{t} [95% CI]</th>" for _, t in _NAMES) + (
            f"<th>AUROC vs last layer ({last})</th>"
        )
    return "".join(_value(e, k) for k, _ in _NAMES) + _paired(e)


def binary_layer_cells(metrics: dict[str, Any], r: dict[str, Any] | None) -> str:
    """The layer table's binary cells of one layer row (``r``), or its header (``None``)."""
    if not _is_binary(metrics):
        return ""
    if r is None:
        return "".join(f"<th>{t} [95% CI]</th>" for _, t in _NAMES)
    return "".join(_value(r, k) for k, _ in _NAMES)
