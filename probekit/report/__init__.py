"""The report of a run folder: its figures (:mod:`~probekit.report.html`), the regression and
science sections, and the attribution arrays read in chunks (:mod:`~probekit.report.arrays`)."""

from __future__ import annotations

from .._utils.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "Figure": "html",
        "build_figures": "html",
        "write_figures": "html",
        "write_report": "html",
    },
)
