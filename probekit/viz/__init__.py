"""Plotly figures of layer attribution and probe accuracy (plotly is imported only here).

Display objects follow scikit-learn's ``RocCurveDisplay``: ``from_estimator`` / ``from_arrays``
compute once, ``plot()`` stores the figure in ``figure_`` and returns the display;
:func:`export` writes a figure (or a display) to HTML, PNG, SVG or PDF.

Example:
    >>> import numpy as np
    >>> from probekit.viz import LayerAttributionDisplay
    >>> disp = LayerAttributionDisplay.from_arrays(
    ...     np.random.rand(6, 4), ["l0", "l1", "l2", "l3"], labels=[0, 1, 0, 1, 1, 0],
    ...     label_names=["neg", "pos"])
    >>> disp.figure_.data[0].type
    'heatmap'
"""

from probekit.viz.ablation import AblationDisplay
from probekit.viz.curves import LayerAccuracyDisplay, wilson_interval
from probekit.viz.export import ExportError, export, find_chrome
from probekit.viz.heatmaps import ClassProfileDisplay, LayerAttributionDisplay, LayerMapDisplay
from probekit.viz.science import LayerCurvesDisplay, SimilarityDisplay

__all__ = [
    "AblationDisplay",
    "ClassProfileDisplay",
    "ExportError",
    "LayerAccuracyDisplay",
    "LayerAttributionDisplay",
    "LayerCurvesDisplay",
    "LayerMapDisplay",
    "SimilarityDisplay",
    "export",
    "find_chrome",
    "wilson_interval",
]
