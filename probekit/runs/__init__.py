"""Runs: :class:`RunConfig` (the one definition of every option: config keys, CLI flags and
:func:`probekit.run` keywords), the run folder, and the stages that fill it.

Modules: :mod:`~probekit.runs.config`, :mod:`~probekit.runs.folder` (where each artefact lives),
:mod:`~probekit.runs.extract` (validation and the cache), :mod:`~probekit.runs.fit` (every head,
scored), :mod:`~probekit.runs.attribute`, :mod:`~probekit.runs.science` (control task, MDL, CKA),
:mod:`~probekit.runs.compare`, :mod:`~probekit.runs.summary` and :mod:`~probekit.runs.tables`
(metrics.csv). The whole flow, report included, is :func:`probekit.run`.

Names load on first use: the CLI builds its parser from :mod:`~probekit.runs.config` alone.
"""

from __future__ import annotations

from .._utils.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "DEFAULT_PROBES": "config",
        "DEFAULT_RUNS": "config",
        "RunConfig": "config",
        "load_config": "config",
        "read_config": "folder",
        "read_metrics": "folder",
        "attribute_stage": "attribute",
        "extract_stage": "extract",
        "validate_run": "extract",
        "fit_stage": "fit",
        "summary_table": "summary",
    },
)
