"""The run's optional measures beyond the probes' accuracy, as :func:`probekit.pipeline.fit_stage`
writes them into ``metrics.json``:

* ``control: true``: the linear probe's control task (Hewitt & Liang, 2019): per layer, the
  control probe's test accuracy on the control labels of the test samples, and selectivity =
  task accuracy - control accuracy, with a paired 95% bootstrap interval.
* ``mdl: true``: the online code length per layer on the train split (Voita & Titov, 2020), as
  :func:`probekit.mdl` computes it.
* always: the within-model linear CKA between the layers (Kornblith et al., 2019), in
  ``RUN/similarity/``; with ``compare_random`` also the trained-vs-random-init CKA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["control_keys_of", "control_rows", "mdl_table", "write_cka"]


def control_keys_of(cache: Any, cfg: Any) -> np.ndarray:
    """One sample key (type) per cached sample: the texts of a text cache; for image data, the
    content hashes of the images of the run's dataset (loaded again, as the extraction did).

    Raises:
        ConfigError: image data whose dataset cannot be loaded again (a cache fitted alone).
    """
    from ..estimator.control import sample_keys

    if getattr(cache, "texts", None) is not None:
        return np.asarray(sample_keys(cache), dtype=object)
    from ..data import load_data

    try:
        data = load_data(cfg.data, seed=cfg.seed, **cfg.stage_options("data"))
    except (DataError, ConfigError) as err:
        raise ConfigError(f"control needs the images of {cfg.data!r} to hash them: {err}") from None
    if len(data) != len(cache):
        raise ConfigError(f"control: {cfg.data!r} has {len(data)} samples, the cache {len(cache)}")
    return np.asarray(sample_keys(data), dtype=object)


def control_rows(
    clf: Any, X_test: Any, y_test: np.ndarray, keys_test: np.ndarray, idx: np.ndarray
) -> list[dict[str, Any]]:
    """Per layer of a fitted ``ProbeClassifier(head="linear", control=True)``: control accuracy
    on the test samples' control labels (with its 95% interval) and selectivity (paired interval).

    Args:
        clf: the fitted task probe (its ``control_estimator_`` is the control probe).
        X_test: the test features. y_test: ``(N,)`` task labels. keys_test: ``(N,)`` keys.
        idx: ``(R, N)`` bootstrap resamples of the test positions
            (:func:`probekit.analysis.stats.bootstrap_indices`).

    Returns:
        ``L`` dicts: control_accuracy, control_accuracy_ci, selectivity, selectivity_ci.
    """
    from ..analysis.stats import paired_mean_difference
    from ..estimator.control import control_task_labels

    y_ctl = control_task_labels(clf, list(keys_test))
    task_ok = clf.predict_layers(X_test) == np.asarray(y_test)[:, None]  # (N, L)
    ctl_ok = clf.control_estimator_.predict_layers(X_test) == y_ctl[:, None]
    zeros = np.zeros(len(y_ctl))
    rows = []
    for layer in range(task_ok.shape[1]):
        t, c = task_ok[:, layer].astype(float), ctl_ok[:, layer].astype(float)
        rows.append(
            {
                "control_accuracy": float(c.mean()),
                "control_accuracy_ci": paired_mean_difference(c, zeros, idx),
                "selectivity": float(t.mean() - c.mean()),
                "selectivity_ci": paired_mean_difference(t, c, idx),
            }
        )
    return rows


def mdl_table(
    X_train: Any,
    y_train: np.ndarray,
    layer_names: list[str],
    tokens: int,
    seed: int,
    device: Any = None,
) -> dict[str, Any]:
    """:func:`probekit.mdl` per layer (linear probes) of ``(N, L, P, D)`` (or flat
    ``(N, L * P, D)`` layer-major) features; a layer's ``P`` pooled vectors are concatenated.
    Returns ``MDLResult.to_dict()``."""
    from ..analysis.mdl import mdl

    n = X_train.shape[0]
    x = X_train.reshape(n, len(layer_names), tokens * X_train.shape[-1])
    result = mdl(x, y_train, head="linear", seed=seed, device=device)
    result.layers = [str(name) for name in layer_names]
    return result.to_dict()


CKA_MAX_WORK = 1e13
"""Largest ``N x features_a x features_b`` a run computes its CKA map for (about 100 s in float64
on a 2-core CPU); above it :func:`write_cka` warns and records why it skipped the map."""


def write_cka(
    run_dir: Path,
    cache: Any,
    other: Any = None,
    name: str = "within",
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """Linear CKA between the cache's layers (or between ``cache`` and ``other``'s layers) over
    all samples, written to ``RUN/similarity/<name>/`` (CSV + safetensors).

    Args:
        memory_budget: the fit's memory budget in bytes: half of it (at most 1 GiB) for the
            cross-product accumulators of a pass, the other half for a batch's float64 copies
            (about 36 bytes per feature and row); ``None``: :func:`similarity`'s defaults.

    Returns:
        ``{"method", "file", "layers_a", "layers_b"}`` for ``metrics.json``, or
        ``{"method", "skipped"}`` when the map would cost more than :data:`CKA_MAX_WORK`.
    """
    import warnings

    from ..analysis.similarity import similarity
    from .compare import write_similarity

    def features(c: Any) -> int:  # what similarity() compares: cls if recorded, else all
        return sum(c.dims) * (1 if "cls" in c.poolings else len(c.poolings))

    work = (
        len(cache) * features(cache) * (features(other) if other is not None else features(cache))
    )
    if work > CKA_MAX_WORK:
        reason = (
            f"linear CKA over every layer pair of all {len(cache)} samples is "
            f"{work:.1e} multiply-adds (over {CKA_MAX_WORK:.0e}: minutes to hours); run "
            "`probekit compare` (or probekit.similarity) on chosen layers for it"
        )
        warnings.warn(f"{name} layer similarity skipped: {reason}", stacklevel=2)
        return {"method": "cka", "skipped": reason}
    opts: dict[str, Any] = {}
    if memory_budget is not None:
        width = features(cache) + (features(other) if other is not None else 0)
        opts = {
            "memory_budget": max(1, min(1 << 30, memory_budget // 2)),
            "batch_size": int(max(64, min(4096, memory_budget // 2 // (36 * width)))),
        }
    matrix, names_a, names_b = similarity(cache, other, "cka", return_names=True, **opts)
    out = run_dir / "similarity" / name
    write_similarity(matrix, names_a, names_b, out, "cka", heatmap=False)
    return {
        "method": "cka",
        "file": str((out / "similarity-cka.safetensors").relative_to(run_dir)),
        "layers_a": names_a,
        "layers_b": names_b,
    }
