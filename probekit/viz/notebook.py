"""Notebook output that shows a figure in every viewer: interactive plotly plus a static PNG.

A plotly figure normally reaches a notebook as one mimetype, ``application/vnd.plotly.v1+json``,
which only a live front-end with the plotly renderer draws (JupyterLab, VS Code). An HTML export
(``jupyter nbconvert --to html``) and GitHub's viewer show nothing. :func:`figure_bundle` builds one
output that carries several representations; each viewer picks the richest it can draw:

========================  =============================  ==================================
viewer                    Chromium found (PNG fallback)   no Chromium
========================  =============================  ==================================
JupyterLab, VS Code       interactive plotly              interactive plotly
nbconvert HTML, offline   the PNG                         inline plotly.js figure
GitHub's static viewer    the PNG                         a note saying why nothing is drawn
========================  =============================  ==================================

The PNG is drawn by kaleido, which needs a Chrome or Chromium (see :mod:`probekit.viz.export`).
Without one, the bundle carries ``text/html`` with plotly.js inlined instead (once per Python
session: later figures reuse it) and a visible note.

Display objects (``LayerAccuracyDisplay`` ...) return this bundle from ``_repr_mimebundle_``;
:func:`use_notebook_renderer` makes plain plotly figures do the same.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from typing import Any

import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

__all__ = ["PLOTLY_MIMETYPE", "figure_bundle", "static_images_available", "use_notebook_renderer"]

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
RENDERER_NAME = "probekit"
NO_CHROME_NOTE = (
    "No Chrome/Chromium was found, so this figure has no static PNG copy: it shows in JupyterLab, "
    "VS Code and an HTML export (plotly.js is inlined), but not in viewers that run no JavaScript "
    "(GitHub). Install Chromium (apt-get install chromium) or set BROWSER_PATH, then re-run."
)
_SETUP_NOTE = NO_CHROME_NOTE.replace("this figure has", "figures will have").replace(
    "it shows", "they show"
)

_state: dict[str, Any] = {"server": False, "plotlyjs_sent": False}


def static_images_available() -> bool:
    """Whether kaleido can draw PNGs here (kaleido importable and a Chrome/Chromium found)."""
    from .export import find_chrome

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    return find_chrome() is not None


def _png(fig: Any, width: int | None, height: int | None, scale: float) -> bytes:
    """Render ``fig`` to PNG bytes, through one long-lived kaleido browser per session."""
    import kaleido

    if not _state["server"]:
        try:
            kaleido.start_sync_server(silence_warnings=True)
            _state["server"] = True
        except Exception:  # an older kaleido: every image starts its own browser (slower)
            _state["server"] = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return pio.to_image(fig, format="png", width=width, height=height, scale=scale)


def _inline_html(fig: Any) -> str:
    """``text/html``: a visible note, then the figure drawn by plotly.js (inlined the first time)."""
    first = not _state["plotlyjs_sent"]
    body = pio.to_html(
        fig,
        include_plotlyjs=first,
        full_html=False,
        default_width="100%",
        config={"responsive": True},
    )
    _state["plotlyjs_sent"] = True
    note = (
        '<p class="probekit-no-static" style="color:#8a5300;font-size:85%">'
        f"{html.escape(NO_CHROME_NOTE)}</p>"
    )
    return note + body


def figure_bundle(
    fig: Any,
    *,
    static: bool | None = None,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """The notebook output of ``fig``: every representation the viewers need.

    Args:
        fig: a plotly figure, a figure dict, or a display object after ``plot()``.
        static: draw the PNG (default: when :func:`static_images_available`). ``False`` gives the
            no-Chromium bundle (inline plotly.js and the note).
        width: PNG width in CSS pixels (default: the figure's layout width, else 700).
        height: PNG height in CSS pixels (default: the figure's layout height, else 500).
        scale: PNG pixel density.

    Returns:
        A mime bundle: ``application/vnd.plotly.v1+json`` and ``text/plain`` always, plus
        ``image/png`` (base64) with a Chromium, else ``text/html``.
    """
    inner = getattr(fig, "figure_", None)
    fig = inner if inner is not None else fig
    if isinstance(fig, dict):
        import plotly.graph_objects as go

        fig = go.Figure(fig)
    title = fig.layout.title.text if fig.layout.title.text else "plotly figure"
    bundle: dict[str, Any] = {
        PLOTLY_MIMETYPE: json.loads(pio.to_json(fig, validate=False)),
        "text/plain": f"<Figure: {title}>",
    }
    if static is None:
        static = static_images_available()
    if static:
        png = _png(fig, width, height, scale)
        bundle["image/png"] = base64.b64encode(png).decode("ascii")
    else:
        bundle["text/html"] = _inline_html(fig)
    return bundle


class _BundleRenderer(MimetypeRenderer):
    """plotly renderer returning :func:`figure_bundle` (registered as ``"probekit"``)."""

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
        return figure_bundle(fig_dict)


def use_notebook_renderer() -> bool:
    """Make every plotly figure shown in this session use :func:`figure_bundle`.

    Registers the plotly renderer ``"probekit"`` and makes it the default, so a bare ``fig`` at
    the end of a cell renders in JupyterLab, VS Code, nbconvert HTML and GitHub alike.

    Returns:
        Whether static PNGs are drawn (False: no Chromium, and a note says so once).
    """
    pio.renderers[RENDERER_NAME] = _BundleRenderer()
    pio.renderers.default = RENDERER_NAME
    available = static_images_available()
    if not available:
        print(_SETUP_NOTE)
    return available
