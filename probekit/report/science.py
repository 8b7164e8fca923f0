"""The report's figures and tables for control tasks, MDL, layer similarity and the random-init
baseline, built from what :func:`probekit.pipeline.fit_stage` saved (``metrics.json`` and
``RUN/similarity/``). :mod:`probekit.report` places them."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

__all__ = ["science_figures", "science_tables"]


def science_figures(run_dir: Path, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures, most telling first, as dicts of :class:`probekit.report.Figure` fields."""
    from ..runs.compare import read_similarity
    from ..viz.science import LayerCurvesDisplay, SimilarityDisplay

    figs: list[dict[str, Any]] = []
    layers = metrics["layer_names"]
    chance = 1.0 / len(metrics["label_names"])
    rows = metrics["heads"].get("linear", {}).get("per_layer", [])
    if rows and "selectivity" in rows[0]:
        disp = LayerCurvesDisplay.from_arrays(
            layers,
            {
                "task accuracy": [r["accuracy"] for r in rows],
                "control accuracy": [r["control_accuracy"] for r in rows],
                "selectivity": [r["selectivity"] for r in rows],
            },
            {
                "selectivity": (
                    [r["selectivity_ci"][0] for r in rows],
                    [r["selectivity_ci"][1] for r in rows],
                )
            },
            reference=0.0,
            reference_text="selectivity 0",
            title="Selectivity: task accuracy minus control-task accuracy",
        )
        best = max(rows, key=lambda r: r["selectivity"])
        figs.append(
            {
                "name": "selectivity",
                "title": "Control task and selectivity per layer",
                "caption": "Test accuracy of the per-layer linear probes on the task and on a "
                "control task (each input type gets a fixed random label; Hewitt & Liang, "
                "2019), and their difference with a paired 95% bootstrap interval. Highest "
                f"selectivity: {best['layer']} ({best['selectivity']:.3f}).",
                "figure": disp.figure_,
                "key": True,
            }
        )
    random = metrics.get("random_init")
    rrows = (random or {}).get("heads", {}).get("linear", {}).get("per_layer", [])
    if rows and rrows:
        assert random is not None  # it holds rrows
        curves = {
            "trained": [r["balanced_accuracy"] for r in rows],
            "random init": [r["balanced_accuracy"] for r in rrows],
        }
        bands = {
            "trained": (
                [r["balanced_accuracy_ci"][0] for r in rows],
                [r["balanced_accuracy_ci"][1] for r in rows],
            ),
            "random init": (
                [r["balanced_accuracy_ci"][0] for r in rrows],
                [r["balanced_accuracy_ci"][1] for r in rrows],
            ),
        }
        disp = LayerCurvesDisplay.from_arrays(
            layers,
            curves,
            bands,
            y_title="balanced accuracy",
            reference=chance,
            reference_text=f"chance {chance:.2f}",
            title="Trained model vs the same architecture at random init",
        )
        gap = max(c for c in curves["trained"]) - max(c for c in curves["random init"])
        figs.append(
            {
                "name": "random-baseline",
                "title": "Random-weights baseline",
                "caption": "Balanced test accuracy of the per-layer linear probes on the "
                f"trained model and on its architecture at a random init (seed "
                f"{random['seed']}), same split, 95% bootstrap bands. Best-layer difference "
                f"(trained - random): {gap:+.3f}.",
                "figure": disp.figure_,
                "key": True,
            }
        )
    mdl = metrics.get("mdl")
    if mdl:
        mrows = mdl["layers"]
        disp = LayerCurvesDisplay.from_arrays(
            [r["layer"] for r in mrows],
            {"compression": [r["compression"] for r in mrows]},
            y_title="compression (uniform / online code)",
            percent=False,
            reference=1.0,
            reference_text="no compression",
            title="MDL: online-code compression per layer",
        )
        best = max(mrows, key=lambda r: r["compression"])
        figs.append(
            {
                "name": "mdl",
                "title": "MDL probing (online code)",
                "caption": "Uniform code length divided by the online code length of the "
                "train labels given each layer (Voita & Titov, 2020); 1 means the probe finds "
                f"nothing to exploit. Highest: {best['layer']} ({best['compression']:.2f}, "
                f"{best['online_bits']:.0f} of {best['uniform_bits']:.0f} bits).",
                "figure": disp.figure_,
                "key": True,
            }
        )
    for key, name, title, caption in (
        (
            "similarity",
            "cka",
            "Layer similarity (linear CKA)",
            "Linear CKA (Kornblith et al., 2019) between every pair of layers, over all samples.",
        ),
        (
            "random_init",
            "cka-trained-vs-random",
            "Trained vs random-init layers (linear CKA)",
            "Linear CKA between the trained model's layers (rows) and the random-init model's "
            "(columns) on the same samples.",
        ),
    ):
        entry = metrics.get(key)
        if key == "random_init" and entry:
            entry = entry.get("similarity_to_trained")
        path = run_dir / entry["file"] if entry and "file" in entry else None
        if path is None or not path.is_file():
            continue
        matrix, names_a, names_b = read_similarity(path)
        labels = ("trained layer", "random-init layer") if key == "random_init" else ("layer", None)
        sim = SimilarityDisplay.from_arrays(
            matrix, names_a, names_b, "cka", label_a=labels[0], label_b=labels[1], title=title
        )
        figs.append(
            {
                "name": name,
                "title": title,
                "caption": caption,
                "figure": sim.figure_,
                "key": key == "similarity",
            }
        )
    return figs


def science_tables(metrics: dict[str, Any]) -> str:
    """HTML sections for the control task and MDL tables ("" when the run has neither)."""
    parts = []
    rows = metrics["heads"].get("linear", {}).get("per_layer", [])
    if rows and "selectivity" in rows[0]:
        body = "".join(
            f"<tr><td>{html.escape(r['layer'])}</td><td>{100 * r['accuracy']:.1f}</td>"
            f"<td>{100 * r['control_accuracy']:.1f}</td><td>{100 * r['selectivity']:.1f}</td>"
            f"<td>[{100 * r['selectivity_ci'][0]:.1f}, {100 * r['selectivity_ci'][1]:.1f}]</td></tr>"
            for r in rows
        )
        parts.append(
            "<h2>Control task (Hewitt &amp; Liang, 2019)</h2><table><tr><th>layer</th>"
            "<th>task accuracy %</th><th>control accuracy %</th><th>selectivity %</th>"
            "<th>95% CI (paired)</th></tr>" + body + "</table>"
        )
    mdl = metrics.get("mdl")
    if mdl:
        body = "".join(
            f"<tr><td>{html.escape(r['layer'])}</td><td>{r['online_bits']:.1f}</td>"
            f"<td>{r['uniform_bits']:.1f}</td><td>{r['compression']:.3f}</td></tr>"
            for r in mdl["layers"]
        )
        parts.append(
            "<h2>MDL, online code (Voita &amp; Titov, 2020)</h2>"
            f"<p class='muted'>{mdl['n_samples']} train samples, {mdl['n_classes']} "
            f"classes, linear probes, seed {mdl['seed']}.</p><table><tr><th>layer</th>"
            "<th>online bits</th><th>uniform bits</th><th>compression</th></tr>" + body + "</table>"
        )
    return "".join(parts)
