"""The report's figures and tables of the lens stage (:mod:`probekit.runs.lens`): the logit
lens's per-layer accuracy over the label words beside the linear probe's ("where the model knows
vs where it says"), and the tuned lens's per-layer KL and top-1 agreement beside the logit
lens's. :mod:`probekit.report.html` places them."""

from __future__ import annotations

import html
from typing import Any

__all__ = ["lens_figures", "lens_tables"]


def _bands(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    return [r[f"{key}_ci"][0] for r in rows], [r[f"{key}_ci"][1] for r in rows]


def _says_figure(metrics: dict[str, Any], key: str = "balanced_accuracy") -> dict[str, Any] | None:
    """The logit lens's per-layer ``key`` (``balanced_accuracy``, or ``auroc`` of a binary run:
    the label words' logit margin as the score) beside the linear probe's."""
    from ..viz.science import LayerCurvesDisplay

    lens = metrics.get("logit_lens")
    if not lens or key not in lens["per_layer"][0]:
        return None
    rows = lens["per_layer"]
    layers = [r["layer"] for r in rows]
    curves = {"logit lens (says)": [r[key] for r in rows]}
    bands = {"logit lens (says)": _bands(rows, key)}
    probe = metrics["heads"].get("linear", {}).get("per_layer")
    if probe and [r["layer"] for r in probe] == layers:
        curves = {"linear probe (knows)": [r[key] for r in probe], **curves}
        bands["linear probe (knows)"] = _bands(probe, key)
    chance = 1.0 / len(metrics["label_names"]) if key != "auroc" else 0.5
    disp = LayerCurvesDisplay.from_arrays(
        layers,
        curves,
        bands,
        y_title="AUROC" if key == "auroc" else "balanced accuracy",
        reference=chance,
        reference_text=f"chance {chance:.2f}",
        title="Where the model knows vs where it says" + (": AUROC" if key == "auroc" else ""),
    )
    words = ", ".join(repr(w) for w in lens["label_words"])
    best = max(rows, key=lambda r: r[key])
    if key == "auroc":
        return {
            "name": "logit-lens-auroc",
            "title": "Logit lens vs linear probe: AUROC",
            "caption": "Test AUROC per layer of the logit lens, scoring each row by the logit "
            f"of {lens['label_words'][1]!r} minus that of {lens['label_words'][0]!r}, and of "
            "the linear probe, 95% bootstrap bands; 0.5 = chance. The margin can rank the "
            "classes at layers where the lens's argmax still names one word for every row. "
            f"Lens best: {best['layer']} ({best[key]:.3f}).",
            "figure": disp.figure_,
            "key": False,
        }
    return {
        "name": "logit-lens",
        "title": "Logit lens vs linear probe",
        "caption": "Balanced test accuracy per layer of the logit lens (the class whose label "
        f"word, {words}, gets the highest logit when the layer's {lens['pooling']} state is "
        "read through the final norm and the unembedding; nostalgebraist, 2020) and of the "
        "linear probe, 95% bootstrap bands. A probe above the lens: the layer holds the label "
        f"but does not say it yet. Lens best: {best['layer']} ({best[key]:.3f}).",
        "figure": disp.figure_,
        "key": True,
    }


def _tuned_figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    from ..viz.science import LayerCurvesDisplay

    entry = metrics.get("tuned_lens")
    if not entry:
        return []
    layers, info = entry["tuned"]["layers"], entry["info"]
    n = entry["tuned"]["tokens"]
    figs = []
    kl = LayerCurvesDisplay.from_arrays(
        layers,
        {"tuned lens": entry["tuned"]["kl"], "logit lens": entry["logit"]["kl"]},
        y_title="KL(final || lens), nats",
        percent=False,
        reference=0.0,
        reference_text="the final layer",
        title="Tuned vs logit lens: KL to the final layer",
    )
    figs.append(
        {
            "name": "tuned-lens-kl",
            "title": "Tuned lens: KL to the final layer",
            "caption": "Mean KL divergence (nats, whole vocabulary) from the model's final "
            "next-token distribution to each layer's, read by the tuned lens (an affine "
            "translator per layer; Belrose et al., 2023) and by the logit lens, over "
            f"{n} held-out tokens of the test split's texts. Trained on "
            f"{info['train_tokens']} tokens, {info['steps']} steps in "
            f"{info['train_seconds']:.0f} s.",
            "figure": kl.figure_,
            "key": True,
        }
    )
    top = LayerCurvesDisplay.from_arrays(
        layers,
        {"tuned lens": entry["tuned"]["top1"], "logit lens": entry["logit"]["top1"]},
        y_title="top-1 agreement with the final layer",
        reference=1.0,
        reference_text="the final layer",
        title="Tuned vs logit lens: top-1 agreement with the final layer",
    )
    figs.append(
        {
            "name": "tuned-lens-top1",
            "title": "Tuned lens: top-1 agreement",
            "caption": "Fraction of held-out tokens whose most likely next token under each "
            "layer's lens is the model's own.",
            "figure": top.figure_,
            "key": False,
        }
    )
    return figs


def lens_figures(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The lens figures of a run (none without a lens stage), as dicts of
    :class:`probekit.report.Figure` fields."""
    says = [_says_figure(metrics), _says_figure(metrics, "auroc")]
    return [f for f in says if f is not None] + _tuned_figures(metrics)


def lens_tables(metrics: dict[str, Any]) -> str:
    """HTML sections for the logit and tuned lens tables ("" when the run has neither)."""
    parts = []
    lens = metrics.get("logit_lens")
    if lens:
        probe = {r["layer"]: r for r in metrics["heads"].get("linear", {}).get("per_layer", [])}
        binary = "auroc" in lens["per_layer"][0]
        body = "".join(
            f"<tr><td>{html.escape(r['layer'])}</td><td>{100 * r['accuracy']:.1f}</td>"
            f"<td>{100 * r['balanced_accuracy']:.1f}</td>"
            f"<td>[{100 * r['balanced_accuracy_ci'][0]:.1f}, "
            f"{100 * r['balanced_accuracy_ci'][1]:.1f}]</td>"
            + (
                f"<td>{r['auroc']:.3f} [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]</td>"
                if binary
                else ""
            )
            + f"<td>{_pct(probe.get(r['layer'], {}).get('balanced_accuracy'))}</td></tr>"
            for r in lens["per_layer"]
        )
        words = html.escape(", ".join(repr(w) for w in lens["label_words"]))
        parts.append(
            "<h2>Logit lens (nostalgebraist, 2020)</h2>"
            f"<p class='muted'>Label words {words} (token ids {lens['token_ids']}), read at the "
            f"{html.escape(lens['pooling'])} state of each test row.</p><table><tr><th>layer</th>"
            "<th>lens accuracy %</th><th>lens balanced %</th><th>95% CI</th>"
            + ("<th>lens AUROC [95% CI]</th>" if binary else "")
            + "<th>linear probe balanced %</th></tr>"
            + body
            + "</table>"
        )
    entry = metrics.get("tuned_lens")
    if entry:
        t, g = entry["tuned"], entry["logit"]
        body = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{t['kl'][i]:.3f}</td><td>{g['kl'][i]:.3f}</td>"
            f"<td>{100 * t['top1'][i]:.1f}</td><td>{100 * g['top1'][i]:.1f}</td></tr>"
            for i, name in enumerate(t["layers"])
        )
        parts.append(
            "<h2>Tuned lens (Belrose et al., 2023)</h2>"
            f"<p class='muted'>{t['tokens']} held-out tokens; KL(final || lens) in nats over the "
            "whole vocabulary.</p><table><tr><th>layer</th><th>tuned KL</th><th>logit KL</th>"
            "<th>tuned top-1 %</th><th>logit top-1 %</th></tr>" + body + "</table>"
        )
    return "".join(parts)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"
