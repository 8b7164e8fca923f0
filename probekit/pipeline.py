"""The whole flow, extract -> fit -> attribute -> report, from a config or the CLI.

``probekit run [CONFIG]`` and :func:`run` make identical run folders::

    RUN/
      config.json            the resolved RunConfig
      cache/                 the feature cache (reused when it is already complete)
      split.json             train / test sample positions (stratified, seeded)
      probes/<head>/         model.safetensors + config.json for every head
      metrics.json, metrics.csv
      attribution/<head>.safetensors + attribution.json
      figures/*.html (+ .png where a Chromium is found)
      report.html

A config file (YAML or TOML) holds exactly the CLI's options, either for one run or as
``runs: [{...}, {...}]``. Without a config, :data:`DEFAULT_RUNS` run offline on bundled models
and data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunConfig", "DEFAULT_RUNS", "run", "run_one", "load_config", "add_pipeline_commands",
           "fit_stage", "attribute_stage", "paired_comparison"]

DEFAULT_PROBES = ("linear", "concat", "scalar-mix", "alf", "laya", "kcla", "aila-linear", "aila-attention")


# Runs train ALF as one configuration of its grid (lr 1e-2, weight decay 1e-4) for 20 epochs with
# batches of 256, so that a run finishes in minutes on a 2-core CPU. The paper's recipe (a 21-config
# lr x weight-decay grid, >= 1000 steps, then a refit) is a GPU recipe: ``probe_params={}`` gives it.
CPU_PROBE_PARAMS: dict[str, dict[str, Any]] = {
    "alf": {"lr": 1e-2, "weight_decay": 1e-4, "batch_size": 256, "epochs": 20}
}


@dataclass
class RunConfig:
    """One run: every field is also a ``probekit run`` option (``--text-column`` for ``text_column``).

    Attributes:
        name: the run folder's name under ``out``.
        model: model spec (see :func:`probekit.load_model`).
        data: dataset spec (see :func:`probekit.load_data`).
        split, text_column, label_column, limit: passed to :func:`probekit.load_data`.
        layers: which layers to record (None = all).
        pooling: what to record (default: the model's).
        batch_size, precision, dtype, device: extraction settings.
        probes: the heads to train.
        probe_params: per-head :class:`~probekit.ProbeClassifier` keywords, e.g.
            ``{"alf": {"lr": [0.01, 0.001]}, "laya": {"head_params": {"tau": 1.0}}}``; JSON on the CLI.
            Default: :data:`CPU_PROBE_PARAMS` (a light ALF); ``{}`` gives every head its paper recipe.
        test_size: fraction of samples held out (stratified) for every reported score.
        seed: seeds the split, the probes and the bootstrap.
        ablation: replacement for ablation sensitivity: ``mean``, ``zero`` or ``shuffle``.
        bootstrap: bootstrap resamples for the 95% confidence intervals.
        figures: image formats to export besides HTML (``png``, ``svg``, ``pdf``).
        out: the folder that holds run folders.
        cache: the feature cache folder (default ``RUN/cache``).
    """

    name: str = "minilm-vader"
    model: str = "bundled:minilm-l6"
    data: str = "bundled:vader-valence"
    split: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    limit: int | None = None
    layers: Any = None
    pooling: str | None = None
    batch_size: int = 64
    precision: str = "fp32"
    dtype: str = "float32"
    device: str | None = None
    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))
    probe_params: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in CPU_PROBE_PARAMS.items()})
    test_size: float = 0.2
    seed: int = 0
    ablation: str = "mean"
    bootstrap: int = 1000
    figures: list[str] = field(default_factory=lambda: ["png"])
    out: str = "runs"
    cache: str | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @property
    def cache_dir(self) -> Path:
        """Where the features are cached: ``cache``, or ``RUN/cache``."""
        return Path(self.cache) if self.cache else self.run_dir / "cache"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a mapping; unknown keys are an error naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {', '.join(sorted(known))}")
        for key in ("probes", "figures"):
            if isinstance(values.get(key), str):
                values[key] = [p.strip() for p in values[key].split(",") if p.strip()]
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEFAULT_RUNS = (
    RunConfig(name="minilm-vader", model="bundled:minilm-l6", data="bundled:vader-valence"),
    RunConfig(name="effnet-mnist", model="bundled:efficientnet-lite0", data="bundled:mnist",
              limit=2000, batch_size=50),
)


def load_config(path: str | Path) -> list[RunConfig]:
    """Read a YAML or TOML config: one run's options, or ``runs: [...]`` (shared keys on top)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        values = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"config {path} must be .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ValueError(f"config {path} must hold a mapping of options")
    runs = values.pop("runs", None)
    if runs is None:
        return [RunConfig.from_dict(values)]
    return [RunConfig.from_dict({**values, **r}) for r in runs]


# ------------------------------------------------------------------------------------ stages


def extract_stage(cfg: RunConfig, progress: bool = True) -> Any:
    """Record the run's cache in ``RUN/cache`` (resumed or reused when already there)."""
    from .data import load_data
    from .extract import extract
    from .models import load_model

    data = load_data(cfg.data, split=cfg.split, text_column=cfg.text_column,
                     label_column=cfg.label_column, limit=cfg.limit, seed=cfg.seed)
    if len(data.label_names) < 2 or len(np.unique(data.labels)) < 2:
        raise ValueError(f"{cfg.data} has a single class; probes need at least two")
    model = load_model(cfg.model)
    return extract(model, data, cfg.cache_dir, layers=cfg.layers, pooling=cfg.pooling,
                   batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype,
                   precision=cfg.precision, progress=progress)


def _split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(labels))
    train, test = train_test_split(positions, test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, metric: Any, n: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``metric`` over test samples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)))
    values = np.array([metric(y_true[i], y_pred[i]) for i in idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _scores(y: np.ndarray, pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    return {
        "accuracy": float(accuracy_score(y, pred)),
        "accuracy_ci": bootstrap_ci(y, pred, accuracy_score, n_boot, seed),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "balanced_accuracy_ci": bootstrap_ci(y, pred, balanced_accuracy_score, n_boot, seed),
    }


def paired_comparison(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n: int,
                      seed: int) -> dict[str, Any]:
    """Balanced accuracy of A minus B, paired over the same bootstrap resamples of the test samples.

    Resamples are ``np.random.default_rng(seed).integers(0, N, size=(n, N))``; both classifiers
    are scored on each, as scikit-learn's ``balanced_accuracy_score`` would (mean recall over the
    classes present in the resample).

    Returns:
        ``difference`` (on the test samples themselves), ``ci`` (95% percentile interval of the
        resampled differences) and ``p_le0`` (fraction of resamples where A - B <= 0).
    """
    classes, yi = np.unique(np.concatenate([y, pred_a, pred_b]), return_inverse=True)
    yi, ai, bi = np.split(yi, 3)
    k = len(classes)
    idx = np.random.default_rng(seed).integers(0, len(yi), size=(n, len(yi)))

    def balanced(rows: np.ndarray, hit: np.ndarray) -> np.ndarray:  # (R, N) -> (R,)
        keys = (np.arange(rows.shape[0])[:, None] * k + yi[rows]).ravel()
        total = np.bincount(keys, minlength=rows.shape[0] * k).reshape(-1, k)
        correct = np.bincount(keys, weights=hit[rows].ravel(), minlength=rows.shape[0] * k)
        present = total > 0
        recall = np.divide(correct.reshape(-1, k), total, out=np.zeros(total.shape), where=present)
        return recall.sum(1) / present.sum(1)

    hit_a, hit_b = (ai == yi).astype(np.float64), (bi == yi).astype(np.float64)
    full = np.arange(len(yi))[None]
    diff = float((balanced(full, hit_a) - balanced(full, hit_b))[0])
    diffs = balanced(idx, hit_a) - balanced(idx, hit_b)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"difference": diff, "ci": [float(lo), float(hi)], "p_le0": float(np.mean(diffs <= 0))}


def _load_features(cache: Any) -> Any:
    """``(N, L * P, D)`` with every cached pooling as a token of its layer."""
    return cache.load(pooling=cache.poolings)


def fit_stage(cache: Any, cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Train every head of ``cfg.probes`` on the train split; score them on the test split.

    Writes ``split.json``, ``probes/<head>/``, ``metrics.json`` and ``metrics.csv``. When the
    ``linear`` head is among the probes, every head also gets ``paired``: its balanced accuracy
    minus that of the last layer's linear probe (``vs_last_layer``) and of the single layer chosen
    on a validation split of the train samples (``vs_best_layer``), by :func:`paired_comparison`.
    """
    import torch

    from .estimator import ProbeClassifier

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(cache.labels)
    if np.unique(labels).size < 2:
        raise ValueError("the cache holds a single class; probes need at least two")
    X = _load_features(cache)
    if not torch.isfinite(X).all():
        raise ValueError("the cache holds NaN or infinite features")
    train, test = _split(labels, cfg.test_size, cfg.seed)
    (run_dir / "split.json").write_text(json.dumps({"train": train.tolist(), "test": test.tolist(),
                                                    "seed": cfg.seed, "test_size": cfg.test_size}))
    tokens = len(cache.poolings)
    metrics: dict[str, Any] = {
        "model": cache.manifest["model"].get("id"), "data": cache.manifest["dataset"]["name"],
        "n_train": int(train.size), "n_test": int(test.size), "label_names": list(cache.label_names),
        "layer_names": list(cache.layer_names), "poolings": list(cache.poolings), "heads": {},
    }
    preds: dict[str, np.ndarray] = {}
    baseline: dict[str, np.ndarray] = {}
    # the per-layer linear probes come first: every head is compared with two of them
    for head in sorted(cfg.probes, key=lambda h: h != "linear"):
        t0 = time.perf_counter()
        params = {"tokens_per_layer": tokens, "random_state": cfg.seed, "device": cfg.device,
                  "verbose": progress, **cfg.probe_params.get(head, {})}
        clf = ProbeClassifier(head=head, **params)
        clf.fit(X[train], labels[train], layer_names=list(cache.layer_names))
        seconds = time.perf_counter() - t0
        clf.save(run_dir / "probes" / head)
        pred = clf.predict(X[test])
        preds[head] = pred
        entry = {"fit_seconds": round(seconds, 2), **_scores(labels[test], pred, cfg.bootstrap, cfg.seed)}
        if head == "linear":
            layer_pred = clf.predict_layers(X[test])  # (N, L)
            entry["per_layer"] = [
                {"layer": name, **_scores(labels[test], layer_pred[:, l], cfg.bootstrap, cfg.seed)}
                for l, name in enumerate(cache.layer_names)
            ]
            entry["selected_layer"] = cache.layer_names[int(clf.selected_layer_)]
            baseline = {"last_layer": layer_pred[:, -1], "best_layer": layer_pred[:, int(clf.selected_layer_)]}
            metrics["baselines"] = {"last_layer": cache.layer_names[-1],
                                    "best_layer": entry["selected_layer"]}
        metrics["heads"][head] = entry
    for head, pred in preds.items():  # paired: the same resampled test samples score both
        metrics["heads"][head]["paired"] = {
            f"vs_{name}": paired_comparison(labels[test], pred, ref, cfg.bootstrap, cfg.seed)
            for name, ref in baseline.items()
        }
    metrics["heads"] = {h: metrics["heads"][h] for h in cfg.probes}  # the configured order
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_csv(metrics, run_dir / "metrics.csv")
    return metrics


def _write_csv(metrics: dict[str, Any], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        paired = [f"{ref}{suffix}" for ref in ("vs_last_layer", "vs_best_layer")
                  for suffix in ("", "_lo", "_hi", "_p_le0")]
        w.writerow(["head", "layer", "accuracy", "accuracy_lo", "accuracy_hi", "balanced_accuracy",
                    "balanced_accuracy_lo", "balanced_accuracy_hi", *paired])
        for head, e in metrics["heads"].items():
            rows = [(head, "all", e)] + [(head, r["layer"], r) for r in e.get("per_layer", [])]
            for h, layer, r in rows:
                cmp = []
                for ref in ("vs_last_layer", "vs_best_layer"):
                    c = r.get("paired", {}).get(ref)
                    cmp += ([f"{c['difference']:.4f}", f"{c['ci'][0]:.4f}", f"{c['ci'][1]:.4f}",
                             f"{c['p_le0']:.4f}"] if c else ["", "", "", ""])
                w.writerow([h, layer, f"{r['accuracy']:.4f}", f"{r['accuracy_ci'][0]:.4f}",
                            f"{r['accuracy_ci'][1]:.4f}", f"{r['balanced_accuracy']:.4f}",
                            f"{r['balanced_accuracy_ci'][0]:.4f}", f"{r['balanced_accuracy_ci'][1]:.4f}",
                            *cmp])


def attribute_stage(run_dir: str | Path, ablation: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Per-sample layer attribution of every saved head on the test split.

    Writes ``attribution/<head>.safetensors`` (``layer_weights`` (N, L) when the head has them,
    ``ablation`` (N, L), ``accuracy_drop`` (L,), ``layer_map`` (N, L, L) for AILA) and
    ``attribution/attribution.json`` (mean profiles, agreement between weights and ablation).
    """
    import torch
    from safetensors.torch import save_file

    from .attribution import (
        ablation_sensitivity,
        attribution_agreement,
        layer_attribution,
        layer_map,
    )
    from .cache import FeatureCache
    from .estimator import ProbeClassifier

    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    mode = ablation or cfg.ablation
    cache = FeatureCache.open(cfg.cache_dir)
    split = json.loads((run_dir / "split.json").read_text())
    test = np.asarray(split["test"])
    X = _load_features(cache)[test]
    y = np.asarray(cache.labels)[test]
    out_dir = run_dir / "attribution"
    out_dir.mkdir(exist_ok=True)
    summary: dict[str, Any] = {"mode": mode, "test": test.tolist(), "heads": {}}
    for head_dir in sorted((run_dir / "probes").iterdir()):
        clf = ProbeClassifier.load(head_dir)
        head = head_dir.name
        abl = ablation_sensitivity(clf, X, y, mode=mode, random_state=seed)
        tensors = {"ablation": torch.as_tensor(abl.per_sample, dtype=torch.float32),
                   "accuracy_drop": torch.as_tensor(abl.accuracy_drop, dtype=torch.float32),
                   "predictions": torch.as_tensor(np.asarray(clf.predict(X)), dtype=torch.int64)}
        entry: dict[str, Any] = {"ablation_mean": abl.per_sample.mean(0).tolist(),
                                 "accuracy_drop": np.asarray(abl.accuracy_drop).tolist(),
                                 "base_accuracy": float(abl.base_accuracy)}
        weights = _maybe(layer_attribution, clf, X)
        if weights is not None:
            tensors["layer_weights"] = torch.as_tensor(weights, dtype=torch.float32)
            agree = attribution_agreement(weights, abl.per_sample)
            entry["weights_mean"] = weights.mean(0).tolist()
            entry["agreement_median"] = float(np.nanmedian(agree))
            tensors["agreement"] = torch.as_tensor(agree, dtype=torch.float32)
        lmap = _maybe(layer_map, clf, X)
        if lmap is not None:
            tensors["layer_map"] = torch.as_tensor(lmap, dtype=torch.float32)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / f"{head}.safetensors"))
        summary["heads"][head] = entry
    (out_dir / "attribution.json").write_text(json.dumps(summary, indent=2))
    return summary


def _maybe(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or None when the head has no such output (the functions raise ValueError)."""
    try:
        return fn(*args)
    except ValueError:
        return None


def _read_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a probekit run folder (no config.json)")
    return RunConfig.from_dict(json.loads(path.read_text()))


def run_one(cfg: RunConfig, progress: bool = True) -> Path:
    """Run one config end to end; returns the run folder."""
    from .report import write_figures, write_report

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    cache = extract_stage(cfg, progress=progress)
    fit_stage(cache, cfg, progress=progress)
    attribute_stage(run_dir, seed=cfg.seed)
    write_figures(run_dir, formats=cfg.figures)
    write_report(run_dir)
    return run_dir


def run(config: str | Path | RunConfig | dict[str, Any] | Sequence[RunConfig] | None = None,
        progress: bool = True) -> list[Path]:
    """Run the whole flow from Python, exactly as ``probekit run [CONFIG]`` does.

    Args:
        config: a YAML/TOML path, a :class:`RunConfig`, a dict of its options, a list of
            configs, or None for the bundled defaults (:data:`DEFAULT_RUNS`).

    Returns:
        The run folders.
    """
    if config is None:
        configs = [dataclasses.replace(c) for c in DEFAULT_RUNS]
    elif isinstance(config, (str, Path)):
        configs = load_config(config)
    elif isinstance(config, RunConfig):
        configs = [config]
    elif isinstance(config, dict):
        configs = [RunConfig.from_dict(config)]
    else:
        configs = list(config)
    return [run_one(c, progress=progress) for c in configs]


# ------------------------------------------------------------------------------------ CLI


def _add_run_options(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(RunConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                       help=f"(default: {f.default if f.default is not dataclasses.MISSING else 'see docs'})")


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
                 if getattr(args, f.name) is not None}
    for key in ("limit", "batch_size", "seed", "bootstrap"):
        if key in overrides:
            overrides[key] = int(overrides[key])
    if "probe_params" in overrides:
        overrides["probe_params"] = json.loads(overrides["probe_params"])
    if "test_size" in overrides:
        overrides["test_size"] = float(overrides["test_size"])
    if "layers" in overrides:
        from .cli import _layers_arg

        overrides["layers"] = _layers_arg(overrides["layers"])
    if args.config:
        configs = load_config(args.config)
    elif any(k not in ("out",) for k in overrides):
        configs = [RunConfig()]
    else:
        configs = [dataclasses.replace(c) for c in DEFAULT_RUNS]
    configs = [RunConfig.from_dict({**c.to_dict(), **overrides}) for c in configs]
    for run_dir in run(configs):
        print(f"{run_dir / 'report.html'}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .cache import FeatureCache

    cache = FeatureCache.open(args.cache)
    out = Path(args.out)
    probes = [p.strip() for p in args.probe.split(",") if p.strip()]
    from .probes import list_probes

    unknown = [p for p in probes if p not in list_probes()]
    if unknown:
        raise ValueError(f"unknown probe {unknown[0]!r}; known: {', '.join(list_probes())}")
    cfg = RunConfig(name=out.name, out=str(out.parent), probes=probes, seed=args.seed,
                    test_size=args.test_size, bootstrap=args.bootstrap, cache=str(args.cache),
                    model=cache.manifest["model"].get("id", ""), data=cache.manifest["dataset"]["name"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    metrics = fit_stage(cache, cfg)
    for head, e in metrics["heads"].items():
        lo, hi = e["balanced_accuracy_ci"]
        print(f"{head:16s} acc {e['accuracy']:.3f}  balanced {e['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from .report import write_figures

    summary = attribute_stage(args.run_dir, ablation=args.ablation)
    write_figures(args.run_dir)
    print(f"attributed {', '.join(summary['heads'])} in {Path(args.run_dir) / 'attribution'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run_dir))
    return 0


def add_pipeline_commands(sub: Any) -> None:
    """Register ``fit``, ``attribute``, ``report`` and ``run`` on the CLI's subparsers."""
    p = sub.add_parser("fit", help="train probe heads on a cache; write metrics.json/csv")
    p.add_argument("--cache", required=True)
    p.add_argument("--probe", default="linear,alf,laya,kcla,aila-attention",
                   help="comma-separated heads (see probekit.list_probes())")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.set_defaults(fn=_cmd_fit)

    p = sub.add_parser("attribute", help="layer attribution of a run's heads on its test split")
    p.add_argument("run_dir")
    p.add_argument("--ablation", default=None, choices=["mean", "zero", "shuffle"])
    p.set_defaults(fn=_cmd_attribute)

    p = sub.add_parser("report", help="write RUN_DIR/report.html")
    p.add_argument("run_dir")
    p.set_defaults(fn=_cmd_report)

    p = sub.add_parser("run", help="extract -> fit -> attribute -> report (bundled default without a config)")
    p.add_argument("config", nargs="?", default=None, help="YAML or TOML file with the options below")
    _add_run_options(p)
    p.set_defaults(fn=_cmd_run)
