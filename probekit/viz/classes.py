"""Per-class views of a classifier: each class's recall per layer, and a confusion matrix.

Display objects in the scikit-learn style (see :mod:`probekit.viz.heatmaps`): ``from_*``
builds, :meth:`plot` stores the plotly figure in ``figure_``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .heatmaps import SEQUENTIAL, TEMPLATE, _FigureBundle

__all__ = ["ClassRecallDisplay", "ConfusionDisplay"]


class ClassRecallDisplay(_FigureBundle):
    """Recall of every class per layer: a classes x layers heatmap on ``[0, 1]``.

    Args:
        recall: ``(C, L)`` recall of class ``c`` by layer ``l``'s probe (NaN: not measured).
        layer_names: the ``L`` layers. class_names: the ``C`` classes.
        support: ``(C,)`` rows of each class, or None.

    Attributes:
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(
        self,
        recall: np.ndarray,
        layer_names: Sequence[str],
        class_names: Sequence[str],
        support: Sequence[int] | None = None,
    ) -> None:
        self.recall = np.asarray(recall, dtype=np.float64)
        self.layer_names = [str(n) for n in layer_names]
        self.class_names = [str(c) for c in class_names]
        if self.recall.shape != (len(self.class_names), len(self.layer_names)):
            raise ValueError(
                f"recall must be (C, L) = {(len(self.class_names), len(self.layer_names))}, "
                f"got {self.recall.shape}"
            )
        self.support = None if support is None else [int(k) for k in support]

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, Mapping[str, float]],
        support: Mapping[str, int] | None = None,
        **plot_kwargs: Any,
    ) -> ClassRecallDisplay:
        """Plot ``{layer: {class: recall}}`` (``metrics.json``'s ``per_class``), classes in the
        order of the first layer, with ``support`` ``{class: n}``.

        Returns:
            The display, plotted.
        """
        layers = list(table)
        classes = list(table[layers[0]]) if layers else []
        recall = np.array(
            [[table[layer].get(c, np.nan) for layer in layers] for c in classes], dtype=np.float64
        ).reshape(len(classes), len(layers))
        counts = None if support is None else [support[c] for c in classes]
        return cls(recall, layers, classes, counts).plot(**plot_kwargs)

    def plot(
        self,
        *,
        title: str | None = None,
        show_values: bool | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> ClassRecallDisplay:
        """Draw the heatmap (values written in the cells up to 400 cells by default).

        Returns:
            self, with ``figure_`` set.
        """
        n_classes, n_layers = self.recall.shape
        if show_values is None:
            show_values = n_classes * n_layers <= 400
        ticks = (
            self.class_names
            if self.support is None
            else [f"{c} (n={k})" for c, k in zip(self.class_names, self.support, strict=True)]
        )
        heat = go.Heatmap(
            z=self.recall,
            x=self.layer_names,
            y=ticks,
            zmin=0.0,
            zmax=1.0,
            colorscale=SEQUENTIAL,
            texttemplate="%{z:.2f}" if show_values else None,
            hovertemplate="class %{y}<br>layer %{x}<br>recall %{z:.3f}<extra></extra>",
            colorbar={"title": {"text": "recall", "side": "right"}},
        )
        fig = go.Figure(heat)
        fig.update_xaxes(title="layer", type="category", showgrid=False)
        fig.update_yaxes(title="true class", type="category", autorange="reversed", showgrid=False)
        fig.update_layout(
            template=TEMPLATE,
            title=title or "Per-layer linear probes: recall of each class",
            width=width,
            height=height or int(np.clip(160 + 32 * n_classes, 300, 900)),
        )
        self.figure_ = fig
        return self


class ConfusionDisplay(_FigureBundle):
    """A confusion matrix normalised per true class (each row sums to 1; a row without samples
    is 0, as scikit-learn's ``confusion_matrix(normalize="true")``).

    Args:
        counts: ``(C, C)`` counts, rows the true classes, columns the predicted ones.
        class_names: the ``C`` classes.

    Attributes:
        normalized: ``(C, C)`` the row-normalised matrix.
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(self, counts: np.ndarray, class_names: Sequence[str]) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.class_names = [str(c) for c in class_names]
        if self.counts.shape != (len(self.class_names),) * 2:
            raise ValueError(
                f"counts must be (C, C) = {(len(self.class_names),) * 2}, got {self.counts.shape}"
            )
        rows = self.counts.sum(1, keepdims=True)
        self.normalized = np.divide(
            self.counts, rows, out=np.zeros(self.counts.shape), where=rows > 0
        )

    @classmethod
    def from_counts(
        cls,
        counts: Any,
        class_names: Sequence[str],
        *,
        drop_empty: bool = True,
        **plot_kwargs: Any,
    ) -> ConfusionDisplay:
        """Plot ``(C, C)`` counts; ``drop_empty``: leave out the classes neither true nor
        predicted in any row (scikit-learn's default ``labels``).

        Returns:
            The display, plotted.
        """
        arr = np.asarray(counts, dtype=np.int64)
        names = list(class_names)
        if drop_empty:
            keep = np.flatnonzero((arr.sum(0) + arr.sum(1)) > 0)
            arr = arr[np.ix_(keep, keep)]
            names = [names[i] for i in keep]
        return cls(arr, names).plot(**plot_kwargs)

    def plot(
        self,
        *,
        title: str | None = None,
        show_values: bool | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> ConfusionDisplay:
        """Draw the matrix (values in the cells up to 30 classes by default).

        Returns:
            self, with ``figure_`` set.
        """
        n = len(self.class_names)
        if show_values is None:
            show_values = n <= 30
        support = self.counts.sum(1)
        ticks = [f"{c} (n={k})" for c, k in zip(self.class_names, support, strict=True)]
        heat = go.Heatmap(
            z=self.normalized,
            x=self.class_names,
            y=ticks,
            customdata=self.counts,
            zmin=0.0,
            zmax=1.0,
            colorscale=SEQUENTIAL,
            texttemplate="%{z:.2f}" if show_values else None,
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.3f} of the class "
            "(%{customdata} rows)<extra></extra>",
            colorbar={"title": {"text": "fraction of true class", "side": "right"}},
        )
        fig = go.Figure(heat)
        fig.update_xaxes(title="predicted class", type="category", showgrid=False)
        fig.update_yaxes(title="true class", type="category", autorange="reversed", showgrid=False)
        side = int(np.clip(220 + 36 * n, 380, 900))
        fig.update_layout(
            template=TEMPLATE,
            title=title or "Confusion matrix (normalised per true class)",
            width=width or side + 140,
            height=height or side,
        )
        self.figure_ = fig
        return self
