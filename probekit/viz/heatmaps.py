"""Heatmaps of layer attribution: per sample, per class, and AILA's layer-to-layer map.

Display objects in the scikit-learn style: ``from_estimator`` / ``from_arrays`` compute once and
call :meth:`plot`, which stores the plotly figure in ``figure_`` and returns the display.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .ticks import value_decimals

__all__ = ["ClassProfileDisplay", "LayerAttributionDisplay", "LayerMapDisplay"]

# Light, readable colour scales: sequential for non-negative weights, diverging (centred at 0)
# for signed values such as ablation drops (red = the layer helped, blue = it hurt).
SEQUENTIAL = "Blues"
DIVERGING = [
    [0.0, "#2f6fad"],
    [0.25, "#92c0df"],
    [0.5, "#f7f7f7"],
    [0.75, "#f4a582"],
    [1.0, "#c2432f"],
]
TEMPLATE = "plotly_white"
_TEXT_CHARS = 80


class _FigureBundle:
    """Notebook display of ``figure_``: interactive plotly plus a static PNG (or inline plotly.js).

    See :func:`probekit.viz.notebook.figure_bundle`.
    """

    figure_: go.Figure

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from .notebook import figure_bundle

        return figure_bundle(self.figure_)


def _colour_args(values: np.ndarray, colorscale: Any, zmid: float | None) -> dict[str, Any]:
    """Heatmap colour keywords: sequential from 0 when ``values >= 0``, else diverging around 0."""
    finite = values[np.isfinite(values)]
    signed = finite.size > 0 and float(finite.min()) < 0
    if signed or zmid is not None:
        return {"colorscale": colorscale or DIVERGING, "zmid": 0.0 if zmid is None else zmid}
    top = float(finite.max()) if finite.size else 1.0
    return {"colorscale": colorscale or SEQUENTIAL, "zmin": 0.0, "zmax": top if top > 0 else 1.0}


def _name_of(value: Any, label_names: Sequence[str] | Mapping[Any, str] | None) -> str:
    """Display name of one class label."""
    key = value.item() if isinstance(value, np.generic) else value
    if isinstance(label_names, Mapping):
        return str(label_names.get(key, key))
    if label_names is not None and isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if 0 <= int(key) < len(label_names):
            return str(label_names[int(key)])
    return str(key)


def _check_values(values: Any, layer_names: Sequence[str], ndim: int = 2) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim or arr.shape[-1] != len(layer_names):
        want = "(N, L)" if ndim == 2 else "(N, L, L)"
        raise ValueError(
            f"values must be {want} with L = len(layer_names) = {len(layer_names)}, got {arr.shape}"
        )
    return arr


def _estimator_values(
    clf: Any, X: Any, y: Any, method: str, ablation_mode: str
) -> tuple[np.ndarray, str]:
    """``(N, L)`` attribution of ``clf`` on ``X`` by ``method`` and a name for the colour bar."""
    from ..analysis import attribution as A

    if method == "auto":
        try:
            return A.layer_attribution(clf, X), "layer weight"
        except ValueError:
            method = "ablation"
    if method == "weights":
        return A.layer_attribution(clf, X), "layer weight"
    if method == "ablation":
        if y is None:
            raise ValueError("method='ablation' needs y")
        res = A.ablation_sensitivity(clf, X, y, mode=ablation_mode)  # type: ignore[arg-type]
        return res.per_sample, f"drop in p(true) ({ablation_mode})"
    if method in ("integrated_gradients", "feature_ablation"):
        return A.captum_attribution(clf, X, y, method=method), method.replace("_", " ")  # type: ignore[arg-type]
    raise ValueError(
        "method must be 'auto', 'weights', 'ablation', 'integrated_gradients' or "
        f"'feature_ablation', got {method!r}"
    )


def _label_names_of(clf: Any, label_names: Sequence[str] | Mapping[Any, str] | None) -> Any:
    if label_names is not None:
        return label_names
    names = getattr(clf, "label_names_", None)
    classes = np.asarray(clf.classes_)
    if names is not None and len(names) == len(classes):
        return {
            c.item() if isinstance(c, np.generic) else c: str(n) for c, n in zip(classes, names)
        }
    return None


class LayerAttributionDisplay(_FigureBundle):
    """Per-sample x layer heatmap, samples grouped by class.

    Rows are samples sorted (stably) by class, with a line between classes and the class names
    on the y axis; columns are layers. Hovering a cell shows the sample id, label, prediction,
    value and, for text data, the (truncated) text.

    Args:
        values: ``(N, L)`` attribution, columns aligned with ``layer_names``.
        layer_names: the ``L`` layer names.
        labels: ``(N,)`` true class labels.
        label_names: display names of the classes: a sequence indexed by integer label, or a
            mapping label -> name; default ``str(label)``.
        predictions: ``(N,)`` predicted labels, or None.
        sample_ids: ``(N,)`` ids shown on hover (default ``0..N-1``).
        texts: ``N`` input texts shown (truncated) on hover, or None.
        value_name: what the values are (colour-bar title).

    Attributes:
        figure_: the ``plotly.graph_objects.Figure`` after :meth:`plot`.
        order_: ``(N,)`` row order of the heatmap (indices into the inputs).
    """

    def __init__(
        self,
        values: np.ndarray,
        layer_names: Sequence[str],
        labels: Sequence[Any] | np.ndarray,
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        predictions: Sequence[Any] | np.ndarray | None = None,
        sample_ids: Sequence[Any] | np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        value_name: str = "attribution",
    ) -> None:
        self.layer_names = [str(n) for n in layer_names]
        self.values = _check_values(values, self.layer_names)
        n = self.values.shape[0]
        self.labels = np.asarray(labels)
        self.predictions = None if predictions is None else np.asarray(predictions)
        self.sample_ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids)
        self.texts = None if texts is None else [str(t) for t in texts]
        for name, arr in (
            ("labels", self.labels),
            ("predictions", self.predictions),
            ("sample_ids", self.sample_ids),
            ("texts", self.texts),
        ):
            if arr is not None and len(arr) != n:
                raise ValueError(
                    f"{name} must have {n} entries (one per row of values), got {len(arr)}"
                )
        self.label_names = label_names
        self.value_name = value_name

    @classmethod
    def from_arrays(
        cls,
        values: np.ndarray,
        layer_names: Sequence[str],
        labels: Sequence[Any] | np.ndarray,
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        predictions: Sequence[Any] | np.ndarray | None = None,
        sample_ids: Sequence[Any] | np.ndarray | None = None,
        texts: Sequence[str] | None = None,
        *,
        value_name: str = "attribution",
        **plot_kwargs: Any,
    ) -> LayerAttributionDisplay:
        """Build the display from arrays and plot it (arguments as in the class docstring).

        Returns:
            The display, plotted (``figure_`` set).
        """
        disp = cls(
            values,
            layer_names,
            labels,
            label_names,
            predictions,
            sample_ids,
            texts,
            value_name=value_name,
        )
        return disp.plot(**plot_kwargs)

    @classmethod
    def from_estimator(
        cls,
        clf: Any,
        X: Any,
        y: Any,
        texts: Sequence[str] | None = None,
        *,
        method: str = "auto",
        ablation_mode: str = "mean",
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        sample_ids: Sequence[Any] | np.ndarray | None = None,
        **plot_kwargs: Any,
    ) -> LayerAttributionDisplay:
        """Attribute ``clf`` on ``X`` and plot it.

        Args:
            clf: a fitted probe classifier.
            X: its input, ``N`` samples.
            y: ``(N,)`` true labels.
            texts: ``N`` texts for hover, or None.
            method: ``"auto"`` (the head's layer weights if it has them, else ablation),
                ``"weights"``, ``"ablation"``, ``"integrated_gradients"`` or ``"feature_ablation"``.
            ablation_mode: ``mode`` of :func:`probekit.attribution.ablation_sensitivity`.
            label_names: class display names (default: ``clf.label_names_`` if present, else
                ``str`` of each class).
            sample_ids: ``(N,)`` ids for hover.
            **plot_kwargs: passed to :meth:`plot`.

        Returns:
            The display, plotted.
        """
        values, value_name = _estimator_values(clf, X, y, method, ablation_mode)
        return cls.from_arrays(
            values,
            list(clf.layer_names_),
            y,
            _label_names_of(clf, label_names),
            predictions=clf.predict(X),
            sample_ids=sample_ids,
            texts=texts,
            value_name=value_name,
            **plot_kwargs,
        )

    def _customdata(self, order: np.ndarray) -> np.ndarray:
        """``(N, L, 4)`` hover data: id, label, prediction, text."""
        n, n_layers = len(order), len(self.layer_names)
        cols = np.empty((n, 4), dtype=object)
        cols[:, 0] = [str(s) for s in self.sample_ids[order]]
        cols[:, 1] = [_name_of(v, self.label_names) for v in self.labels[order]]
        cols[:, 2] = (
            "-"
            if self.predictions is None
            else [_name_of(v, self.label_names) for v in self.predictions[order]]
        )
        if self.texts is None:
            cols[:, 3] = ""
        else:
            cols[:, 3] = [
                "<br>" + html.escape(t if len(t) <= _TEXT_CHARS else t[: _TEXT_CHARS - 1] + "…")
                for t in (self.texts[i] for i in order)
            ]
        return np.broadcast_to(cols[:, None, :], (n, n_layers, 4))

    def plot(
        self,
        *,
        title: str | None = None,
        colorscale: Any = None,
        zmid: float | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> LayerAttributionDisplay:
        """Draw the heatmap.

        Args:
            title: figure title (default: the value name).
            colorscale: plotly colour scale (default: sequential ``Blues`` for non-negative
                values, diverging blue-white-red centred at 0 otherwise).
            zmid: centre of a diverging scale (forces diverging).
            width: figure width in pixels (default: plotly's).
            height: figure height (default: grows with N, 400 to 1000).

        Returns:
            self, with ``figure_`` set.
        """
        classes, codes = np.unique(self.labels, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        self.order_ = order
        n = len(order)
        z = self.values[order]  # (N, L)
        rows = np.arange(n)
        heat = go.Heatmap(
            z=z,
            x=self.layer_names,
            y=rows,
            customdata=self._customdata(order),
            hovertemplate=(
                "sample %{customdata[0]}<br>label %{customdata[1]}<br>"
                "prediction %{customdata[2]}<br>layer %{x}<br>value %{z:.4g}"
                "%{customdata[3]}<extra></extra>"
            ),
            colorbar={"title": {"text": self.value_name, "side": "right"}},
            **_colour_args(z, colorscale, zmid),
        )
        fig = go.Figure(heat)
        counts = np.bincount(codes, minlength=len(classes))
        ends = np.cumsum(counts)
        starts = ends - counts
        for boundary in ends[:-1]:
            fig.add_shape(
                type="line",
                xref="paper",
                x0=0,
                x1=1,
                y0=boundary - 0.5,
                y1=boundary - 0.5,
                line={"color": "#444", "width": 1.5},
            )
        fig.update_yaxes(
            tickmode="array",
            tickvals=((starts + ends - 1) / 2).tolist(),
            ticktext=[f"{_name_of(c, self.label_names)} (n={k})" for c, k in zip(classes, counts)],
            autorange="reversed",
            title="samples by class",
            showgrid=False,
            zeroline=False,
        )
        fig.update_xaxes(title="layer", type="category", showgrid=False)
        fig.update_layout(
            template=TEMPLATE,
            title=title or f"Layer attribution per sample: {self.value_name}",
            width=width,
            height=height or int(np.clip(200 + 3 * n, 400, 1000)),
        )
        self.figure_ = fig
        return self


class ClassProfileDisplay(_FigureBundle):
    """Class-mean layer profile: a classes x layers heatmap.

    Args:
        class_means: ``(C, L)`` mean attribution of each class.
        layer_names: the ``L`` layer names.
        class_names: the ``C`` class display names.
        counts: ``(C,)`` samples per class, or None.
        value_name: what the values are (colour-bar title).

    Attributes:
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(
        self,
        class_means: np.ndarray,
        layer_names: Sequence[str],
        class_names: Sequence[str],
        counts: np.ndarray | None = None,
        value_name: str = "attribution",
    ) -> None:
        self.layer_names = [str(n) for n in layer_names]
        self.class_means = _check_values(class_means, self.layer_names)
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) != self.class_means.shape[0]:
            raise ValueError("class_names must give one name per row of class_means")
        self.counts = None if counts is None else np.asarray(counts)
        self.value_name = value_name

    @classmethod
    def from_arrays(
        cls,
        values: np.ndarray,
        layer_names: Sequence[str],
        labels: Sequence[Any] | np.ndarray,
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        *,
        value_name: str = "attribution",
        **plot_kwargs: Any,
    ) -> ClassProfileDisplay:
        """Average ``values (N, L)`` within each class of ``labels (N,)`` and plot.

        Returns:
            The display, plotted.
        """
        vals = _check_values(values, layer_names)
        labels = np.asarray(labels)
        if len(labels) != len(vals):
            raise ValueError(f"labels must have {len(vals)} entries, got {len(labels)}")
        classes, codes = np.unique(labels, return_inverse=True)
        counts = np.bincount(codes, minlength=len(classes))
        sums = np.zeros((len(classes), vals.shape[1]))
        np.add.at(sums, codes, vals)
        means = sums / counts[:, None]
        return cls.from_class_means(
            means, layer_names, classes, label_names, counts, value_name=value_name, **plot_kwargs
        )

    @classmethod
    def from_class_means(
        cls,
        class_means: np.ndarray,
        layer_names: Sequence[str],
        classes: Sequence[Any] | np.ndarray,
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        counts: np.ndarray | None = None,
        *,
        value_name: str = "attribution",
        **plot_kwargs: Any,
    ) -> ClassProfileDisplay:
        """Plot ``(C, L)`` means of the ``C`` classes computed elsewhere (e.g. streamed over a
        file too big to load), ``classes`` named through ``label_names``, ``counts (C,)``.

        Returns:
            The display, plotted.
        """
        names = [_name_of(c, label_names) for c in np.asarray(classes)]
        disp = cls(class_means, layer_names, names, counts, value_name=value_name)
        return disp.plot(**plot_kwargs)

    @classmethod
    def from_estimator(
        cls,
        clf: Any,
        X: Any,
        y: Any,
        *,
        method: str = "auto",
        ablation_mode: str = "mean",
        label_names: Sequence[str] | Mapping[Any, str] | None = None,
        **plot_kwargs: Any,
    ) -> ClassProfileDisplay:
        """Attribute ``clf`` on ``X`` (as :meth:`LayerAttributionDisplay.from_estimator`) and plot
        the class means.

        Returns:
            The display, plotted.
        """
        values, value_name = _estimator_values(clf, X, y, method, ablation_mode)
        return cls.from_arrays(
            values,
            list(clf.layer_names_),
            y,
            _label_names_of(clf, label_names),
            value_name=value_name,
            **plot_kwargs,
        )

    def plot(
        self,
        *,
        title: str | None = None,
        colorscale: Any = None,
        zmid: float | None = None,
        show_values: bool | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> ClassProfileDisplay:
        """Draw the heatmap.

        Args:
            title: figure title.
            colorscale: plotly colour scale (default as in :class:`LayerAttributionDisplay`).
            zmid: centre of a diverging scale (forces diverging).
            show_values: write the value in each cell (default: when there are <= 400 cells).
            width: figure width in pixels.
            height: figure height (default: grows with C).

        Returns:
            self, with ``figure_`` set.
        """
        n_classes, n_layers = self.class_means.shape
        if show_values is None:
            show_values = n_classes * n_layers <= 400
        ticks = (
            self.class_names
            if self.counts is None
            else [f"{c} (n={k})" for c, k in zip(self.class_names, self.counts)]
        )
        heat = go.Heatmap(
            z=self.class_means,
            x=self.layer_names,
            y=ticks,
            texttemplate=f"%{{z:.{value_decimals(self.class_means)}f}}" if show_values else None,
            hovertemplate="class %{y}<br>layer %{x}<br>mean %{z:.4g}<extra></extra>",
            colorbar={"title": {"text": f"mean {self.value_name}", "side": "right"}},
            **_colour_args(self.class_means, colorscale, zmid),
        )
        fig = go.Figure(heat)
        fig.update_xaxes(title="layer", type="category", showgrid=False)
        fig.update_yaxes(title="class", type="category", autorange="reversed", showgrid=False)
        fig.update_layout(
            template=TEMPLATE,
            title=title or f"Class-mean layer profile: {self.value_name}",
            width=width,
            height=height or int(np.clip(160 + 40 * n_classes, 300, 900)),
        )
        self.figure_ = fig
        return self


class LayerMapDisplay(_FigureBundle):
    """AILA's layer-to-layer map: row ``j`` = how layer ``j`` mixes the layers (columns).

    Args:
        layer_map: ``(L, L)`` map (already averaged over samples).
        layer_names: the ``L`` layer names.

    Attributes:
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(self, layer_map: np.ndarray, layer_names: Sequence[str]) -> None:
        self.layer_names = [str(n) for n in layer_names]
        arr = np.asarray(layer_map, dtype=np.float64)
        if arr.shape != (len(self.layer_names),) * 2:
            raise ValueError(
                f"layer_map must be (L, L) = {(len(self.layer_names),) * 2}, got {arr.shape}"
            )
        self.layer_map = arr

    @classmethod
    def from_arrays(
        cls, layer_map: np.ndarray, layer_names: Sequence[str], **plot_kwargs: Any
    ) -> LayerMapDisplay:
        """Plot a ``(L, L)`` map, or the sample mean of an ``(N, L, L)`` one.

        Returns:
            The display, plotted.
        """
        arr = np.asarray(layer_map, dtype=np.float64)
        if arr.ndim == 3:
            arr = np.nanmean(arr, axis=0)
        return cls(arr, layer_names).plot(**plot_kwargs)

    @classmethod
    def from_estimator(cls, clf: Any, X: Any, **plot_kwargs: Any) -> LayerMapDisplay:
        """Average the head's ``(N, L, L)`` layer map over ``X`` and plot it (AILA heads).

        Returns:
            The display, plotted.
        """
        from ..analysis.attribution import layer_map

        return cls.from_arrays(layer_map(clf, X), list(clf.layer_names_), **plot_kwargs)

    def plot(
        self,
        *,
        title: str | None = None,
        colorscale: Any = None,
        zmid: float | None = None,
        show_values: bool | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> LayerMapDisplay:
        """Draw the map.

        Args:
            title: figure title.
            colorscale: plotly colour scale (default: sequential for non-negative weights).
            zmid: centre of a diverging scale (forces diverging).
            show_values: write values in cells (default: when L <= 16).
            width: figure width in pixels (default: square-ish, grows with L).
            height: figure height in pixels.

        Returns:
            self, with ``figure_`` set.
        """
        n_layers = len(self.layer_names)
        if show_values is None:
            show_values = n_layers <= 16
        heat = go.Heatmap(
            z=self.layer_map,
            x=self.layer_names,
            y=self.layer_names,
            texttemplate=f"%{{z:.{value_decimals(self.layer_map)}f}}" if show_values else None,
            hovertemplate="layer %{y} reads layer %{x}<br>weight %{z:.4g}<extra></extra>",
            colorbar={"title": {"text": "weight", "side": "right"}},
            **_colour_args(self.layer_map, colorscale, zmid),
        )
        fig = go.Figure(heat)
        fig.update_xaxes(title="source layer i", type="category", showgrid=False)
        fig.update_yaxes(title="layer j", type="category", autorange="reversed", showgrid=False)
        side = int(np.clip(220 + 32 * n_layers, 400, 900))
        fig.update_layout(
            template=TEMPLATE,
            title=title or "Layer-to-layer map",
            width=width or side + 80,
            height=height or side,
        )
        self.figure_ = fig
        return self
