"""Write a plotly figure to HTML (always) or PNG / SVG / PDF (through kaleido and a Chrome).

HTML embeds plotly.js, so the file opens offline. Static images need kaleido >= 1, which drives a
Chrome or Chromium it finds on the machine (it no longer ships one). Where it looks, in order
(kaleido 1.x / choreographer 1.x):

1. a Chrome downloaded by ``kaleido_get_chrome`` / ``kaleido.get_chrome_sync()`` (choreographer's
   local copy);
2. the ``BROWSER_PATH`` environment variable, if set (the full path of the executable);
3. ``chrome``, ``google-chrome``, ``chromium``, ``chromium-browser``, Edge, Brave ... on ``PATH``;
4. typical install paths (``/usr/bin/chromium``, ``/usr/bin/google-chrome`` ...).

On Debian/Ubuntu, ``apt-get install chromium`` is enough; elsewhere set ``BROWSER_PATH``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

__all__ = ["ExportError", "export", "find_chrome"]

_STATIC = ("png", "svg", "pdf", "jpg", "jpeg", "webp")
_INSTALL_HINT = (
    "Install Chromium (e.g. `apt-get install chromium` on Debian/Ubuntu) or Chrome, or point "
    "BROWSER_PATH at a Chrome/Chromium executable; with internet access, `pip install kaleido` "
    "and then `kaleido_get_chrome` (or `kaleido.get_chrome_sync()` in Python) downloads one. "
    "HTML export (.html) always works without a browser."
)
_NAMES = ("chrome", "google-chrome", "google-chrome-stable", "chromium", "chromium-browser")


class ExportError(RuntimeError):
    """A figure could not be written (no kaleido, no Chrome/Chromium, unknown format)."""


def find_chrome() -> str | None:
    """The Chrome/Chromium kaleido would use, or None.

    Follows kaleido's own search (see the module docstring). ``BROWSER_PATH`` pointing at a
    missing file counts as not found.

    Returns:
        The executable's path, or None when kaleido would not find one.
    """
    try:
        from choreographer.browsers.chromium import Chromium

        found = Chromium.find_browser(skip_local=False)
        if found and Path(found).is_file():
            return str(found)
        return None
    except Exception:  # choreographer's layout changed: fall back to a plain search
        env = os.environ.get("BROWSER_PATH")
        if env:
            return env if Path(env).is_file() else None
        for name in _NAMES:
            if path := shutil.which(name):
                return path
        return None


def _figure(fig: Any) -> Any:
    """Accept a plotly figure or a display object with ``figure_``."""
    inner = getattr(fig, "figure_", None)
    if inner is not None:
        return inner
    if hasattr(fig, "write_html"):
        return fig
    raise TypeError(
        f"export() needs a plotly Figure or a probekit display after .plot(), got {type(fig).__name__}"
    )


def export(
    fig: Any,
    path: str | os.PathLike[str],
    width: int | None = None,
    height: int | None = None,
    scale: float = 1,
) -> Path:
    """Write ``fig`` to ``path``; the format comes from the suffix.

    Args:
        fig: a ``plotly.graph_objects.Figure`` or a display object whose ``plot()`` was called.
        path: ``.html`` (self-contained, plotly.js embedded: opens offline), or ``.png``, ``.svg``,
            ``.pdf``, ``.jpg``, ``.webp`` (through kaleido).
        width: width in CSS pixels (default: the figure's layout width, else plotly's 700).
        height: height in CSS pixels (default: the figure's layout height, else plotly's 500).
        scale: pixel density of raster images: a PNG is ``width * scale`` x ``height * scale``.

    Returns:
        The path written.

    Raises:
        ExportError: unknown suffix, kaleido missing, or no Chrome/Chromium found for a static
            format (the message says how to install one).
    """
    figure = _figure(fig)
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in ("html", "htm"):
        figure.write_html(
            str(path),
            include_plotlyjs=True,
            full_html=True,
            default_width=f"{width}px" if width else "100%",
            default_height=f"{height}px" if height else "100%",
        )
        return path
    if suffix not in _STATIC:
        raise ExportError(
            f"cannot export to {path.name!r}: use one of .html, "
            + ", ".join(f".{s}" for s in _STATIC)
        )
    try:
        import kaleido  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"writing .{suffix} needs kaleido>=1 (a dependency of probekit-layers): "
            f"`pip install 'kaleido>=1'`. {_INSTALL_HINT}"
        ) from err
    if find_chrome() is None:
        raise ExportError(f"no Chrome/Chromium found to write {path.name!r}. {_INSTALL_HINT}")
    fmt = "jpeg" if suffix == "jpg" else suffix
    try:
        with warnings.catch_warnings():
            # with a kaleido server running (probekit.viz.notebook starts one), kaleido warns that
            # per-call browser options are ignored: nothing to act on
            warnings.filterwarnings("ignore", message="The kopts argument is ignored")
            figure.write_image(str(path), format=fmt, width=width, height=height, scale=scale)
    except Exception as err:
        if "chrome" in str(err).lower() or "browser" in str(err).lower():
            raise ExportError(
                f"kaleido could not start Chrome/Chromium: {err}. {_INSTALL_HINT}"
            ) from err
        raise
    return path
