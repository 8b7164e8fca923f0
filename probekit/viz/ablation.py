"""Layer ablation sensitivity: the drop in true-class probability and in accuracy per layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .heatmaps import DIVERGING, TEMPLATE, _FigureBundle
from .ticks import set_axis_ticks

__all__ = ["AblationDisplay"]


class AblationDisplay(_FigureBundle):
    """Bar charts of an :class:`probekit.attribution.AblationResult`.

    Top: mean drop in the true-class probability per layer with error bars (a ``confidence``
    interval of the mean, normal approximation); bottom: drop in accuracy. Bars are coloured on a
    diverging scale centred at 0 (red: replacing the layer hurts, so the layer helped; blue: the
    prediction got better without it).

    Args:
        result: the ablation result.

    Attributes:
        n_: number of samples.
        mean_: ``(L,)`` mean drop in the true-class probability.
        std_: ``(L,)`` its standard deviation over samples (``ddof=1``).
        figure_: the plotly figure after :meth:`plot`.
    """

    def __init__(self, result: Any) -> None:
        per_sample = np.asarray(result.per_sample, dtype=np.float64)
        if per_sample.ndim != 2 or per_sample.shape[1] != len(result.layer_names):
            raise ValueError(
                f"result.per_sample must be (N, L) with L = {len(result.layer_names)}, "
                f"got {per_sample.shape}"
            )
        self.result = result
        n = per_sample.shape[0]
        self.n_ = n
        self.mean_ = per_sample.mean(0)  # (L,)
        self.std_ = per_sample.std(0, ddof=1) if n > 1 else np.zeros_like(self.mean_)

    @classmethod
    def from_result(cls, result: Any, **plot_kwargs: Any) -> AblationDisplay:
        """Plot an :class:`~probekit.attribution.AblationResult`.

        Returns:
            The display, plotted.
        """
        return cls(result).plot(**plot_kwargs)

    @classmethod
    def from_stats(
        cls,
        mean: Any,
        std: Any,
        n: int,
        result: Any,
        **plot_kwargs: Any,
    ) -> AblationDisplay:
        """Plot from the per-layer mean and spread of the drops, computed elsewhere (e.g. streamed
        over a file too big to load).

        Args:
            mean: ``(L,)`` mean drop per layer over the ``n`` samples.
            std: ``(L,)`` its standard deviation (``ddof=1``).
            n: number of samples.
            result: anything with ``accuracy_drop``, ``base_accuracy``, ``layer_names`` and
                ``mode`` as an :class:`~probekit.attribution.AblationResult` (its
                ``per_sample`` is not read).
            **plot_kwargs: passed to :meth:`plot`.

        Returns:
            The display, plotted.
        """
        disp = cls.__new__(cls)
        disp.result = result
        disp.n_ = int(n)
        disp.mean_ = np.asarray(mean, dtype=np.float64)
        disp.std_ = np.asarray(std, dtype=np.float64)
        if disp.mean_.shape != (len(result.layer_names),) or disp.std_.shape != disp.mean_.shape:
            raise ValueError(
                f"mean and std must be (L,) with L = {len(result.layer_names)}, "
                f"got {disp.mean_.shape} and {disp.std_.shape}"
            )
        return disp.plot(**plot_kwargs)

    @classmethod
    def from_estimator(
        cls,
        clf: Any,
        X: Any,
        y: Any,
        *,
        mode: str = "mean",
        random_state: int | None = 0,
        **plot_kwargs: Any,
    ) -> AblationDisplay:
        """Run :func:`~probekit.attribution.ablation_sensitivity` and plot it.

        Args:
            clf: a fitted probe classifier.
            X: its input, ``N`` samples.
            y: ``(N,)`` true labels.
            mode: ``"zero"``, ``"mean"`` or ``"shuffle"``.
            random_state: seed of ``"shuffle"``.
            **plot_kwargs: passed to :meth:`plot`.

        Returns:
            The display, plotted.
        """
        from ..analysis.attribution import ablation_sensitivity

        res = ablation_sensitivity(clf, X, y, mode=mode, random_state=random_state)  # type: ignore[arg-type]
        return cls(res).plot(**plot_kwargs)

    def plot(
        self,
        *,
        title: str | None = None,
        confidence: float = 0.95,
        colorscale: Any = DIVERGING,
        width: int | None = None,
        height: int | None = None,
    ) -> AblationDisplay:
        """Draw the two bar charts.

        Args:
            title: figure title (default names the mode and the base accuracy).
            confidence: coverage of the error bars on the mean drop.
            colorscale: diverging colour scale of the bars (centred at 0).
            width: figure width in pixels.
            height: figure height in pixels (default 560).

        Returns:
            self, with ``figure_`` set.
        """
        from scipy.stats import norm

        res = self.result
        n, mean = self.n_, self.mean_  # (L,)
        sem = self.std_ / np.sqrt(n) if n > 1 else np.zeros_like(mean)
        err = float(norm.ppf(0.5 + confidence / 2)) * sem
        acc = np.asarray(res.accuracy_drop, dtype=np.float64)  # (L,)
        names = [str(x) for x in res.layer_names]

        def colours(v: np.ndarray) -> dict[str, Any]:
            top = float(np.nanmax(np.abs(v))) if v.size else 1.0
            top = top if top > 0 else 1.0
            return {
                "color": v,
                "colorscale": colorscale,
                "cmin": -top,
                "cmax": top,
                "line": {"color": "#555", "width": 0.5},
            }

        fig = make_subplots(
            rows=2,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.12,
            subplot_titles=(
                f"drop in true-class probability (mean, {confidence:.0%} CI)",
                "drop in accuracy",
            ),
        )
        fig.add_trace(
            go.Bar(
                x=names,
                y=mean,
                marker=colours(mean),
                name="probability drop",
                error_y={"type": "data", "array": err, "visible": True, "color": "#333"},
                hovertemplate="layer %{x}<br>mean drop %{y:.4f}<br>± %{error_y.array:.4f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=names,
                y=acc,
                marker=colours(acc),
                name="accuracy drop",
                hovertemplate="layer %{x}<br>accuracy drop %{y:.3%}<extra></extra>",
            ),
            row=2,
            col=1,
        )
        for row in (1, 2):
            fig.add_hline(y=0, line={"color": "#888", "width": 1}, row=row, col=1)
        fig.update_xaxes(type="category")
        fig.update_xaxes(title="layer", row=2, col=1)
        fig.update_yaxes(title="Δ p(true)", row=1, col=1)
        fig.update_yaxes(title="Δ accuracy", row=2, col=1)
        set_axis_ticks(fig, [mean - err, mean + err, [0.0]], row=1, col=1)
        set_axis_ticks(fig, [acc, [0.0]], percent=True, row=2, col=1)
        base = float(res.base_accuracy)
        fig.update_layout(
            template=TEMPLATE,
            showlegend=False,
            width=width,
            height=height or 560,
            title=title or f"Layer ablation ({res.mode}): base accuracy {base:.1%}, N = {n}",
        )
        self.figure_ = fig
        return self
