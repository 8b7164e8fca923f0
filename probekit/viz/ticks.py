"""Axis ticks chosen from the data's range, so labels stay distinct and true on small ranges.

A fixed format such as ``tickformat=".0%"`` on an axis spanning a fraction of a percent labels
ticks 0.005 apart as "1%", "1%", "0%": duplicate and wrong. :func:`nice_ticks` picks a round step
for the range and just enough decimals to write every tick exactly; :func:`set_axis_ticks` puts
the ticks (and a range that holds the data) on a plotly axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["nice_ticks", "set_axis_ticks", "value_decimals"]

_MANTISSAS = (1.0, 2.0, 2.5, 5.0, 10.0)


def _decimals(step: float) -> int:
    """Decimals that write every multiple of ``step`` exactly (``step`` = m x 10^k)."""
    k = math.floor(math.log10(step) + 1e-9)
    mantissa = step / 10**k
    extra = 1 if abs(mantissa - 2.5) < 1e-6 else 0
    return max(0, -k + extra)


def _label(value: float, decimals: int, percent: bool) -> str:
    text = f"{value * 100 if percent else value:.{decimals}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text + ("%" if percent else "")


def nice_ticks(
    lo: float, hi: float, *, percent: bool = False, max_ticks: int = 6
) -> tuple[list[float], list[str], tuple[float, float]]:
    """Round tick positions covering ``[lo, hi]`` and labels written with enough decimals.

    Args:
        lo: smallest value to show.
        hi: largest value to show.
        percent: write labels as percentages (values are fractions: 0.012 -> "1.2%").
        max_ticks: at most this many ticks.

    Returns:
        ``(tickvals, ticktext, (range_lo, range_hi))``: positions, their labels (distinct, each
        equal to its position written to the decimals shown), and the axis range (the data with a
        5% margin, widened to the outer ticks).
    """
    lo, hi = float(min(lo, hi)), float(max(lo, hi))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    span = hi - lo
    if span <= 1e-12 * max(1.0, abs(hi)):
        half = 0.05 * abs(hi) if hi != 0 else (0.01 if percent else 0.1)
        lo, hi, span = lo - half, hi + half, 2 * half
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    raw = (hi - lo) / max(1, max_ticks - 1)
    k = math.floor(math.log10(raw))
    step = next(m * 10**k for m in _MANTISSAS if m * 10**k >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    vals = [round(i * step, 12) for i in range(first, last + 1)]
    decimals = _decimals(step) - (2 if percent else 0)
    decimals = max(0, decimals)
    text = [_label(v, decimals, percent) for v in vals]
    return vals, text, (min(lo, vals[0]), max(hi, vals[-1]))


def set_axis_ticks(
    fig: Any,
    values: Iterable[Any],
    *,
    axis: str = "y",
    percent: bool = False,
    row: int | None = None,
    col: int | None = None,
) -> None:
    """Set ``fig``'s axis ticks and range from the values it shows.

    Args:
        fig: a plotly figure.
        values: every value the axis must show (bars, band ends, reference lines); NaN ignored.
        axis: ``"x"`` or ``"y"``.
        percent: label as percentages.
        row: subplot row (with ``col``), or None for every axis of that letter.
        col: subplot column.
    """
    arr = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in values])
    arr = arr[np.isfinite(arr)]
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
    vals, text, rng = nice_ticks(lo, hi, percent=percent)
    update = fig.update_yaxes if axis == "y" else fig.update_xaxes
    update(tickmode="array", tickvals=vals, ticktext=text, range=list(rng), row=row, col=col)


def value_decimals(values: Any, *, significant: int = 1, minimum: int = 2) -> int:
    """Decimals that show ``significant`` digits of the spread of ``values`` (cell labels).

    Near-uniform weights (0.142, 0.145, 0.139) need three decimals to look different; values
    spread over 0..1 need ``minimum`` (two).
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2:
        return minimum
    spread = float(arr.max() - arr.min())
    if spread <= 0:
        return minimum
    return int(min(6, max(minimum, significant - 1 - math.floor(math.log10(spread)))))
