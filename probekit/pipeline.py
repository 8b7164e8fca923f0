"""The whole flow, extract -> fit -> attribute -> report, from a config or the CLI.

``probekit run [CONFIG]`` and :func:`run` make identical run folders (the layout and the run
options live in :mod:`probekit.runs`). A config file (YAML or TOML) holds exactly the CLI's
options, either for one run or as ``runs: [{...}, {...}]``. Without a config,
:data:`~probekit.runs.DEFAULT_RUNS` run offline on bundled models and data.

Every run configuration is checked (heads, head parameters, layers, pooling spelling) before
any model is loaded or any feature extracted (:func:`validate_run`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._placement import parse_quantization
from .errors import ConfigError, DataError, ModelError
from .memory import default_budget, parse_size
from .runs import (
    CPU_PROBE_PARAMS,
    DEFAULT_PROBES,
    DEFAULT_RUN_OPTIONS,
    DEFAULT_RUNS,
    RunConfig,
    load_config,
    load_config_dicts,
    read_config,
    run_name,
    write_config,
    write_metrics,
    write_split,
    write_targets,
)
from .runs import cache_targets as _cache_targets

__all__ = ["CPU_PROBE_PARAMS", "DEFAULT_PROBES", "DEFAULT_RUNS", "RunConfig", "attribute_stage",
           "extract_stage", "fit_regression_stage", "fit_stage", "load_config", "resolve_configs", "run", "run_one",
           "paired_comparison", "validate_run"]

_read_config = read_config  # its old name here


def validate_run(cfg: RunConfig) -> RunConfig:
    """Check a whole run configuration before any work: the fields (at construction), the heads,
    and every head's parameters.

    Raises:
        ConfigError: an unknown head, a parameter a head does not take or a value outside its
            range, naming the head, the parameter and the valid choices.
        ModelError: a ``checkpoint`` file that does not exist; ``quantization`` without
            bitsandbytes.
    """
    from .estimator import ProbeClassifier, ProbeRegressor
    from .probes import list_probes

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
        raise ConfigError(f"probe_params names unknown head {stray[0]!r}; known: {', '.join(known)}")
    for head in cfg.probes:
        params = cfg.probe_params.get(head, {})
        try:
            estimator(head=head, **params).validate()
        except TypeError as err:  # an unknown keyword of the estimator
            raise ConfigError(f"probe_params for {head!r}: {err}") from None
        except ConfigError as err:
            raise ConfigError(f"probe_params for {head!r}: {err}") from None
    return cfg


# ------------------------------------------------------------------------------------ stages


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
    from .data import load_data
    from .extract import extract
    from .models import load_model

    data = load_data(cfg.data, seed=cfg.seed, **cfg.stage_options("data"))
    if cfg.task == "regression":
        _check_targets(data, cfg.data)
    elif len(data.label_names) < 2 or len(np.unique(data.labels)) < 2:
        raise DataError(f"{cfg.data} has a single class; probes need at least two")
    options = cfg.stage_options("model")
    folder = cfg.cache_dir
    if random_init:
        options.update(weights="random", seed=cfg.init_seed or 0)
        folder = cfg.random_cache_dir
    model = load_model(cfg.model, **options)
    cache = extract(model, data, folder, progress=progress, **cfg.stage_options("extract"))
    if cfg.task == "regression":
        write_targets(folder, data.targets, data.target_name, data.fingerprint)
    return cache


def _split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(train, test)`` positions, sorted: the same split as the estimators'
    validation split (:func:`probekit.train.stratified_split`), so ``round(test_size * n_c)``
    samples of every class ``c`` with two or more samples go to test."""
    from .train.metrics import stratified_split

    return stratified_split(labels, test_size, seed)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, metric: Any, n: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``metric`` over test samples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)))
    values = np.array([metric(y_true[i], y_pred[i]) for i in idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _scores(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    from ._bootstrap import bootstrap_interval  # the intervals of bootstrap_ci, vectorised
    from .train.metrics import accuracy, balanced_accuracy

    return {
        "accuracy": accuracy(y, pred),
        "accuracy_ci": bootstrap_interval(y, pred, "accuracy", n_boot, seed),
        "balanced_accuracy": balanced_accuracy(y, pred),
        "balanced_accuracy_ci": bootstrap_interval(y, pred, "balanced_accuracy", n_boot, seed),
    }


def paired_comparison(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int,
                      seed: int) -> dict[str, Any]:
    """Balanced accuracy of A minus B, paired over the same bootstrap resamples of the test samples.

    Resamples are ``np.random.default_rng(seed).integers(0, N, size=(n, N))``; both classifiers
    are scored on each, as scikit-learn's ``balanced_accuracy_score`` would (mean recall over the
    classes present in the resample); see :func:`probekit._bootstrap.paired_bootstrap`.

    Returns:
        ``difference`` (on the test samples themselves), ``ci`` (95% percentile interval of the
        resampled differences) and ``p_le0`` (fraction of resamples where A - B <= 0).
    """
    from ._bootstrap import paired_bootstrap

    res = paired_bootstrap(y, pred_a, pred_b, n_resamples=n, seed=seed)
    return {"difference": res.difference, "ci": [res.lo, res.hi], "p_le0": res.p_not_better}


def _load_features(cache: Any) -> Any:
    """``(N, L * P, D)`` with every cached pooling as a token of its layer."""
    return cache.load(pooling=cache.poolings)


def fit_stage(cache: Any, cfg: RunConfig, progress: bool = True,
              random_cache: Any = None) -> dict[str, Any]:
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

    from .analyses import control_keys_of, mdl_table, write_cka
    from .estimator.inputs import check_finite

    if cfg.task == "regression":
        return fit_regression_stage(cache, cfg, progress)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(cache.labels)
    if np.unique(labels).size < 2:
        raise DataError("the cache holds a single class; probes need at least two")
    keys = control_keys_of(cache, cfg) if cfg.control else None  # before any training
    budget = parse_size(cfg.fit_max_memory) if cfg.fit_max_memory else default_budget()
    n_bytes = len(cache) * len(cache.layer_names) * len(cache.poolings) * max(cache.dims) * 4
    # Out of core (3 copies of the features would not fit): heads read their rows from the
    # cache's train / test subsets; NaN and infinity are caught by the fit's statistics pass.
    X = None if 3 * n_bytes > budget and not (cfg.mdl or cfg.control) else _load_features(cache)
    if X is not None:
        check_finite(X, "the cache")
    train, test = _split(labels, cfg.test_size, cfg.seed)
    write_split(run_dir, train.tolist(), test.tolist(), cfg.seed, cfg.test_size)
    metrics: dict[str, Any] = {
        "model": cache.manifest["model"].get("id"), "data": cache.manifest["dataset"]["name"],
        "n_train": int(train.size), "n_test": int(test.size), "label_names": list(cache.label_names),
        "layer_names": list(cache.layer_names), "poolings": list(cache.poolings), "heads": {},
    }
    metrics["heads"], baselines = _fit_heads(cache, X, labels, train, test, cfg, progress,
                                             run_dir / "probes", keys, budget)
    if baselines:
        metrics["baselines"] = baselines
    if cfg.mdl:
        metrics["mdl"] = mdl_table(X[train], labels[train], list(cache.layer_names),
                                   len(cache.poolings), cfg.seed, cfg.device)
    metrics["similarity"] = write_cka(run_dir, cache, max_memory=budget)
    if random_cache is not None:
        if not np.array_equal(np.asarray(random_cache.labels), labels):
            raise DataError("the random-init cache holds other samples than the run's cache")
        Xr = _load_features(random_cache)
        metrics["random_init"] = {
            "model": random_cache.manifest["model"].get("id"), "seed": cfg.init_seed or 0,
            "cache": str(cfg.random_cache_dir),
            "fingerprint": random_cache.manifest.get("fingerprint"),
            "heads": _fit_heads(random_cache, Xr, labels, train, test, cfg, progress, None,
                                None)[0],
            "similarity_to_trained": write_cka(run_dir, cache, random_cache, "trained-vs-random",
                                               max_memory=budget),
        }
    write_metrics(metrics, run_dir)
    return metrics


def _fit_heads(cache: Any, X: Any, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
               cfg: RunConfig, progress: bool, save_dir: Path | None,
               keys: np.ndarray | None,
               budget: int | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Fit every head on ``X[train]``, score it on ``X[test]``; save it under ``save_dir``.

    Returns:
        ``(heads, baselines)``: every head's entry of ``metrics["heads"]`` (in ``cfg.probes``
        order), and the layers of the two paired-comparison baselines (empty without
        ``linear``).
    """
    from .analyses import control_rows
    from .estimator import ProbeClassifier, cache_subset

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
        params = {"tokens_per_layer": tokens, "random_state": cfg.seed, "device": cfg.device,
                  "verbose": progress, "max_memory": budget, **cfg.probe_params.get(head, {})}
        if X is None:
            params["pooling"] = list(cache.poolings)
        control = keys is not None and head == "linear"
        clf = ProbeClassifier(head=head, control=control, **params)
        clf.fit(X_train, labels[train], layer_names=list(cache.layer_names),
                sample_keys=list(keys[train]) if control else None)
        seconds = time.perf_counter() - t0
        if save_dir is not None:
            clf.save(save_dir / head)
        pred = clf.predict(X_test)
        preds[head] = pred
        entry = {"fit_seconds": round(seconds, 2), **_scores(labels[test], pred, cfg.bootstrap, cfg.seed)}
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
            baseline = {"last_layer": layer_pred[:, -1],
                        "best_layer": layer_pred[:, int(clf.selected_layer_)]}
            names = {"last_layer": cache.layer_names[-1], "best_layer": entry["selected_layer"]}
        heads[head] = entry
    for head, pred in preds.items():  # paired: the same resampled test samples score both
        heads[head]["paired"] = {
            f"vs_{name}": paired_comparison(labels[test], pred, ref, cfg.bootstrap, cfg.seed)
            for name, ref in baseline.items()
        }
    return {h: heads[h] for h in cfg.probes}, names


def attribute_stage(run_dir: str | Path, ablation: str | None = None, seed: int = 0,
                    max_memory: Any = None) -> dict[str, Any]:
    """Per-sample layer attribution of every saved head on the test split, within the run's
    memory budget: :func:`probekit.attribute_stage.attribute_stage` (imported when called, so
    that this module stays light)."""
    from .attribute_stage import attribute_stage as stage

    return stage(run_dir, ablation=ablation, seed=seed, max_memory=max_memory)


def run_one(cfg: RunConfig, progress: bool = True) -> Path:
    """Run one config end to end; returns the run folder."""
    from .report import write_figures, write_report

    validate_run(cfg)
    run_dir = write_config(cfg)
    cache = extract_stage(cfg, progress=progress)
    random_cache = extract_stage(cfg, progress, random_init=True) if cfg.compare_random else None
    fit_stage(cache, cfg, progress=progress, random_cache=random_cache)
    attribute_stage(run_dir, seed=cfg.seed)
    write_figures(run_dir, formats=cfg.figures)
    write_report(run_dir)
    return run_dir


def resolve_configs(config: str | Path | RunConfig | dict[str, Any] | Sequence[RunConfig] | None = None,
                    **options: Any) -> list[RunConfig]:
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


def run(config: str | Path | RunConfig | dict[str, Any] | Sequence[RunConfig] | None = None,
        progress: bool = True, **options: Any) -> list[Path]:
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


# ------------------------------------------------------------------------------------ regression


def _check_targets(data: Any, spec: str) -> None:
    targets = np.asarray(getattr(data, "targets", np.zeros(0)), dtype=np.float64)
    if targets.size < 2 or np.ptp(targets) == 0:
        raise DataError(f"{spec} has constant (or no) regression targets; probes need them to vary")


def _regression_scores(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    from sklearn.metrics import mean_squared_error, r2_score

    from .estimator.regressor import spearman

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

    from .estimator import ProbeRegressor
    from .estimator.inputs import check_finite

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    y, target_name = _cache_targets(cache, cfg.cache_dir)
    if np.ptp(y) == 0:
        raise DataError("the cache's regression targets are constant; probes need them to vary")
    X = _load_features(cache)
    check_finite(X, "the cache")
    train, test = train_test_split(np.arange(len(y)), test_size=cfg.test_size, random_state=cfg.seed)
    train, test = np.sort(train), np.sort(test)
    write_split(run_dir, train.tolist(), test.tolist(), cfg.seed, cfg.test_size)
    metrics: dict[str, Any] = {
        "task": "regression", "target_name": target_name,
        "model": cache.manifest["model"].get("id"), "data": cache.manifest["dataset"]["name"],
        "n_train": int(train.size), "n_test": int(test.size), "label_names": [target_name],
        "layer_names": list(cache.layer_names), "poolings": list(cache.poolings), "heads": {},
    }
    for head in cfg.probes:
        t0 = time.perf_counter()
        params = {"tokens_per_layer": len(cache.poolings), "random_state": cfg.seed,
                  "device": cfg.device, "verbose": progress, **cfg.probe_params.get(head, {})}
        reg = ProbeRegressor(head=head, **params)
        reg.fit(X[train], y[train], layer_names=list(cache.layer_names))
        seconds = time.perf_counter() - t0
        reg.save(run_dir / "probes" / head)
        pred = reg.predict(X[test])
        entry = {"fit_seconds": round(seconds, 2),
                 **_regression_scores(y[test], pred, cfg.bootstrap, cfg.seed)}
        if head == "linear":
            layer_pred = reg.predict_layers(X[test])  # (N, L)
            entry["per_layer"] = [
                {"layer": name, **_regression_scores(y[test], layer_pred[:, j], cfg.bootstrap, cfg.seed)}
                for j, name in enumerate(cache.layer_names)
            ]
            entry["selected_layer"] = cache.layer_names[int(reg.selected_layer_)]
        metrics["heads"][head] = entry
    write_metrics(metrics, run_dir)
    return metrics

