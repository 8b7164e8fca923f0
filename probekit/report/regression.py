"""The figures and tables of a regression run's report (``probekit run --task regression``).

:mod:`probekit.report` calls these when ``metrics.json`` says ``"task": "regression"``: per-layer
R² of the linear probes with bootstrap intervals, predicted against true targets for the best
head, and each head's layer weights and ablation sensitivity in squared-error units.
"""

from __future__ import annotations

import html
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..runs.task import get_task

__all__ = ["regression_figures", "regression_tables"]

FigureSpec = tuple[str, str, str, Any, bool]
"""(file stem, title, caption, plotly figure, key figure)."""


def _best_head(metrics: dict[str, Any], among: Any = None) -> str | None:
    """The head (of ``among``, default all) with the task's best headline score."""
    heads = {h: e for h, e in metrics["heads"].items() if among is None or h in among}
    return get_task(metrics).best(heads)


def _scatter(y: np.ndarray, pred: np.ndarray, head: str, r2: float, rho: float, target: str) -> Any:
    import plotly.graph_objects as go

    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=y, y=pred, mode="markers", name=head, marker={"size": 5, "opacity": 0.6})
    )
    fig.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            name="y = x",
            line={"dash": "dash", "color": "grey"},
        )
    )
    fig.update_xaxes(title=f"true {target}")
    fig.update_yaxes(title=f"predicted {target}")
    fig.update_layout(
        title=f"{head}: predicted vs true (R² {r2:.3f}, Spearman {rho:.3f})",
        template="plotly_white",
        width=620,
        height=560,
    )
    return fig


def _target_bins(y: np.ndarray, bins: int = 10) -> np.ndarray:
    """``(N,)`` decile of each target: the strata of a heatmap's subsample."""
    edges = np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, y)


def regression_figures(
    metrics: dict[str, Any],
    summary: dict[str, Any] | None,
    arrays: dict[str, Any],
    head_layers: dict[str, list[str]] | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    chunk_bytes: int | None = None,
) -> list[FigureSpec]:
    """Every attribution figure of a regression run, most telling first (the per-layer figure
    is the report's, from the task's :class:`~probekit.runs.task.LayerPlot`).

    ``arrays`` maps each head to its :class:`~probekit.report_arrays.AttributionFile`, read a
    chunk of ``chunk_bytes`` at a time; ``head_layers`` gives the layers each head was fitted on
    (default: every layer). A per-sample heatmap draws at most ``max_samples`` rows, above it a
    seeded sample stratified by target decile.
    """
    from ..viz import AblationDisplay
    from .arrays import CHUNK_BYTES, HEATMAP_MAX_SAMPLES, stratified_subsample, summarize_head

    layers = metrics["layer_names"]
    target = metrics.get("target_name", "target")
    cap = HEATMAP_MAX_SAMPLES if max_samples is None else max_samples
    figs: list[FigureSpec] = []
    if not summary:
        return figs
    best = _best_head(metrics, arrays)
    if best is not None and "targets" in arrays[best]:
        e = metrics["heads"][best]
        fig = _scatter(
            np.asarray(arrays[best]["targets"]),
            np.asarray(arrays[best]["predictions"]),
            best,
            e["r2"],
            e["spearman"],
            target,
        )
        figs.append(
            (
                "scatter",
                f"{best}: predicted vs true",
                "Each point is a test sample; the dashed line is a perfect prediction.",
                fig,
                True,
            )
        )
    for head in sorted(arrays, key=lambda h: (h != best, h)):
        a = arrays[head]
        head_names = (head_layers or {}).get(head, layers)
        n = a.shapes["ablation"][0]
        y = np.asarray(a["targets"]) if "targets" in a else None
        shown = stratified_subsample(np.zeros(n) if y is None else _target_bins(y), cap, seed)
        s = summarize_head(a, np.zeros(n), shown, chunk_bytes or CHUNK_BYTES)
        if "layer_weights" in a and head != "scalar-mix":
            import plotly.graph_objects as go

            assert s.weights_shown is not None  # the head stores layer weights
            w = s.weights_shown.astype(a.dtypes["layer_weights"])  # (k, L) as stored
            order = np.argsort(y[shown]) if y is not None else np.arange(len(w))
            note = f" ({len(shown)} of {n} test samples shown)" if len(shown) < n else ""
            fig = go.Figure(
                go.Heatmap(
                    z=w[order], x=head_names, colorscale="Viridis", colorbar={"title": "weight"}
                )
            )
            fig.update_layout(
                title=f"{head}: layer weights per test sample (sorted by true {target}){note}",
                template="plotly_white",
                xaxis={"title": "layer", "type": "category"},
                yaxis={"title": f"test samples, by {target}"},
            )
            caption = (
                f"Each row is a test sample, sorted by its true {target}; each column a layer."
            )
            if note:
                caption += (
                    f" {len(shown)} of {n} test samples shown: a random sample stratified "
                    f"by {target} decile (seed {seed})."
                )
            figs.append(
                (
                    f"weights-{head}",
                    f"{head}: layer weights per test sample",
                    caption,
                    fig,
                    head == best,
                )
            )
        result = SimpleNamespace(
            accuracy_drop=a["accuracy_drop"],
            layer_names=list(head_names),
            base_accuracy=summary["heads"][head]["base_accuracy"],
            mode=summary["mode"],
        )
        fig = AblationDisplay.from_stats(s.ablation_mean, s.ablation_std, s.n, result).figure_
        fig.update_yaxes(title="Δ squared error", row=1, col=1)
        fig.update_yaxes(title="Δ R²", tickformat=".2f", row=2, col=1)
        fig.update_layout(
            title=f"Layer ablation ({summary['mode']}): base R² {result.base_accuracy:.3f}"
        )
        figs.append(
            (
                f"ablation-{head}",
                f"{head}: layer ablation sensitivity",
                f"Rise in squared error (target units²) and drop in R² when one layer is "
                f"replaced by its {summary['mode']}.",
                fig,
                head == best,
            )
        )
    return figs


def _num(x: float) -> str:
    return f"{x:.3f}"


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def regression_tables(metrics: dict[str, Any], summary: dict[str, Any] | None) -> tuple[str, str]:
    """HTML tables: the heads (R², Spearman, MSE) and the per-layer linear probes."""
    heads = metrics["heads"]
    best = _best_head(metrics)
    rows = []
    for head, e in heads.items():
        name = head + (f" (layer {e['selected_layer']})" if "selected_layer" in e else "")
        rows.append(
            f"<tr class='{'best' if head == best else ''}'><td>{html.escape(name)}</td>"
            f"<td>{_num(e['r2'])}</td><td>{_ci(e['r2_ci'])}</td><td>{_num(e['spearman'])}</td>"
            f"<td>{_ci(e['spearman_ci'])}</td><td>{e['mse']:.4g}</td>"
            f"<td>{e.get('fit_seconds', '')}</td></tr>"
        )
    head_table = (
        "<table><tr><th>head</th><th>R²</th><th>95% CI</th><th>Spearman ρ</th>"
        "<th>95% CI</th><th>MSE</th><th>fit s</th></tr>" + "".join(rows) + "</table>"
    )
    linear = heads.get("linear")
    if not linear or "per_layer" not in linear:
        return head_table, "<p class='muted'>No per-layer linear probes in this run.</p>"
    layer_rows = "".join(
        f"<tr><td>{html.escape(r['layer'])}</td><td>{_num(r['r2'])}</td><td>{_ci(r['r2_ci'])}</td>"
        f"<td>{_num(r['spearman'])}</td><td>{_ci(r['spearman_ci'])}</td></tr>"
        for r in linear["per_layer"]
    )
    return head_table, (
        "<table><tr><th>layer</th><th>R²</th><th>95% CI</th><th>Spearman ρ</th>"
        "<th>95% CI</th></tr>" + layer_rows + "</table>"
    )
