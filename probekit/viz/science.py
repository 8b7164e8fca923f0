"""Figures of the probing-science measures: layer similarity maps and per-layer curves.

* :class:`SimilarityDisplay`: an ``(L_a, L_b)`` CKA or RSA matrix as a heatmap.
* :class:`LayerCurvesDisplay`: several named per-layer curves in one figure (task vs control
  accuracy and selectivity, MDL compression, trained vs random-init accuracy).

Both follow the other displays: ``from_arrays`` builds and plots, ``figure_`` holds the plotly
figure, and in a notebook the display shows itself (interactive plotly plus a static PNG).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .heatmaps import TEMPLATE, _FigureBundle

__all__ = ["LayerCurvesDisplay", "SimilarityDisplay"]

_COLOURS = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#4a5568")
_LABELS = {"cka": "linear CKA", "cka-debiased": "debiased linear CKA", "rsa": "RSA (Spearman)"}


class SimilarityDisplay(_FigureBundle):
    """Similarity between the layers of one model, or of two.

    Args:
        matrix: ``(L_a, L_b)`` similarity values.
        names_a: the ``L_a`` row layer names.
        names_b: the ``L_b`` column layer names (default: ``names_a``).
        method: ``"cka"``, ``"cka-debiased"`` or ``"rsa"`` (for the colour bar).
        label_a, label_b: axis titles (e.g. the two models).

    Attributes:
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(
        self,
        matrix: Any,
        names_a: Sequence[str],
        names_b: Sequence[str] | None = None,
        method: str = "cka",
        label_a: str = "layer",
        label_b: str | None = None,
    ) -> None:
        self.names_a = [str(n) for n in names_a]
        self.names_b = [str(n) for n in (names_a if names_b is None else names_b)]
        self.matrix = np.asarray(matrix, dtype=np.float64)
        if self.matrix.shape != (len(self.names_a), len(self.names_b)):
            raise ValueError(
                f"matrix must be ({len(self.names_a)}, {len(self.names_b)}), "
                f"got {self.matrix.shape}"
            )
        self.method = method
        self.label_a = label_a
        self.label_b = label_b or label_a

    @classmethod
    def from_arrays(
        cls,
        matrix: Any,
        names_a: Sequence[str],
        names_b: Sequence[str] | None = None,
        method: str = "cka",
        *,
        label_a: str = "layer",
        label_b: str | None = None,
        **plot_kwargs: Any,
    ) -> SimilarityDisplay:
        """Build (see the class docstring) and plot."""
        return cls(matrix, names_a, names_b, method, label_a, label_b).plot(**plot_kwargs)

    def plot(
        self,
        *,
        title: str | None = None,
        show_values: bool | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> SimilarityDisplay:
        """Draw the heatmap (row ``i``, column ``j``: similarity of layer ``a_i`` and ``b_j``).

        Args:
            title: figure title.
            show_values: write values in cells (default: when both sides have <= 16 layers).
            width, height: pixels (default: grows with the number of layers).

        Returns:
            self, with ``figure_`` set.
        """
        la, lb = len(self.names_a), len(self.names_b)
        if show_values is None:
            show_values = max(la, lb) <= 16
        label = _LABELS.get(self.method, self.method)
        lo = -1.0 if self.method == "rsa" and np.nanmin(self.matrix) < 0 else 0.0
        heat = go.Heatmap(
            z=self.matrix,
            x=self.names_b,
            y=self.names_a,
            zmin=lo,
            zmax=1.0,
            colorscale="Viridis",
            texttemplate="%{z:.2f}" if show_values else None,
            hovertemplate=f"{self.label_a} %{{y}}<br>{self.label_b} %{{x}}<br>{label} "
            "%{z:.3f}<extra></extra>",
            colorbar={"title": {"text": label, "side": "right"}},
        )
        fig = go.Figure(heat)
        undefined = np.isnan(self.matrix)
        if undefined.any():  # a layer constant over the samples: 0 / 0, drawn grey, not blank
            fig.add_trace(
                go.Heatmap(
                    z=np.where(undefined, 0.0, np.nan),
                    x=self.names_b,
                    y=self.names_a,
                    colorscale=[[0, "#d9d9d9"], [1, "#d9d9d9"]],
                    showscale=False,
                    text=np.where(undefined, "n/a", ""),
                    texttemplate="%{text}" if show_values else None,
                    hovertemplate=f"{self.label_a} %{{y}}<br>{self.label_b} %{{x}}<br>{label} "
                    "undefined: a layer constant over the samples<extra></extra>",
                )
            )
            const = [n for n, row in zip(self.names_a, undefined, strict=True) if row.all()]
            const += [
                n
                for n, col in zip(self.names_b, undefined.T, strict=True)
                if col.all() and n not in const
            ]
            note = (
                "n/a: undefined, " + ", ".join(const) + " constant over every sample"
                if const
                else "n/a: undefined (a constant layer)"
            )
            fig.add_annotation(
                text=note,
                xref="paper",
                yref="paper",
                x=0,
                y=-0.14,
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font={"size": 11},
            )
        fig.update_xaxes(title=self.label_b, type="category", showgrid=False)
        fig.update_yaxes(title=self.label_a, type="category", autorange="reversed", showgrid=False)
        side = int(np.clip(220 + 32 * max(la, lb), 400, 900))
        fig.update_layout(
            template=TEMPLATE,
            title=title or f"Layer similarity ({label})",
            width=width or side + 100,
            height=height or side + 30 * undefined.any(),
        )
        self.figure_ = fig
        return self


class LayerCurvesDisplay(_FigureBundle):
    """Named per-layer curves over the same layers, in one figure.

    Args:
        layer_names: the ``L`` layer names (x axis).
        curves: ``{name: (L,) values}``, drawn in order.
        bands: optional ``{name: ((L,) lower, (L,) upper)}`` intervals for some curves.
        y_title: the y axis title.
        percent: format the y axis as a percentage.
        reference: a horizontal dashed line (e.g. chance, or compression 1), or None.
        reference_text: its label.

    Attributes:
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        curves: Mapping[str, Any],
        bands: Mapping[str, tuple[Any, Any]] | None = None,
        y_title: str = "accuracy",
        percent: bool = True,
        reference: float | None = None,
        reference_text: str = "",
    ) -> None:
        self.layer_names = [str(n) for n in layer_names]
        self.curves = {str(k): np.asarray(v, dtype=np.float64) for k, v in curves.items()}
        for k, v in self.curves.items():
            if v.shape != (len(self.layer_names),):
                raise ValueError(f"curve {k!r} must be ({len(self.layer_names)},), got {v.shape}")
        self.bands = {
            k: (np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
            for k, (lo, hi) in (bands or {}).items()
        }
        self.y_title = y_title
        self.percent = percent
        self.reference = reference
        self.reference_text = reference_text

    @classmethod
    def from_arrays(
        cls,
        layer_names: Sequence[str],
        curves: Mapping[str, Any],
        bands: Mapping[str, tuple[Any, Any]] | None = None,
        *,
        y_title: str = "accuracy",
        percent: bool = True,
        reference: float | None = None,
        reference_text: str = "",
        **plot_kwargs: Any,
    ) -> LayerCurvesDisplay:
        """Build (see the class docstring) and plot."""
        return cls(layer_names, curves, bands, y_title, percent, reference, reference_text).plot(
            **plot_kwargs
        )

    def plot(
        self, *, title: str | None = None, width: int | None = None, height: int | None = None
    ) -> LayerCurvesDisplay:
        """Draw every curve (with its band) and the reference line.

        Returns:
            self, with ``figure_`` set.
        """
        fig = go.Figure()
        x = self.layer_names
        fmt = ".1%" if self.percent else ".3f"
        for i, (name, y) in enumerate(self.curves.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            if name in self.bands:
                lo, hi = self.bands[name]
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=hi,
                        mode="lines",
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                    )
                )
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=lo,
                        mode="lines",
                        line={"width": 0},
                        fill="tonexty",
                        fillcolor=_rgba(colour, 0.15),
                        hoverinfo="skip",
                        showlegend=False,
                    )
                )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="lines+markers",
                    name=name,
                    line={"color": colour, "width": 2},
                    hovertemplate=f"layer %{{x}}<br>{name} %{{y:{fmt}}}<extra></extra>",
                )
            )
        if self.reference is not None:
            fig.add_hline(
                y=self.reference,
                line={"dash": "dash", "color": "#888"},
                annotation_text=self.reference_text,
                annotation_position="top right",
            )
        fig.update_xaxes(title="layer", type="category")
        fig.update_yaxes(title=self.y_title, tickformat=".0%" if self.percent else None)
        fig.update_layout(
            template=TEMPLATE,
            title=title or "Per-layer curves",
            width=width,
            height=height or 420,
            hovermode="closest",
            legend={"orientation": "h", "y": -0.2},
        )
        self.figure_ = fig
        return self


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"
