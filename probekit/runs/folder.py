"""The run folder: where each artefact of a run lives, written and read back.

::

    RUN/
      config.json            the resolved RunConfig
      cache/                 the feature cache (reused when it is already complete)
      split.json             train / test sample positions (seeded; stratified for classification)
      probes/<head>/         model.safetensors + config.json for every head
      metrics.json, metrics.csv, per_class.csv (classification)
      tuned-lens/            tuned-lens.safetensors + tuned-lens.json (tuned_lens runs)
      attribution/<head>.safetensors + attribution.json
      figures/*.html (+ .png where a Chromium is found)
      report.html
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .config import RunConfig

__all__ = [
    "cache_targets",
    "read_config",
    "read_metrics",
    "read_split",
    "read_targets",
    "targets_path",
    "write_config",
    "write_split",
    "write_targets",
]


def read_config(run_dir: str | Path) -> RunConfig:
    """The :class:`RunConfig` saved in a run folder."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a probekit run folder (no config.json)")
    return RunConfig.from_dict(json.loads(path.read_text()))


def write_config(cfg: RunConfig, run_dir: str | Path | None = None) -> Path:
    """Write ``config.json`` into ``run_dir`` (default ``cfg.run_dir``); returns the folder."""
    folder = Path(run_dir) if run_dir is not None else cfg.run_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return folder


def write_split(
    run_dir: Path, train: Sequence[int], test: Sequence[int], seed: int, test_size: float
) -> None:
    (run_dir / "split.json").write_text(
        json.dumps(
            {
                "train": [int(i) for i in train],
                "test": [int(i) for i in test],
                "seed": seed,
                "test_size": test_size,
            }
        )
    )


def read_split(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "split.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no split.json: run `probekit fit` first")
    return json.loads(path.read_text())


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no metrics.json: run `probekit fit` first")
    return json.loads(path.read_text())


def targets_path(cache_dir: str | Path) -> Path:
    """Where a regression run keeps its targets: ``CACHE/targets.json`` (the cache's labels are
    class indices)."""
    return Path(cache_dir) / "targets.json"


def write_targets(cache_dir: str | Path, targets: Any, name: str | None, fingerprint: str) -> Path:
    """Write a dataset's continuous targets (by dataset position) beside its feature cache.

    Raises:
        DataError: the dataset holds no regression targets (not loaded with ``target=
            "regression"``).
    """
    if targets is None:
        raise DataError("the dataset holds no regression targets; load it with task regression")
    path = targets_path(cache_dir)
    path.write_text(
        json.dumps(
            {
                "name": name,
                "dataset_fingerprint": fingerprint,
                "targets": [float(t) for t in targets],
            }
        )
    )
    return path


def read_targets(cache_dir: str | Path, fingerprint: str) -> tuple[list[float], str]:
    """The targets by dataset position and their name, checked against the cache's dataset."""
    path = targets_path(cache_dir)
    if not path.is_file():
        raise ConfigError(
            f"{cache_dir} holds no regression targets ({path.name}); extract it "
            "with --task regression"
        )
    saved = json.loads(path.read_text())
    if saved.get("dataset_fingerprint") != fingerprint:
        raise ConfigError(
            f"{path} belongs to another dataset than the cache {cache_dir}; "
            "extract again with --task regression"
        )
    return saved["targets"], str(saved.get("name", "target"))


def cache_targets(cache: Any, cache_dir: str | Path) -> tuple[Any, str]:
    """The cache's samples' regression targets ``(N,)`` float64 (by ``cache.index``) and their
    name."""
    import numpy as np

    targets, name = read_targets(cache_dir, cache.manifest["dataset"]["fingerprint"])
    return np.asarray(targets, dtype=np.float64)[np.asarray(cache.index)], name
