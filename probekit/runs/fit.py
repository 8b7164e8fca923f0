"""The whole flow, extract -> fit -> attribute -> report, from a config or the CLI.

``probekit run [CONFIG]`` and :func:`run` make identical run folders (the layout and the run
options live in :mod:`probekit.runs`). A config file (YAML or TOML) holds exactly the CLI's
options, either for one run or as ``runs: [{...}, {...}]``. Without a config,
:data:`~probekit.runs.DEFAULT_RUNS` run offline on bundled models and data.

Every run configuration is checked (heads, head parameters, layers, pooling spelling) before
any model is loaded or any feature extracted (:func:`validate_run`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.memory import default_budget, parse_size
from ..errors import DataError
from .config import (
    RunConfig,
)
from .folder import cache_targets as _cache_targets
from .folder import write_metrics, write_split

__all__ = ["bootstrap_ci", "fit_regression_stage", "fit_stage", "paired_comparison"]


# ------------------------------------------------------------------------------------ stages


def _split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, test)`` positions, sorted: the same split as the estimators'
    validation split (:func:`probekit.train.stratified_split`), so ``round(test_size * n_c)``
    samples of every class ``c`` with two or more samples go to test."""
    from ..train.metrics import stratified_split

    return stratified_split(labels, test_size, seed)


def bootstrap_ci(
    y_true: np.ndarray, y_pred: np.ndarray, metric: Any, n: int, seed: int
) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``metric`` over test samples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)))
    values = np.array([metric(y_true[i], y_pred[i]) for i in idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _scores(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    from ..analysis.stats import bootstrap_interval  # the intervals of bootstrap_ci, vectorised
    from ..train.metrics import accuracy, balanced_accuracy

    return {
        "accuracy": accuracy(y, pred),
        "accuracy_ci": bootstrap_interval(y, pred, "accuracy", n_boot, seed),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "balanced_accuracy_ci": bootstrap_interval(y, pred, "balanced_accuracy", n_boot, seed),
    }


def paired_comparison(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int, seed: int
) -> dict[str, Any]:
    """Balanced accuracy of A minus B, paired over the same bootstrap resamples of the test samples.

    Resamples are ``np.random.default_rng(seed).integers(0, N, size=(n, N))``; both classifiers
    are scored on each, as scikit-learn's ``balanced_accuracy_score`` would (mean recall over the
    classes present in the resample); see :func:`probekit._bootstrap.paired_bootstrap`.

    Returns:
        ``difference`` (on the test samples themselves), ``ci`` (95% percentile interval of the
        resampled differences) and ``p_le0`` (fraction of resamples where A - B <= 0).
    """
    from ..analysis.stats import paired_bootstrap

    res = paired_bootstrap(y, pred_a, pred_b, n_resamples=n, seed=seed)
    return {"difference": res.difference, "ci": [res.lo, res.hi], "p_le0": res.p_not_better}


def _load_features(cache: Any) -> Any:
    """``(N, L * P, D)`` with every cached pooling as a token of its layer."""
    return cache.load(pooling=cache.poolings)


def fit_stage(
    cache: Any, cfg: RunConfig, progress: bool = True, random_cache: Any = None
) -> dict[str, Any]:
    """Train every head of ``cfg.probes`` on the train split; score them on the test split.

    With ``cfg.control`` the linear probe also fits a control task (per-layer control accuracy
    and selectivity); with ``cfg.mdl`` the online code length per layer is added; the
    within-model CKA is always written to ``RUN/similarity/``. With ``random_cache`` (the
    random-init model's cache, ``compare_random``) the same heads are trained and scored on it,
    on the same split, under ``metrics["random_init"]``.

    Writes ``split.json``, ``probes/<head>/``, ``metrics.json`` and ``metrics.csv``. When the
    ``linear`` head is among the probes, every head also gets ``paired``: its balanced accuracy
    minus that of the last layer's linear probe (``vs_last_layer``) and of the single layer chosen
    on a validation split of the train samples (``vs_best_layer``), by :func:`paired_comparison`.
    """

    from ..estimator.inputs import check_finite
    from .science import control_keys_of, mdl_table, write_cka

    if cfg.task == "regression":
        return fit_regression_stage(cache, cfg, progress)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(cache.labels)
    if np.unique(labels).size < 2:
        raise DataError("the cache holds a single class; probes need at least two")
    keys = control_keys_of(cache, cfg) if cfg.control else None  # before any training
    budget = parse_size(cfg.memory_budget) if cfg.memory_budget else default_budget()
    n_bytes = len(cache) * len(cache.layer_names) * len(cache.poolings) * max(cache.dims) * 4
    # Out of core (3 copies of the features would not fit): heads read their rows from the
    # cache's train / test subsets; NaN and infinity are caught by the fit's statistics pass.
    X = None if 3 * n_bytes > budget and not (cfg.mdl or cfg.control) else _load_features(cache)
    if X is not None:
        check_finite(X, "the cache")
    train, test = _split(labels, cfg.test_size, cfg.seed)
    write_split(run_dir, train.tolist(), test.tolist(), cfg.seed, cfg.test_size)
    metrics: dict[str, Any] = {
        "model": cache.manifest["model"].get("id"),
        "data": cache.manifest["dataset"]["name"],
        "n_train": int(train.size),
        "n_test": int(test.size),
        "label_names": list(cache.label_names),
        "layer_names": list(cache.layer_names),
        "poolings": list(cache.poolings),
        "heads": {},
    }
    metrics["heads"], baselines = _fit_heads(
        cache, X, labels, train, test, cfg, progress, run_dir / "probes", keys, budget
    )
    if baselines:
        metrics["baselines"] = baselines
    if cfg.mdl:
        metrics["mdl"] = mdl_table(
            X[train],
            labels[train],
            list(cache.layer_names),
            len(cache.poolings),
            cfg.seed,
            cfg.device,
        )
    metrics["similarity"] = write_cka(run_dir, cache, memory_budget=budget)
    if random_cache is not None:
        if not np.array_equal(np.asarray(random_cache.labels), labels):
            raise DataError("the random-init cache holds other samples than the run's cache")
        Xr = _load_features(random_cache)
        metrics["random_init"] = {
            "model": random_cache.manifest["model"].get("id"),
            "seed": cfg.init_seed or 0,
            "cache": str(cfg.random_cache_dir),
            "fingerprint": random_cache.manifest.get("fingerprint"),
            "heads": _fit_heads(random_cache, Xr, labels, train, test, cfg, progress, None, None)[
                0
            ],
            "similarity_to_trained": write_cka(
                run_dir, cache, random_cache, "trained-vs-random", memory_budget=budget
            ),
        }
    write_metrics(metrics, run_dir)
    return metrics


def _fit_heads(
    cache: Any,
    X: Any,
    labels: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    cfg: RunConfig,
    progress: bool,
    save_dir: Path | None,
    keys: np.ndarray | None,
    budget: int | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fit every head on ``X[train]``, score it on ``X[test]``; save it under ``save_dir``.

    Returns:
        ``(heads, baselines)``: every head's entry of ``metrics["heads"]`` (in ``cfg.probes``
        order), and the layers of the two paired-comparison baselines (empty without
        ``linear``).
    """
    from ..cache import cache_subset
    from ..estimator import ProbeClassifier
    from .science import control_rows

    X_train = X[train] if X is not None else cache_subset(cache, train)
    X_test = X[test] if X is not None else cache_subset(cache, test)

    heads: dict[str, Any] = {}
    tokens = len(cache.poolings)
    preds: dict[str, np.ndarray] = {}
    baseline: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    # the per-layer linear probes come first: every head is compared with two of them
    for head in sorted(cfg.probes, key=lambda h: h != "linear"):
        t0 = time.perf_counter()
        params = {
            "tokens_per_layer": tokens,
            "random_state": cfg.seed,
            "device": cfg.device,
            "verbose": progress,
            "memory_budget": budget,
            **cfg.probe_params.get(head, {}),
        }
        if X is None:
            params["pooling"] = list(cache.poolings)
        control = keys is not None and head == "linear"
        clf = ProbeClassifier(head=head, control=control, **params)
        clf.fit(
            X_train,
            labels[train],
            layer_names=list(cache.layer_names),
            sample_keys=list(keys[train]) if control else None,
        )
        seconds = time.perf_counter() - t0
        if save_dir is not None:
            clf.save(save_dir / head)
        pred = clf.predict(X_test)
        preds[head] = pred
        entry = {
            "fit_seconds": round(seconds, 2),
            **_scores(labels[test], pred, cfg.bootstrap, cfg.seed),
        }
        if head == "linear":
            layer_pred = clf.predict_layers(X_test)  # (N, L)
            entry["per_layer"] = [
                {"layer": name, **_scores(labels[test], layer_pred[:, l], cfg.bootstrap, cfg.seed)}
                for l, name in enumerate(cache.layer_names)
            ]
            entry["selected_layer"] = cache.layer_names[int(clf.selected_layer_)]
            if control:
                assert keys is not None
                rows = control_rows(clf, X_test, labels[test], keys[test], cfg.bootstrap, cfg.seed)
                for row, extra in zip(entry["per_layer"], rows, strict=True):
                    row.update(extra)
                entry["control"] = {
                    "seed": int(clf.control_seed_),
                    "validation_accuracy": np.asarray(clf.layer_scores_).tolist(),
                    "validation_control_accuracy": clf.control_scores_.tolist(),
                    "validation_selectivity": clf.selectivity_.tolist(),
                }
            baseline = {
                "last_layer": layer_pred[:, -1],
                "best_layer": layer_pred[:, int(clf.selected_layer_)],
            }
            names = {"last_layer": cache.layer_names[-1], "best_layer": entry["selected_layer"]}
        heads[head] = entry
    for head, pred in preds.items():  # paired: the same resampled test samples score both
        heads[head]["paired"] = {
            f"vs_{name}": paired_comparison(labels[test], pred, ref, cfg.bootstrap, cfg.seed)
            for name, ref in baseline.items()
        }
    return {h: heads[h] for h in cfg.probes}, names


# ------------------------------------------------------------------------------------ regression


def _regression_scores(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    from sklearn.metrics import mean_squared_error, r2_score

    from ..estimator.regressor import spearman

    return {
        "r2": float(r2_score(y, pred)),
        "r2_ci": bootstrap_ci(y, pred, r2_score, n_boot, seed),
        "spearman": spearman(y, pred),
        "spearman_ci": bootstrap_ci(y, pred, spearman, n_boot, seed),
        "mse": float(mean_squared_error(y, pred)),
    }


def fit_regression_stage(cache: Any, cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """:func:`fit_stage` for ``task="regression"``: every head as a
    :class:`~probekit.ProbeRegressor` on a random train split; R², Spearman and MSE on the test
    split with bootstrap intervals (per layer for the linear probes)."""
    from sklearn.model_selection import train_test_split

    from ..estimator import ProbeRegressor
    from ..estimator.inputs import check_finite

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    y, target_name = _cache_targets(cache, cfg.cache_dir)
    if np.ptp(y) == 0:
        raise DataError("the cache's regression targets are constant; probes need them to vary")
    X = _load_features(cache)
    check_finite(X, "the cache")
    train, test = train_test_split(
        np.arange(len(y)), test_size=cfg.test_size, random_state=cfg.seed
    )
    train, test = np.sort(train), np.sort(test)
    write_split(run_dir, train.tolist(), test.tolist(), cfg.seed, cfg.test_size)
    metrics: dict[str, Any] = {
        "task": "regression",
        "target_name": target_name,
        "model": cache.manifest["model"].get("id"),
        "data": cache.manifest["dataset"]["name"],
        "n_train": int(train.size),
        "n_test": int(test.size),
        "label_names": [target_name],
        "layer_names": list(cache.layer_names),
        "poolings": list(cache.poolings),
        "heads": {},
    }
    for head in cfg.probes:
        t0 = time.perf_counter()
        params = {
            "tokens_per_layer": len(cache.poolings),
            "random_state": cfg.seed,
            "device": cfg.device,
            "verbose": progress,
            **cfg.probe_params.get(head, {}),
        }
        reg = ProbeRegressor(head=head, **params)
        reg.fit(X[train], y[train], layer_names=list(cache.layer_names))
        seconds = time.perf_counter() - t0
        reg.save(run_dir / "probes" / head)
        pred = reg.predict(X[test])
        entry = {
            "fit_seconds": round(seconds, 2),
            **_regression_scores(y[test], pred, cfg.bootstrap, cfg.seed),
        }
        if head == "linear":
            layer_pred = reg.predict_layers(X[test])  # (N, L)
            entry["per_layer"] = [
                {
                    "layer": name,
                    **_regression_scores(y[test], layer_pred[:, j], cfg.bootstrap, cfg.seed),
                }
                for j, name in enumerate(cache.layer_names)
            ]
            entry["selected_layer"] = cache.layer_names[int(reg.selected_layer_)]
        metrics["heads"][head] = entry
    write_metrics(metrics, run_dir)
    return metrics
