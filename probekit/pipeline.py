"""The whole flow, extract -> fit -> lenses -> attribute -> report, from a config or the CLI.

``probekit run [CONFIG]`` and :func:`run` make identical run folders (the options live in
:mod:`probekit.runs.config`, the folder's layout in :mod:`probekit.runs.folder`). A config file
(YAML or TOML) holds exactly the CLI's options, either for one run or as
``runs: [{...}, {...}]``. Without a config, :data:`~probekit.runs.config.DEFAULT_RUNS` run
offline on bundled models and data.

Every run configuration is checked (heads, head parameters, layers, pooling spelling) before
any model is loaded or any feature extracted (:func:`~probekit.runs.extract.validate_run`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .runs.attribute import attribute_stage
from .runs.config import DEFAULT_RUN_OPTIONS, RunConfig, load_config_dicts, run_name
from .runs.extract import extract_stage, validate_run
from .runs.fit import fit_stage
from .runs.folder import write_config
from .runs.lens import lens_stage

__all__ = ["resolve_configs", "run", "run_one"]


def run_one(cfg: RunConfig, progress: bool = True) -> Path:
    """Run one config end to end; returns the run folder."""
    from .report.html import write_figures, write_report

    validate_run(cfg)
    run_dir = write_config(cfg)
    cache = extract_stage(cfg, progress=progress)
    random_cache = extract_stage(cfg, progress, random_init=True) if cfg.compare_random else None
    fit_stage(cache, cfg, progress=progress, random_cache=random_cache)
    lens_stage(cache, cfg, progress=progress)  # label_words, tuned_lens
    attribute_stage(run_dir, seed=cfg.seed)
    write_figures(run_dir, formats=cfg.figures)
    write_report(run_dir)
    return run_dir


def resolve_configs(
    config: str | Path | RunConfig | dict[str, Any] | Sequence[RunConfig] | None = None,
    **options: Any,
) -> list[RunConfig]:
    """The run configurations :func:`run` would run (see there), each validated."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown run options {unknown}; known: {', '.join(sorted(known))}")
    if config is None:
        dicts = [dict(d) for d in DEFAULT_RUN_OPTIONS] if not options else [{}]
    elif isinstance(config, (str, Path)):
        dicts = load_config_dicts(config)
    elif isinstance(config, RunConfig):
        dicts = [_explicit(config)]
    elif isinstance(config, dict):
        dicts = [dict(config)]
    else:
        dicts = [_explicit(c) if isinstance(c, RunConfig) else dict(c) for c in config]
    configs = [RunConfig.from_dict({**d, **options}) for d in dicts]
    for cfg in configs:
        validate_run(cfg)
    return configs


def _explicit(cfg: RunConfig) -> dict[str, Any]:
    """A config's options, without the derived name when the name was derived (so that an
    override of ``model`` or ``data`` renames the run)."""
    values = cfg.to_dict()
    if values["name"] == run_name(cfg.model, cfg.data):
        values["name"] = None
    return values


def run(
    config: str | Path | RunConfig | dict[str, Any] | Sequence[RunConfig] | None = None,
    progress: bool = True,
    **options: Any,
) -> list[Path]:
    """Run the whole flow from Python, exactly as ``probekit run [CONFIG] [--OPTION ...]`` does.

    Args:
        config: a YAML/TOML path, a :class:`RunConfig`, a dict of its options, a list of
            configs, or None for the bundled defaults (:data:`DEFAULT_RUNS`; with ``options``,
            one run of the defaults with those options).
        progress: show progress bars.
        **options: any :class:`RunConfig` field (``model=``, ``probes=``, ``layers=``, ...), applied
            on top of every config, as the CLI's flags are.

    Returns:
        The run folders.

    Raises:
        ConfigError: any bad option, before any extraction starts.
    """
    configs = resolve_configs(config, **options)
    return [run_one(c, progress=progress) for c in configs]
