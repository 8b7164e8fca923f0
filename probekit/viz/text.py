"""Sentences drawn as their words, each word coloured by the layer its prediction rests on.

For word-level (token) probing: one row per sentence (long ones wrap), a word a cell as wide as
the word, coloured by a layer (one legend entry per layer, early to late along a sequential
scale); hovering shows the word, its true and predicted class and the layer. Unscored words
(no label) are grey; a mispredicted word has a red outline, drawn by its own legend entry
(``"wrong prediction"``) so that no layer's swatch carries it. The same display draws sub-word
tokens (token rows) or one line per span, its words coloured and the rest grey (span rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .heatmaps import TEMPLATE, _FigureBundle

__all__ = ["WordLayerDisplay"]

_NONE = "#d9d9d9"
_WRONG = "#d62728"


def _layer_colours(n: int) -> list[str]:
    from plotly.colors import sample_colorscale

    return list(sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)]))


def _ink(colour: str) -> str:
    """Black or white text, whichever reads on ``colour`` (``rgb(r, g, b)`` or ``#rrggbb``)."""
    if colour.startswith("#"):
        r, g, b = (float(int(colour[i : i + 2], 16)) for i in (1, 3, 5))
    else:
        r, g, b = (float(v) for v in colour[colour.index("(") + 1 : -1].split(",")[:3])
    return "#111" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


class WordLayerDisplay(_FigureBundle):
    """Words of sentences, each coloured by a layer.

    Args:
        words: ``S`` lists of words.
        layers: ``S`` lists of layer indices into ``layer_names``, one per word (``-1``: the word
            has no prediction, drawn grey).
        layer_names: the ``L`` layers.
        true, predicted: ``S`` lists of class names per word (``None`` where none), or None.
        scores: ``S`` lists of the attribution at the chosen layer per word, or None.
        sentence_names: ``S`` row labels (default ``"sentence i"``).
        value_name: what the scores are (hover text).
        positions: ``S`` lists of the position recorded for each word (``customdata[1]``;
            default its index in the sentence), e.g. a token's index in the tokenizer's encoding.
        none_name: the legend entry of the grey words (default ``"no label"``).

    Attributes:
        figure_: the plotly figure after :meth:`plot`: one bar trace per layer that colours a
            word (named after it), one for ``none_name`` and, when a prediction is wrong, a
            ``"wrong prediction"`` trace of red outlines over those words (no fill, no text);
            each bar's ``customdata`` is ``[sentence, position, word, true, predicted, layer,
            score]``.
    """

    def __init__(
        self,
        words: Sequence[Sequence[str]],
        layers: Sequence[Sequence[int]],
        layer_names: Sequence[str],
        true: Sequence[Sequence[str | None]] | None = None,
        predicted: Sequence[Sequence[str | None]] | None = None,
        scores: Sequence[Sequence[float | None]] | None = None,
        sentence_names: Sequence[str] | None = None,
        value_name: str = "attribution",
        positions: Sequence[Sequence[int]] | None = None,
        none_name: str = "no label",
    ) -> None:
        self.words = [[str(w) for w in ws] for ws in words]
        self.layers = [[int(v) for v in ls] for ls in layers]
        self.layer_names = [str(n) for n in layer_names]
        shapes = [len(ws) for ws in self.words]
        for name, rows in (("layers", self.layers), ("true", true), ("predicted", predicted)):
            if rows is not None and [len(r) for r in rows] != shapes:
                raise ValueError(f"{name} must give one entry per word of every sentence")
        if any(not -1 <= v < len(self.layer_names) for ls in self.layers for v in ls):
            raise ValueError(f"layer indices must be -1 or in [0, {len(self.layer_names)})")
        self.true = None if true is None else [list(r) for r in true]
        self.predicted = None if predicted is None else [list(r) for r in predicted]
        self.scores = None if scores is None else [list(r) for r in scores]
        self.sentence_names = (
            [str(s) for s in sentence_names]
            if sentence_names is not None
            else [f"sentence {i}" for i in range(len(self.words))]
        )
        self.value_name = value_name
        if positions is not None and [len(r) for r in positions] != shapes:
            raise ValueError("positions must give one entry per word of every sentence")
        self.positions = (
            [list(range(n)) for n in shapes]
            if positions is None
            else [[int(v) for v in r] for r in positions]
        )
        self.none_name = none_name

    def plot(
        self,
        *,
        line_chars: int = 90,
        title: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> WordLayerDisplay:
        """Draw the sentences, wrapping a sentence after ``line_chars`` characters.

        Returns:
            self, with ``figure_`` set.
        """
        colours = _layer_colours(len(self.layer_names))
        lines: list[str] = []
        cells: dict[int, list[tuple[str, float, float, str, list[Any], bool]]] = {}
        for s, ws in enumerate(self.words):
            cursor, part = 0.0, 0
            line = self.sentence_names[s]
            lines.append(line)
            for j, w in enumerate(ws):
                size = max(len(w), 1) + 0.6
                if cursor and cursor + size > line_chars:
                    part += 1
                    line = f"{self.sentence_names[s]} ({part + 1})"
                    lines.append(line)
                    cursor = 0.0
                layer = self.layers[s][j]
                true = None if self.true is None else self.true[s][j]
                pred = None if self.predicted is None else self.predicted[s][j]
                score = None if self.scores is None else self.scores[s][j]
                name = self.layer_names[layer] if layer >= 0 else None
                data = [s, self.positions[s][j], w, true, pred, name, score]
                wrong = true is not None and pred is not None and true != pred
                cells.setdefault(layer, []).append((line, cursor, size - 0.6, w, data, wrong))
                cursor += size
        fig = go.Figure()
        hover = (
            "<b>%{customdata[2]}</b><br>true %{customdata[3]}"
            "<br>predicted %{customdata[4]}<br>layer %{customdata[5]}"
            f"<br>{self.value_name} %{{customdata[6]:.3f}}<extra></extra>"
        )
        for layer in sorted(cells, key=lambda v: (v < 0, v)):
            rows = cells[layer]
            colour = colours[layer] if layer >= 0 else _NONE
            fig.add_trace(
                go.Bar(
                    orientation="h",
                    name=self.layer_names[layer] if layer >= 0 else self.none_name,
                    y=[r[0] for r in rows],
                    base=[r[1] for r in rows],
                    x=[r[2] for r in rows],
                    text=[r[3] for r in rows],
                    customdata=[r[4] for r in rows],
                    textposition="inside",
                    insidetextanchor="middle",
                    textangle=0,
                    textfont={"color": _ink(colour), "family": "monospace", "size": 12},
                    marker={"color": colour, "line": {"color": colour, "width": 0.5}},
                    hovertemplate=hover,
                )
            )
        outlined = [r for rows in cells.values() for r in rows if r[5]]
        if outlined:  # outlines over the mispredicted words, their own legend entry
            fig.add_trace(
                go.Bar(
                    orientation="h",
                    name="wrong prediction",
                    y=[r[0] for r in outlined],
                    base=[r[1] for r in outlined],
                    x=[r[2] for r in outlined],
                    customdata=[r[4] for r in outlined],
                    marker={"color": "rgba(0,0,0,0)", "line": {"color": _WRONG, "width": 2.5}},
                    hovertemplate=hover,
                )
            )
        span = max([c[1] + c[2] for rows in cells.values() for c in rows] + [20.0])
        fig.update_xaxes(visible=False, range=[-0.5, span + 0.5])
        fig.update_yaxes(
            type="category",
            categoryorder="array",
            categoryarray=lines,
            autorange="reversed",
            showgrid=False,
        )
        fig.update_layout(
            template=TEMPLATE,
            barmode="overlay",
            bargap=0.18,
            uniformtext={"minsize": 9, "mode": "show"},
            title=title or "Which layer each word's prediction rests on",
            legend={"title": {"text": "layer"}, "traceorder": "normal"},
            width=width or int(np.clip(8.2 * span + 320, 600, 1100)),
            height=height or int(np.clip(130 + 28 * len(lines), 300, 2400)),
            margin={"l": 110},
        )
        self.figure_ = fig
        return self
