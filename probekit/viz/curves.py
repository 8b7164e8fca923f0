"""Per-layer probe accuracy curve with a confidence band."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .heatmaps import TEMPLATE, _FigureBundle
from .ticks import set_axis_ticks

__all__ = ["LayerAccuracyDisplay", "wilson_interval"]

_LINE = "#2b6cb0"
_BAND = "rgba(43, 108, 176, 0.18)"


def wilson_interval(
    correct: np.ndarray | Sequence[float], n: int | np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion.

    Args:
        correct: ``(L,)`` proportions in ``[0, 1]`` (e.g. accuracy per layer).
        n: number of trials (samples), scalar or ``(L,)``.
        confidence: coverage of the interval.

    Returns:
        ``(lower (L,), upper (L,))``.
    """
    from scipy.stats import norm

    p = np.asarray(correct, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    z = float(norm.ppf(0.5 + confidence / 2))
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


class LayerAccuracyDisplay(_FigureBundle):
    """Accuracy of one probe per layer, with a confidence band and the chance level.

    Args:
        layer_names: the ``L`` layer names.
        scores: ``(L,)`` accuracy per layer.
        lower: ``(L,)`` lower end of the band, or None (no band).
        upper: ``(L,)`` upper end of the band, or None.
        chance: chance accuracy (dashed line), or None.
        name: legend name of the curve.

    Attributes:
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        scores: np.ndarray | Sequence[float],
        lower: np.ndarray | Sequence[float] | None = None,
        upper: np.ndarray | Sequence[float] | None = None,
        chance: float | None = None,
        name: str = "linear probe",
    ) -> None:
        self.layer_names = [str(n) for n in layer_names]
        n_layers = len(self.layer_names)
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.shape != (n_layers,):
            raise ValueError(f"scores must be (L,) = ({n_layers},), got {self.scores.shape}")
        if (lower is None) != (upper is None):
            raise ValueError("give both lower and upper, or neither")
        self.lower = None if lower is None else np.asarray(lower, dtype=np.float64)
        self.upper = None if upper is None else np.asarray(upper, dtype=np.float64)
        for arr in (self.lower, self.upper):
            if arr is not None and arr.shape != (n_layers,):
                raise ValueError(f"lower and upper must be (L,) = ({n_layers},), got {arr.shape}")
        self.chance = chance
        self.name = name

    @classmethod
    def from_arrays(
        cls,
        layer_names: Sequence[str],
        scores: np.ndarray | Sequence[float],
        lower: np.ndarray | Sequence[float] | None = None,
        upper: np.ndarray | Sequence[float] | None = None,
        chance: float | None = None,
        *,
        name: str = "linear probe",
        **plot_kwargs: Any,
    ) -> LayerAccuracyDisplay:
        """Build from arrays (as in the class docstring) and plot.

        Returns:
            The display, plotted.
        """
        return cls(layer_names, scores, lower, upper, chance, name=name).plot(**plot_kwargs)

    @classmethod
    def from_estimator(
        cls,
        clf: Any,
        X: Any = None,
        y: Any = None,
        *,
        confidence: float = 0.95,
        name: str | None = None,
        **plot_kwargs: Any,
    ) -> LayerAccuracyDisplay:
        """Per-layer accuracy of a fitted per-layer probe (``head="linear"``).

        With ``X`` and ``y``: the accuracy of every layer's probe on them (from the head's
        ``layer_logits``) with a Wilson confidence band, chance = the majority-class rate.
        Without: ``clf.layer_scores_`` (validation accuracy) and no band, chance = 1 / C.

        Args:
            clf: a fitted classifier whose head returns ``layer_logits`` (or has
                ``layer_scores_``).
            X: held-out input, ``N`` samples, or None.
            y: ``(N,)`` labels, or None.
            confidence: coverage of the band.
            name: legend name (default: the head's name).
            **plot_kwargs: passed to :meth:`plot`.

        Returns:
            The display, plotted.

        Raises:
            ValueError: no ``layer_scores_`` and no ``X, y``, or the head has no per-layer logits.
        """
        layer_names = list(clf.layer_names_)
        name = name or str(getattr(clf, "head", "linear probe"))
        if X is None or y is None:
            scores = getattr(clf, "layer_scores_", None)
            if scores is None:
                raise ValueError(
                    "clf has no layer_scores_ (only head='linear' records them): pass X and y "
                    "to score each layer's probe on held-out data"
                )
            return cls.from_arrays(
                layer_names,
                np.asarray(scores, dtype=np.float64),
                None,
                None,
                1.0 / len(clf.classes_),
                name=name,
                **plot_kwargs,
            )
        from ..estimator.fitted import class_index as _class_index
        from ..estimator.fitted import head_outputs as _head_outputs
        from ..estimator.fitted import inputs as _inputs

        x = _inputs(clf, X)
        parts = _head_outputs(clf, x, "layer_logits")
        if any(p is None for p in parts):
            raise ValueError("the head gives no per-layer logits: use head='linear'")
        logits = np.concatenate([p.numpy() for p in parts])  # type: ignore[union-attr]  # (N, L, C)
        target = _class_index(clf, y, len(x))
        correct = logits.argmax(-1) == target[:, None]  # (N, L)
        scores = correct.mean(0)
        lower, upper = wilson_interval(scores, len(x), confidence)
        chance = float(np.bincount(target).max() / len(target))
        return cls.from_arrays(layer_names, scores, lower, upper, chance, name=name, **plot_kwargs)

    def plot(
        self,
        fig: go.Figure | None = None,
        *,
        title: str | None = None,
        color: str | None = None,
        band_color: str | None = None,
        mark_best: bool = True,
        width: int | None = None,
        height: int | None = None,
    ) -> LayerAccuracyDisplay:
        """Draw the curve (onto ``fig`` if given, to overlay several probes).

        Args:
            fig: an existing figure to add the curve to, or None for a new one.
            title: figure title.
            color: line colour.
            band_color: band fill colour (an ``rgba`` string).
            mark_best: mark the best layer with a star.
            width: figure width in pixels.
            height: figure height in pixels (default 420).

        Returns:
            self, with ``figure_`` set.
        """
        fig = go.Figure() if fig is None else fig
        color = color or _LINE
        x = self.layer_names
        if self.lower is not None and self.upper is not None:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=self.upper,
                    mode="lines",
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    name=f"{self.name} upper",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=self.lower,
                    mode="lines",
                    line={"width": 0},
                    fill="tonexty",
                    fillcolor=band_color or (_BAND if color == _LINE else "rgba(120,120,120,0.15)"),
                    hoverinfo="skip",
                    name=f"{self.name} CI",
                )
            )
            custom = np.stack([self.lower, self.upper], axis=1)
            hover = "layer %{x}<br>accuracy %{y:.3f}<br>CI [%{customdata[0]:.3f}, %{customdata[1]:.3f}]<extra></extra>"
        else:
            custom, hover = None, "layer %{x}<br>accuracy %{y:.3f}<extra></extra>"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=self.scores,
                mode="lines+markers",
                name=self.name,
                line={"color": color, "width": 2},
                customdata=custom,
                hovertemplate=hover,
            )
        )
        if mark_best and len(self.scores):
            best = int(np.nanargmax(self.scores))
            fig.add_trace(
                go.Scatter(
                    x=[x[best]],
                    y=[self.scores[best]],
                    mode="markers",
                    showlegend=False,
                    marker={"symbol": "star", "size": 14, "color": color},
                    hovertemplate=f"best layer %{{x}}<br>accuracy %{{y:.3f}}<extra>{self.name}</extra>",
                )
            )
        if self.chance is not None:
            fig.add_hline(
                y=self.chance,
                line={"dash": "dash", "color": "#888"},
                annotation_text=f"chance {self.chance:.2f}",
                annotation_position="top right",  # below it, the text meets the tick labels
            )
        fig.update_xaxes(title="layer", type="category")
        fig.update_yaxes(title="accuracy")
        # ticks from every accuracy the axis shows (all curves drawn on fig, band, chance line)
        shown = [t.y for t in fig.data if t.y is not None]
        shown += [[s.y0] for s in fig.layout.shapes if isinstance(s.y0, (int, float))]
        set_axis_ticks(fig, shown, percent=True)
        fig.update_layout(
            template=TEMPLATE,
            title=title or "Per-layer probe accuracy",
            width=width,
            height=height or 420,
            hovermode="closest",
        )
        self.figure_ = fig
        return self
