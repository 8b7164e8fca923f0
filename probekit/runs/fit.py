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
from .config import RunConfig
from .folder import write_split
from .tables import write_metrics
from .task import Task, get_task

__all__ = ["fit_stage", "memory_budget_of"]


# ------------------------------------------------------------------------------------ stages


def memory_budget_of(cfg: RunConfig) -> int:
    """The fit's memory budget in bytes: ``cfg.memory_budget``, default half the available RAM
    (the one place the fit stage reads that option)."""
    size = cfg.memory_budget
    return parse_size(size, "memory_budget") if size else default_budget()


def _load_features(cache: Any) -> Any:
    """Every cached pooling of every layer: ``(N, L, D)`` for one pooling, ``(N, L, P, D)``
    for several (the heads read ``P`` from the array)."""
    return cache.load(pooling=cache.poolings)


def test_resamples(cache: Any, test: np.ndarray, cfg: RunConfig) -> Any:
    """Every score's bootstrap resamples of a run's ``test`` rows: of the rows, or for a unit
    cache of the test inputs with all their rows (a cluster bootstrap); the same for the fit and
    the lens stage, so their intervals and paired comparisons share them."""
    from ..analysis.stats import bootstrap_indices

    groups = np.asarray(cache.samples)[test] if cache.unit != "sample" else None
    return bootstrap_indices(int(test.size), cfg.bootstrap, cfg.seed, groups)


def fit_stage(
    cache: Any, cfg: RunConfig, progress: bool = True, random_cache: Any = None
) -> dict[str, Any]:
    """Train every head of ``cfg.probes`` on the train split; score them on the test split.

    The run's task (:data:`probekit.runs.task.TASKS`, by ``cfg.task``) gives the targets, the
    split, the estimator and the scores (with 95% bootstrap intervals over one ``(R, N_test)``
    resample matrix shared by every head and layer); the linear probe is also scored per layer.

    Classification only (``Task.science`` and ``Task.compare``): with ``cfg.control`` the linear
    probe also fits a control task (per-layer control accuracy and selectivity); with ``cfg.mdl``
    the online code length per layer is added; the within-model CKA is written to
    ``RUN/similarity/``. With ``random_cache`` (the random-init model's cache,
    ``compare_random``) the same heads are trained and scored on it, on the same split, under
    ``metrics["random_init"]``. When the ``linear`` head is among the probes, every head gets
    ``paired``: its balanced accuracy minus that of the last layer's linear probe
    (``vs_last_layer``) and of the single layer chosen on a validation split of the train
    samples (``vs_best_layer``), scored on the same resamples. Binary classification: every
    head (and every layer of a per-layer head: ``linear``, ``diff-means``) also gets AUROC,
    AUPRC and recall at 1% FPR of its score, with intervals, and the paired entries the same
    differences. Word, token and span rows: every interval resamples test inputs, not rows
    (``metrics["bootstrap"]["by"] == "input"``). Classification
    (``Task.per_class``): the linear head's ``per_class`` recall of every class per layer (and
    ``per_class_support``), and the best head's test ``confusion`` counts
    (:mod:`probekit.runs.classes`).

    Writes ``split.json``, ``probes/<head>/``, ``metrics.json`` and ``metrics.csv``.
    """
    from ..estimator.inputs import check_finite
    from .classes import confusion_counts
    from .science import control_keys_of, mdl_table, write_cka

    task = get_task(cfg.task)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    y, header, label_names = task.targets(cache, cfg)
    science = task.science
    keys = control_keys_of(cache, cfg) if science and cfg.control else None  # before training
    budget = memory_budget_of(cfg)
    n_bytes = len(cache) * len(cache.layer_names) * len(cache.poolings) * max(cache.dims) * 4
    # Out of core (3 copies of the features would not fit): heads read their rows from the
    # cache's train / test subsets; NaN and infinity are caught by the fit's statistics pass.
    stream = task.streams and 3 * n_bytes > budget and not (cfg.mdl or cfg.control)
    X = None if stream else _load_features(cache)
    if X is not None:
        check_finite(X, "the cache")
    groups = np.asarray(cache.samples) if cache.unit != "sample" else None  # split by input
    train, test = task.split(y, cfg.test_size, cfg.seed, groups)
    write_split(run_dir, train.tolist(), test.tolist(), cfg.seed, cfg.test_size)
    test_groups = None if groups is None else groups[test]
    idx = test_resamples(cache, test, cfg)
    metrics: dict[str, Any] = {
        **header,
        "model": cache.manifest["model"].get("id"),
        "data": cache.manifest["dataset"]["name"],
        "n_train": int(train.size),
        "n_test": int(test.size),
        "label_names": label_names,
        "layer_names": list(cache.layer_names),
        "poolings": list(cache.poolings),
        "bootstrap": {
            "resamples": int(cfg.bootstrap),
            "by": "row" if test_groups is None else "input",
            "n_units": int(test.size if test_groups is None else np.unique(test_groups).size),
        },
        "heads": {},
    }
    fit = _HeadFit(task, cfg, y, train, test, idx, progress, budget if task.streams else None)
    fit.groups = None if groups is None else groups[train]
    metrics["heads"], baselines = fit.run(cache, X, run_dir / "probes", keys)
    if task.per_class:
        best = task.best(metrics["heads"])
        assert best is not None  # a run has heads
        counts = confusion_counts(y[test], fit.predictions[best], len(label_names))
        metrics["confusion"] = {"head": best, "counts": counts}
    if baselines:
        metrics["baselines"] = baselines
    if science and cfg.mdl:
        assert X is not None  # mdl loads the features
        metrics["mdl"] = mdl_table(
            X[train],
            y[train],
            list(cache.layer_names),
            len(cache.poolings),
            cfg.seed,
            cfg.device,
        )
    if science:
        metrics["similarity"] = write_cka(run_dir, cache, memory_budget=budget)
    if science and random_cache is not None:
        if not np.array_equal(np.asarray(random_cache.labels), y):
            raise DataError("the random-init cache holds other samples than the run's cache")
        metrics["random_init"] = {
            "model": random_cache.manifest["model"].get("id"),
            "seed": cfg.init_seed or 0,
            "cache": str(cfg.random_cache_dir),
            "fingerprint": random_cache.manifest.get("fingerprint"),
            "heads": fit.run(random_cache, _load_features(random_cache), None, None)[0],
            "similarity_to_trained": write_cka(
                run_dir, cache, random_cache, "trained-vs-random", memory_budget=budget
            ),
        }
    write_metrics(metrics, run_dir)
    return metrics


class _HeadFit:
    """Fits and scores every head of a run on one split (the trained or the random-init cache).

    Args:
        task: the run's task. cfg: the run. y: ``(N,)`` targets.
        train, test: sorted positions. idx: ``(R, N_test)`` bootstrap resamples of the test
        positions. progress: show the training bars. budget: the heads' ``memory_budget`` in bytes
        (``None``: an estimator without one).
    """

    def __init__(
        self,
        task: Task,
        cfg: RunConfig,
        y: np.ndarray,
        train: np.ndarray,
        test: np.ndarray,
        idx: np.ndarray,
        progress: bool,
        budget: int | None,
    ) -> None:
        self.task, self.cfg, self.y, self.train, self.test = task, cfg, y, train, test
        self.idx, self.progress, self.budget = idx, progress, budget
        self.groups: np.ndarray | None = None  # a word cache: the input of each train row
        self.predictions: dict[str, np.ndarray] = {}  # the last run's test predictions by head

    def _estimator(self, cache: Any, head: str, streamed: bool, control: bool) -> Any:
        cfg = self.cfg
        params: dict[str, Any] = {
            "tokens_per_layer": len(cache.poolings),
            "random_state": cfg.seed,
            "device": cfg.device,
            "verbose": self.progress,
        }
        if self.budget is not None:
            params["memory_budget"] = self.budget
        params.update(cfg.probe_params.get(head, {}))
        if streamed:
            params["pooling"] = list(cache.poolings)
        if control:
            params["control"] = True
        return self.task.estimator_class()(head=head, **params)

    def _score(
        self, est: Any, X_test: Any, y_test: np.ndarray, pred: np.ndarray, layer_names: list[str]
    ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
        """A fitted head's test scores (``_score``: its binary score or ``None``), with
        ``per_layer`` rows for a per-layer head (``linear``, ``diff-means``), whose ``(N, L)``
        predictions and binary scores are also returned (else ``None``)."""
        task, idx = self.task, self.idx
        binary = task.name == "classification" and len(getattr(est, "classes_", ())) == 2
        score = np.asarray(est.decision_function(X_test)) if binary else None
        entry: dict[str, Any] = {**task.score(y_test, pred, idx, score)}
        entry["_score"] = score
        if getattr(est, "selected_layer_", None) is None:
            return entry, None, None
        layer_pred = np.asarray(est.predict_layers(X_test))  # (N_test, L)
        layer_score = np.asarray(est.decision_layers(X_test)) if binary else None
        entry["per_layer"] = [
            {
                "layer": name,
                **task.score(
                    y_test,
                    layer_pred[:, j],
                    idx,
                    None if layer_score is None else layer_score[:, j],
                ),
            }
            for j, name in enumerate(layer_names)
        ]
        entry["selected_layer"] = layer_names[int(est.selected_layer_)]
        return entry, layer_pred, layer_score

    def run(
        self, cache: Any, X: Any, save_dir: Path | None, keys: np.ndarray | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Fit every head on the train rows of ``X`` (``(N, L, D)`` or ``(N, L, P, D)``;
        ``None``: read from the cache), score it on the test rows; save it under ``save_dir``.

        Returns:
            ``(heads, baselines)``: every head's entry of ``metrics["heads"]`` (in
            ``cfg.probes`` order), and the layers of the two paired-comparison baselines (empty
            without ``linear`` or without ``Task.compare``).
        """
        from ..cache import cache_subset
        from .classes import per_class_recall
        from .science import control_rows

        task, cfg, y, train, test, idx = (
            self.task,
            self.cfg,
            self.y,
            self.train,
            self.test,
            self.idx,
        )
        X_train = X[train] if X is not None else cache_subset(cache, train)
        X_test = X[test] if X is not None else cache_subset(cache, test)
        y_test = y[test]
        layer_names = list(cache.layer_names)
        heads: dict[str, Any] = {}
        preds: dict[str, np.ndarray] = {}
        scores: dict[str, np.ndarray | None] = {}
        baseline: dict[str, np.ndarray] = {}
        baseline_scores: dict[str, np.ndarray | None] = {}
        names: dict[str, str] = {}
        # the per-layer linear probes come first: every head is compared with two of them
        for head in sorted(cfg.probes, key=lambda h: h != "linear"):
            t0 = time.perf_counter()
            control = keys is not None and head == "linear"
            est = self._estimator(cache, head, X is None, control)
            fit_kw: dict[str, Any] = {"layer_names": layer_names}
            if self.groups is not None:
                fit_kw["groups"] = self.groups
            if control:
                assert keys is not None
                fit_kw["sample_keys"] = list(keys[train])
            est.fit(X_train, y[train], **fit_kw)
            seconds = time.perf_counter() - t0
            if save_dir is not None:
                est.save(save_dir / head)
            preds[head] = pred = est.predict(X_test)
            entry, layer_pred, layer_score = self._score(est, X_test, y_test, pred, layer_names)
            scores[head] = entry.pop("_score")
            entry = {"fit_seconds": round(seconds, 2), **entry}
            if head == "linear":
                assert layer_pred is not None
                if task.per_class:
                    entry.update(
                        per_class_recall(y_test, layer_pred, layer_names, cache.label_names)
                    )
                selected = int(est.selected_layer_)
                entry["selected_layer"] = layer_names[selected]
                if control:
                    assert keys is not None
                    rows = control_rows(est, X_test, y_test, keys[test], idx)
                    for row, extra in zip(entry["per_layer"], rows, strict=True):
                        row.update(extra)
                    entry["control"] = {
                        "seed": int(est.control_seed_),
                        "validation_accuracy": np.asarray(est.layer_scores_).tolist(),
                        "validation_control_accuracy": est.control_scores_.tolist(),
                        "validation_selectivity": est.selectivity_.tolist(),
                    }
                if task.compare is not None:
                    baseline = {
                        "last_layer": layer_pred[:, -1],
                        "best_layer": layer_pred[:, selected],
                    }
                    baseline_scores = {
                        "last_layer": None if layer_score is None else layer_score[:, -1],
                        "best_layer": None if layer_score is None else layer_score[:, selected],
                    }
                    names = {"last_layer": layer_names[-1], "best_layer": entry["selected_layer"]}
            heads[head] = entry
        self.predictions = preds
        if task.compare is not None:
            for head, pred in preds.items():  # paired: the same resamples score both
                heads[head]["paired"] = {
                    f"vs_{name}": task.compare(
                        y_test, pred, ref, idx, scores[head], baseline_scores.get(name)
                    )
                    for name, ref in baseline.items()
                }
        return {h: heads[h] for h in cfg.probes}, names
