"""The first steps of a run: the whole configuration checked, then the cache recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, ModelError
from ..models.placement import parse_quantization
from .config import RunConfig
from .folder import write_targets

__all__ = ["extract_stage", "validate_run"]


def validate_run(cfg: RunConfig) -> RunConfig:
    """Check a whole run configuration before any work: the fields (at construction), the heads,
    and every head's parameters.

    Raises:
        ConfigError: an unknown head, a parameter a head does not take or a value outside its
            range, naming the head, the parameter and the valid choices.
        ModelError: a ``checkpoint`` file that does not exist; ``quantization`` without
            bitsandbytes.
    """
    from ..estimator import ProbeClassifier, ProbeRegressor
    from ..probes import list_probes

    estimator = ProbeRegressor if cfg.task == "regression" else ProbeClassifier
    cfg.validate()
    if cfg.checkpoint is not None and not Path(cfg.checkpoint).is_file():  # before data loads
        raise ModelError(f"cannot load {cfg.model}: checkpoint {cfg.checkpoint} does not exist")
    parse_quantization(cfg.quantization)  # bitsandbytes is installed
    known = list_probes()
    unknown = [p for p in cfg.probes if p not in known]
    if unknown:
        raise ConfigError(f"unknown probe {unknown[0]!r}; known: {', '.join(known)}")
    stray = [h for h in cfg.probe_params if h not in known]
    if stray:
        raise ConfigError(
            f"probe_params names unknown head {stray[0]!r}; known: {', '.join(known)}"
        )
    for head in cfg.probes:
        params = cfg.probe_params.get(head, {})
        try:
            estimator(head=head, **params).validate()
        except TypeError as err:  # an unknown keyword of the estimator
            raise ConfigError(f"probe_params for {head!r}: {err}") from None
        except ConfigError as err:
            raise ConfigError(f"probe_params for {head!r}: {err}") from None
    return cfg


def extract_stage(cfg: RunConfig, progress: bool = True, random_init: bool = False) -> Any:
    """Record the run's cache in ``RUN/cache`` (resumed or reused when already there).

    Args:
        cfg: the run.
        progress: progress bars.
        random_init: record the architecture at a random init seeded with ``cfg.init_seed``
            (default 0) instead of the run's model; the random model goes to
            ``cfg.random_cache_dir`` (``compare_random``). Default: the run's model as configured
            (``cfg.random_init`` included), into ``cfg.cache_dir``.
    """
    from ..data import load_data
    from ..models.loading import load_model
    from ..recording.extraction import extract

    data = load_data(cfg.data, seed=cfg.seed, **cfg.stage_options("data"))
    if cfg.task == "regression":
        _check_targets(data, cfg.data)
    elif len(data.label_names) < 2 or len(np.unique(_labels_of(data, cfg.unit))) < 2:
        raise DataError(f"{cfg.data} has a single class; probes need at least two")
    options = cfg.stage_options("model")
    folder = cfg.cache_dir
    if random_init:
        options.update(weights="random", seed=cfg.init_seed or 0)
        folder = cfg.random_cache_dir
    model = load_model(cfg.model, **options)
    if not random_init:
        from .lens import check_lens_options

        check_lens_options(cfg, model, data.label_names)  # before the first forward
    cache = extract(model, data, folder, progress=progress, **cfg.stage_options("extract"))
    if cfg.task == "regression":
        write_targets(folder, data.targets, data.target_name, data.fingerprint)
    return cache


def _labels_of(data: Any, unit: str) -> np.ndarray:
    """The labels the rows will have: a word-level dataset's word labels (a span run: its span
    labels; ``-1``, unlabelled, left out) for a unit cache, else the per-sample labels (for word
    data only a stand-in)."""
    units = getattr(data, "units", None)
    if unit == "sample" or units is None:
        return np.asarray(data.labels)
    per_row = units.span_labels if unit == "span" else units.labels  # spans: their own tags
    labels = np.concatenate([np.asarray(lab) for lab in per_row or []] or [np.zeros(0)])
    return labels[labels >= 0]


def _check_targets(data: Any, spec: str) -> None:
    targets = np.zeros(0) if data.targets is None else np.asarray(data.targets, np.float64)
    if targets.size < 2 or np.ptp(targets) == 0:
        raise DataError(f"{spec} has constant (or no) regression targets; probes need them to vary")
