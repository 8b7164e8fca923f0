"""Figures and one self-contained ``report.html`` for a run folder.

Everything is rebuilt from what the run saved (``metrics.json``, ``attribution/*.safetensors``,
the cache's labels and texts), so ``probekit report RUN_DIR`` works on its own and never shows a
stale figure.
"""

from __future__ import annotations

import html
import json
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..runs.folder import read_config, read_metrics
from ..runs.task import Task, get_task
from .binary import binary_figures, binary_head_cells, binary_layer_cells
from .classes import class_figures
from .lens import lens_figures, lens_tables
from .regression import regression_figures, regression_tables
from .science import science_figures, science_tables
from .text import text_view_figure, text_view_spans

__all__ = ["Figure", "build_figures", "write_figures", "write_report"]

WEIGHT_HEADS_ORDER = ("alf", "laya", "kcla", "aila-attention", "aila-linear", "scalar-mix")


@dataclass
class Figure:
    """One figure of a run: a file stem, a title, a caption and the plotly figure."""

    name: str
    title: str
    caption: str
    figure: Any
    key: bool = False  # exported as an image too


def _load_run(run_dir: Path) -> dict[str, Any]:
    from ..cache import FeatureCache
    from .arrays import AttributionFile

    cfg = read_config(run_dir)
    metrics = read_metrics(run_dir)
    att_dir = run_dir / "attribution"
    summary = (
        json.loads((att_dir / "attribution.json").read_text())
        if (att_dir / "attribution.json").is_file()
        else None
    )
    arrays = (
        {p.stem: AttributionFile(p) for p in sorted(att_dir.glob("*.safetensors"))}
        if summary
        else {}
    )
    cache = FeatureCache.open(cfg.cache_dir)
    return {"cfg": cfg, "metrics": metrics, "summary": summary, "arrays": arrays, "cache": cache}


def _chunk_bytes(cfg: Any) -> int:
    """Chunks of the attribution files: small, and within the run's fit budget."""
    from ..runs.fit import memory_budget_of
    from .arrays import CHUNK_BYTES

    return max(1, min(CHUNK_BYTES, memory_budget_of(cfg) // 8))


def _row_texts(cache: Any, rows: np.ndarray) -> list[str] | None:
    """The hover text of cache ``rows``: the input's text; in a unit cache, the row's word,
    then the input it comes from."""
    if not cache.texts:
        return None
    if cache.unit == "sample":
        return [cache.texts[int(i)] for i in rows]
    samples = np.asarray(cache.samples)[rows]
    positions = np.asarray(cache.positions)[rows]
    out = []
    for s, j in zip(samples, positions, strict=True):
        words = cache.texts[int(s)].split(" ")
        word = words[int(j)] if cache.unit == "word" and int(j) < len(words) else ""
        out.append(f"{word} | {cache.texts[int(s)]}" if word else cache.texts[int(s)])
    return out


def _best_weight_head(metrics: dict[str, Any], arrays: dict[str, Any], task: Task) -> str | None:
    """The fusion head with layer weights that scores best (the task's headline) on the test
    split."""
    heads = [h for h in arrays if "layer_weights" in arrays[h] and h != "scalar-mix"]
    return task.best({h: metrics["heads"][h] for h in heads})


def _layer_figure(metrics: dict[str, Any], task: Task) -> list[Figure]:
    """The per-layer linear probes' headline metric with its intervals (the task's
    :class:`~probekit.runs.task.LayerPlot`); empty without per-layer linear probes."""
    from ..viz import LayerAccuracyDisplay

    linear = metrics["heads"].get("linear")
    if not linear or "per_layer" not in linear:
        return []
    rows, key, plot = linear["per_layer"], task.headline, task.layer_plot
    disp = LayerAccuracyDisplay.from_arrays(
        metrics["layer_names"],
        [r[key] for r in rows],
        [r[f"{key}_ci"][0] for r in rows],
        [r[f"{key}_ci"][1] for r in rows],
        chance=plot.chance(metrics),
        name=plot.name,
    )
    if plot.yaxis is not None:
        disp.figure_.update_yaxes(**plot.yaxis)
    if plot.title is not None:
        disp.figure_.update_layout(title=plot.title)
    return [Figure(plot.stem, "Per-layer linear probes", plot.caption, disp.figure_, key=True)]


def _head_layers(run_dir: Path, head: str, layers: list[str]) -> list[str]:
    """The layers a head was fitted on (a run's ``probe_params`` may give it some of them)."""
    config = run_dir / "probes" / head / "config.json"
    if config.is_file():
        return list(json.loads(config.read_text()).get("layer_names") or layers)
    return layers


def build_figures(run_dir: str | Path, max_samples: int | None = None) -> list[Figure]:
    """Every figure of a run, most telling first.

    The attribution files are read lazily, a chunk of rows at a time: class means, ablation
    means and layer-map means are over every test sample, and a per-sample heatmap draws at most
    ``max_samples`` rows (default :data:`probekit.report_arrays.HEATMAP_MAX_SAMPLES`), above it a
    seeded class-stratified subsample in the original order, said in its title and caption.
    """
    from types import SimpleNamespace

    from ..viz import (
        AblationDisplay,
        ClassProfileDisplay,
        LayerAttributionDisplay,
        LayerMapDisplay,
    )
    from .arrays import HEATMAP_MAX_SAMPLES, stratified_subsample, summarize_head

    run = _load_run(Path(run_dir))
    metrics, summary, arrays, cache = run["metrics"], run["summary"], run["arrays"], run["cache"]
    cap = HEATMAP_MAX_SAMPLES if max_samples is None else int(max_samples)
    chunk, seed = _chunk_bytes(run["cfg"]), run["cfg"].seed
    head_layers = {h: _head_layers(Path(run_dir), h, metrics["layer_names"]) for h in arrays}
    task = get_task(metrics)
    figs = _layer_figure(metrics, task)
    figs += [Figure(**f) for f in binary_figures(metrics)]  # binary runs: the AUROC curve
    figs += [Figure(**f) for f in lens_figures(metrics)]
    if task.name == "regression":
        specs = regression_figures(metrics, summary, arrays, head_layers, cap, seed, chunk)
        return figs + [Figure(*spec) for spec in specs]
    layers = metrics["layer_names"]
    label_names = metrics["label_names"]
    figs += [Figure(**f) for f in class_figures(metrics)]
    figs += [Figure(**f) for f in science_figures(Path(run_dir), metrics)]
    if not summary:
        return figs
    test = np.asarray(summary["test"])
    labels = np.asarray(cache.labels)[test]
    shown = stratified_subsample(labels, cap, seed)  # (k,) rows of the per-sample heatmaps
    n, k = len(test), len(shown)
    note = f"{k} of {n} test samples shown" if k < n else ""
    texts = _row_texts(cache, test[shown])
    best = _best_weight_head(metrics, arrays, task)
    viewed = best or task.best({h: metrics["heads"][h] for h in arrays if h in metrics["heads"]})
    if viewed is not None:
        spans = text_view_spans(run["cfg"], cache) if cache.unit == "span" else None
        view = text_view_figure(
            cache,
            test,
            viewed,
            arrays[viewed],
            head_layers[viewed],
            label_names,
            seed,
            chunk,
            spans=spans,
        )
        if view is not None:
            figs.append(Figure(**view))
    order = sorted(arrays, key=lambda h: (h != best, h))
    for head in order:
        a = arrays[head]
        layers = head_layers[head]
        s = summarize_head(a, labels, shown, chunk)
        if "layer_weights" in a and head != "scalar-mix":
            assert s.weights_shown is not None and s.class_means is not None  # weights stored
            title = (
                {"title": f"Layer attribution per sample: {head} layer weight ({note})"}
                if note
                else {}
            )
            disp = LayerAttributionDisplay.from_arrays(
                s.weights_shown,
                layers,
                labels[shown],
                label_names,
                predictions=a["predictions"][shown],
                sample_ids=np.asarray(cache.index)[test[shown]],
                texts=texts,
                value_name=f"{head} layer weight",
                **title,
            )
            agree = summary["heads"][head].get("agreement_median")
            caption = (
                "Each row is a test sample, grouped by class; each column a layer. "
                f"Median Spearman agreement with ablation: {agree:.2f}."
                if agree is not None
                else ""
            )
            if note:
                caption += f" {note}: a class-stratified random sample (seed {seed}); the class means below are over all {n}."
            figs.append(
                Figure(
                    f"weights-{head}",
                    f"{head}: layer weights per test sample",
                    caption.strip(),
                    disp.figure_,
                    key=head == best,
                )
            )
            prof = ClassProfileDisplay.from_class_means(
                s.class_means,
                layers,
                s.classes,
                label_names,
                s.counts,
                value_name=f"{head} layer weight",
            )
            figs.append(
                Figure(
                    f"profile-{head}",
                    f"{head}: class-mean layer profile",
                    "Mean layer weight within each true class.",
                    prof.figure_,
                    key=head == best,
                )
            )
        result = SimpleNamespace(
            accuracy_drop=a["accuracy_drop"],
            layer_names=list(layers),
            base_accuracy=summary["heads"][head]["base_accuracy"],
            mode=summary["mode"],
        )
        abl = AblationDisplay.from_stats(s.ablation_mean, s.ablation_std, s.n, result)
        figs.append(
            Figure(
                f"ablation-{head}",
                f"{head}: layer ablation sensitivity",
                f"Drop in true-class probability and in accuracy when one layer is replaced "
                f"by its {summary['mode']} ({'train mean' if summary['mode'] == 'mean' else summary['mode']}).",
                abl.figure_,
                key=head == best,
            )
        )
        if s.layer_map is not None:
            lm = LayerMapDisplay.from_arrays(s.layer_map, layers)
            figs.append(
                Figure(
                    f"layermap-{head}",
                    f"{head}: layer-to-layer attention",
                    "Row j: how layer j mixes itself and the layers below it (mean over test samples).",
                    lm.figure_,
                )
            )
    return figs


def write_figures(
    run_dir: str | Path, formats: list[str] | tuple[str, ...] = ("png",)
) -> list[Path]:
    """Write every figure as HTML to ``RUN/figures/``, and the key ones as images too.

    Images need a Chrome/Chromium for kaleido; without one a warning says what to install and
    only HTML is written.
    """
    from ..viz import ExportError, export, find_chrome

    out = Path(run_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    images = [f for f in formats if f != "html"]
    if images and find_chrome() is None:
        warnings.warn(
            "no Chrome/Chromium found: figures are written as HTML only "
            "(install one, e.g. `apt-get install chromium`, for PNG/SVG/PDF)",
            stacklevel=2,
        )
        images = []
    for fig in build_figures(run_dir):
        written.append(export(fig.figure, out / f"{fig.name}.html"))
        for fmt in images if fig.key else []:
            try:
                written.append(export(fig.figure, out / f"{fig.name}.{fmt}", scale=2))
            except ExportError as err:
                warnings.warn(str(err), stacklevel=2)
                images = []
    return written


def _prompt_row(m: dict[str, Any]) -> str:
    """The info table's row of a cache's prompt and component (``""`` for plain caches)."""
    parts = []
    prompt = m.get("prompt")
    if prompt:
        if prompt.get("template") is not None:
            parts.append(f"template <code>{html.escape(repr(prompt['template']))}</code>")
        if prompt.get("chat_template"):
            parts.append(f"chat template (sha256 {html.escape(prompt['chat_template'][:12])})")
        parts.append(f"read {html.escape(str(prompt.get('read')))}")
    if m.get("component", "resid") != "resid":
        parts.append(f"component {html.escape(m['component'])}")
    return f"<tr><td>prompt</td><td>{' · '.join(parts)}</td></tr>\n" if parts else ""


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
color:#222;padding:0 1em} h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;margin-top:2em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;display:block;max-width:100%;overflow-x:auto}
td,th{padding:.25em .55em;border-bottom:1px solid #eee;text-align:right} td{white-space:nowrap} th{background:#f6f6f6}
td:first-child,th:first-child{text-align:left} .muted{color:#777;font-size:.9em} .best{font-weight:600}
figure{margin:1.2em 0} figcaption{color:#555;font-size:.9em;margin-top:.2em}
.info td{text-align:left;white-space:normal}
code{background:#f3f3f3;padding:0 .3em;border-radius:3px}
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci: list[float]) -> str:
    return f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def _paired(e: dict[str, Any], ref: str) -> str:
    """``+1.2 [+0.3, +2.1] (0.004)``: difference in pp, its 95% interval, P(difference <= 0)."""
    c = e.get("paired", {}).get(ref)
    if not c:
        return "<td></td>"
    lo, hi = c["ci"]
    return (
        f"<td>{100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
        f"({c['p_le0']:.3f})</td>"
    )


def _heads_table(metrics: dict[str, Any], summary: dict[str, Any] | None) -> str:
    heads = metrics["heads"]
    best = get_task(metrics).best(heads)
    base = metrics.get("baselines", {})
    rows = []
    for head, e in heads.items():
        agree = (summary or {}).get("heads", {}).get(head, {}).get("agreement_median")
        name = head + (f" (layer {e['selected_layer']})" if "selected_layer" in e else "")
        rows.append(
            f"<tr class='{'best' if head == best else ''}'><td>{html.escape(name)}</td>"
            f"<td>{_pct(e['accuracy'])}</td><td>{_ci(e['accuracy_ci'])}</td>"
            f"<td>{_pct(e['balanced_accuracy'])}</td><td>{_ci(e['balanced_accuracy_ci'])}</td>"
            f"{_paired(e, 'vs_last_layer')}"
            # the linear head's selected layer is itself the "best layer" reference
            f"{'<td>(reference)</td>' if head == 'linear' else _paired(e, 'vs_best_layer')}"
            f"{binary_head_cells(metrics, e)}"
            f"<td>{'' if agree is None else f'{agree:.2f}'}</td><td>{e.get('fit_seconds', '')}</td></tr>"
        )
    last = html.escape(str(base.get("last_layer", "last layer")))
    chosen = html.escape(str(base.get("best_layer", "best layer")))
    return (
        "<table><tr><th>head</th><th>accuracy %</th><th>95% CI</th><th>balanced %</th>"
        f"<th>95% CI</th><th>vs last layer ({last}), pp</th>"
        f"<th>vs best layer ({chosen}, chosen on validation), pp</th>"
        f"{binary_head_cells(metrics, None)}"
        "<th>weights vs ablation (Spearman, median)</th><th>fit s</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _layer_table(metrics: dict[str, Any]) -> str:
    linear = metrics["heads"].get("linear")
    if not linear or "per_layer" not in linear:
        return "<p class='muted'>No per-layer linear probes in this run.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(r['layer'])}</td><td>{_pct(r['accuracy'])}</td>"
        f"<td>{_pct(r['balanced_accuracy'])}</td><td>{_ci(r['balanced_accuracy_ci'])}</td>"
        f"{binary_layer_cells(metrics, r)}</tr>"
        for r in linear["per_layer"]
    )
    return (
        "<table><tr><th>layer</th><th>accuracy %</th><th>balanced %</th><th>95% CI</th>"
        f"{binary_layer_cells(metrics, None)}</tr>" + rows + "</table>"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html``: one file, plotly.js inlined once, opens offline."""
    run_dir = Path(run_dir)
    run = _load_run(run_dir)
    cfg, metrics, summary, cache = run["cfg"], run["metrics"], run["summary"], run["cache"]
    m = cache.manifest
    figs = build_figures(run_dir)
    parts = []
    for i, fig in enumerate(figs):
        div = fig.figure.to_html(
            full_html=False, include_plotlyjs=i == 0, config={"displaylogo": False}
        )
        parts.append(
            f"<figure><h3>{html.escape(fig.title)}</h3>{div}"
            f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
        )
    counts = np.bincount(np.asarray(cache.labels), minlength=len(cache.label_names))
    classes = ", ".join(f"{html.escape(n)} ({c})" for n, c in zip(cache.label_names, counts))
    task = get_task(metrics)
    regression = task.name == "regression"
    if regression:
        classes = f"regression of {html.escape(str(metrics.get('target_name')))}"
        heads_table, layer_table = regression_tables(metrics, summary)
    else:
        heads_table, layer_table = _heads_table(metrics, summary), _layer_table(metrics)
    paired_note = (
        ""
        if regression
        else (
            "\n\"vs\" columns: the head's balanced accuracy minus the linear probe's, paired (both "
            "scored on the same resampled test samples): difference, 95% interval, and in brackets "
            "the fraction of resamples where the difference is &le; 0."
        )
    )
    by_input = metrics.get("bootstrap", {}).get("by") == "input"
    boot_unit = (
        "test inputs, each with all its rows (a cluster bootstrap)" if by_input else "test samples"
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = f"{len(cache)} samples"
    split_how = task.split_name
    if cache.unit != "sample":  # rows are words (tokens, spans) of the inputs
        rows = f"{len(cache)} {cache.unit}s from {m.get('n_inputs', '?')} inputs"
        split_how = f"by input, {split_how}"
    body = f"""<!doctype html><html><head><meta charset="utf-8">
<title>probekit report: {html.escape(cfg.name)}</title><style>{_CSS}</style></head><body>
<h1>probekit report: {html.escape(cfg.name)}</h1>
<p class="muted">{when} · probekit {html.escape(str(m.get("probekit_version")))}</p>
<h2>Model and data</h2>
<table class="info">
<tr><td>model</td><td>{html.escape(str(m["model"].get("id")))} ({html.escape(str(m["model"].get("class")))})</td></tr>
<tr><td>dataset</td><td>{html.escape(m["dataset"]["name"])}: {rows}; {classes}</td></tr>
<tr><td>layers</td><td>{len(cache.layer_names)}: {html.escape(", ".join(f"{n} ({d})" for n, d in zip(cache.layer_names, cache.dims)))}</td></tr>
<tr><td>poolings</td><td>{html.escape(", ".join(cache.poolings))} · dtype {m["dtype"]} · precision {m.get("precision")}</td></tr>
{_prompt_row(m)}<tr><td>split</td><td>{metrics["n_train"]} train / {metrics["n_test"]} test ({split_how}, seed {cfg.seed})</td></tr>
<tr><td>cache</td><td><code>{html.escape(str(cfg.cache_dir))}</code> · fingerprint {m["fingerprint"][:16]}</td></tr>
</table>
<h2>Probe heads on the test split</h2>
{heads_table}
<p class="muted">Intervals: 95% percentile bootstrap over {boot_unit} ({cfg.bootstrap} resamples).{paired_note}</p>
<h2>Per-layer linear probes</h2>
{layer_table}
{science_tables(metrics)}
{lens_tables(metrics)}
<h2>Figures</h2>
{"".join(parts)}
</body></html>"""
    path = run_dir / "report.html"
    path.write_text(body, encoding="utf-8")
    return path
