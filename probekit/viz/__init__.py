"""Plotly figures of layer attribution and probe accuracy (plotly is imported only here).

Display objects follow scikit-learn's ``RocCurveDisplay``: ``from_estimator`` / ``from_arrays``
compute once, ``plot()`` stores the figure in ``figure_`` and returns the display;
:func:`export` writes a figure (or a display) to HTML, PNG, SVG or PDF.

In a notebook a display shows itself (``_repr_mimebundle_``) as interactive plotly plus a static
PNG, so it renders in JupyterLab, VS Code, ``nbconvert --to html`` and GitHub alike;
:func:`use_notebook_renderer` does the same for plain plotly figures. Axis ticks are chosen from
the data's range (:func:`nice_ticks`), and :func:`paired_bootstrap` compares two classifiers on the
same test samples.

Example:
    >>> import numpy as np
    >>> from probekit.viz import LayerAttributionDisplay
    >>> disp = LayerAttributionDisplay.from_arrays(
    ...     np.random.rand(6, 4), ["l0", "l1", "l2", "l3"], labels=[0, 1, 0, 1, 1, 0],
    ...     label_names=["neg", "pos"])
    >>> disp.figure_.data[0].type
    'heatmap'
"""

from .ablation import AblationDisplay
from .classes import ClassRecallDisplay, ConfusionDisplay
from .curves import LayerAccuracyDisplay, wilson_interval
from .export import ExportError, export, find_chrome
from .heatmaps import ClassProfileDisplay, LayerAttributionDisplay, LayerMapDisplay
from .notebook import figure_bundle, static_images_available, use_notebook_renderer
from .science import LayerCurvesDisplay, SimilarityDisplay
from .stats import PairedBootstrap, paired_bootstrap
from .text import WordLayerDisplay
from .ticks import nice_ticks, set_axis_ticks

__all__ = [
    "AblationDisplay",
    "ClassProfileDisplay",
    "ClassRecallDisplay",
    "ConfusionDisplay",
    "ExportError",
    "LayerAccuracyDisplay",
    "LayerAttributionDisplay",
    "LayerCurvesDisplay",
    "LayerMapDisplay",
    "PairedBootstrap",
    "SimilarityDisplay",
    "WordLayerDisplay",
    "export",
    "figure_bundle",
    "find_chrome",
    "nice_ticks",
    "paired_bootstrap",
    "set_axis_ticks",
    "static_images_available",
    "use_notebook_renderer",
    "wilson_interval",
]
