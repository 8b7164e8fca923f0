"""Probe training benchmarks: per-layer linear probes vs scikit-learn, and the vectorised grid.

(1) All-layer linear probes: ``ProbeClassifier(head="linear")`` against a loop of
    ``StandardScaler + LogisticRegression(C=1.0)`` over the layers, on the same features
    (synthetic: 13 layers x 16k train samples x 384 features with layer-dependent signal, or a
    FeatureCache given with ``--cache``). Reports times, their ratio and the largest per-layer
    difference in held-out accuracy. Target: >= 2x faster at <= 0.5 points.
(2) The vectorised grid: a 3 lr x 7 weight-decay grid of a head (ALF / LAYA) trained in one
    vectorised pass against the same 21 configurations trained one after the other (same
    seed, same split, same epochs). Target: >= 3x.

Usage::

    python benchmarks/bench_probes.py                  # both, synthetic data
    python benchmarks/bench_probes.py --cache runs/x/cache --skip-grid
    python benchmarks/bench_probes.py --threads 1 --grid-heads laya alf
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def synthetic_layers(
    n: int, n_layers: int, dim: int, n_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``X (n, L, D)`` float32 with a class signal that peaks in the middle-to-late layers.

    Every layer mixes isotropic noise through its own random ``(D, D)`` matrix (anisotropic,
    correlated features, like real activations) and adds a per-layer offset and scale.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    mu = rng.normal(size=(n_classes, dim)).astype(np.float32)
    x = np.empty((n, n_layers, dim), np.float32)
    for layer in range(n_layers):
        depth = layer / max(n_layers - 1, 1)
        strength = 0.035 * np.exp(-(((depth - 0.65) / 0.3) ** 2)) + 0.006
        mix = (rng.normal(size=(dim, dim)) / np.sqrt(dim)).astype(np.float32)
        noise = rng.normal(size=(n, dim)).astype(np.float32) @ mix
        x[:, layer] = (strength * mu[y] + noise) * (1 + layer) + rng.normal(size=dim)
    return x, y


def load_cache(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from probekit.cache import FeatureCache

    cache = FeatureCache.open(path)
    pooling = "cls" if "cls" in cache.poolings else cache.poolings[0]
    return cache.load(pooling=pooling).numpy(), np.asarray(cache.labels), list(cache.layer_names)


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_linear(
    x: np.ndarray, y: np.ndarray, test_frac: float, repeat: int, converged: bool = False
) -> list[dict[str, Any]]:
    """Time and per-layer held-out accuracy of both sides on one stratified split.

    With ``converged``, also a scikit-learn loop with ``max_iter=1000`` (no timing target):
    where scikit-learn stops at its default 100 iterations unconverged, the default estimator
    (whose final probes start from the validation split's solution) lands closer to this.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from probekit.estimator import ProbeClassifier

    tr, te = train_test_split(np.arange(len(y)), test_size=test_frac, stratify=y, random_state=0)
    xtr, xte, ytr, yte = x[tr], x[te], y[tr], y[te]
    n_layers = x.shape[1]

    def sklearn_loop(max_iter: int = 100) -> np.ndarray:
        accs = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter=100
            for layer in range(n_layers):
                scaler = StandardScaler().fit(xtr[:, layer])
                clf = LogisticRegression(C=1.0, max_iter=max_iter)
                clf.fit(scaler.transform(xtr[:, layer]), ytr)
                accs.append(clf.score(scaler.transform(xte[:, layer]), yte))
        return np.asarray(accs)

    def ours(**params: Any) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            clf = ProbeClassifier(
                "linear", class_weight=None, device="cpu", random_state=0, **params
            )
            clf.fit(xtr, ytr)
            return (clf.predict_layers(xte) == yte[:, None]).mean(0)

        return run

    ProbeClassifier("linear", device="cpu").fit(xtr[:200, :2], ytr[:200])  # warm-up (imports)
    t_sk, acc_sk = _timed(sklearn_loop, repeat)
    rows = [
        {
            "what": f"sklearn LogisticRegression loop ({n_layers} layers)",
            "seconds": t_sk,
            "ratio": 1.0,
            "max_diff_pp": 0.0,
        }
    ]
    for label, params in [
        ("probekit linear, all layers (val_size=0)", {"val_size": 0}),
        ("probekit linear, default (20% val, layer pick, refit)", {}),
    ]:
        t, acc = _timed(ours(**params), repeat)
        rows.append(
            {
                "what": label,
                "seconds": t,
                "ratio": t_sk / t,
                "max_diff_pp": 100 * float(np.abs(acc - acc_sk).max()),
            }
        )
    print("per-layer held-out accuracy, sklearn :", np.round(acc_sk, 4).tolist())
    print("per-layer held-out accuracy, probekit:", np.round(acc, 4).tolist())
    if converged:
        t_conv, acc_conv = _timed(lambda: sklearn_loop(1000), 1)
        print("per-layer held-out accuracy, sklearn max_iter=1000:", np.round(acc_conv, 4).tolist())
        rows.append(
            {
                "what": "sklearn loop, max_iter=1000 (vs probekit default)",
                "seconds": t_conv,
                "ratio": t_sk / t_conv,
                "max_diff_pp": 100 * float(np.abs(acc - acc_conv).max()),
            }
        )
    return rows


def bench_grid(
    head: str, n: int, n_layers: int, dim: int, n_classes: int, epochs: int, repeat: int
) -> list[dict[str, Any]]:
    """The 3 x 7 grid in one vectorised pass vs config after config (search phase only)."""
    from probekit.estimator import HEAD_DEFAULTS
    from probekit.probes import create_probe
    from probekit.train import TrainConfig, train_grid

    x, y = synthetic_layers(n, n_layers, dim, n_classes, seed=1)
    xt = torch.from_numpy(x)
    xt = (xt - xt.mean(0)) / xt.std(0)
    if head == "alf":
        xt = torch.nn.functional.normalize(xt, dim=-1)
    yt = torch.from_numpy(y)
    d = HEAD_DEFAULTS[head]
    lrs, wds = [1e-1, 1e-2, 1e-3], [float(w) for w in np.logspace(-6, 0, 7)]
    base = dict(
        optimizer=d["solver"],
        epochs=epochs,
        batch_size=d["batch_size"],
        min_batches=d["min_batches"],
        schedule=d["schedule"],
        val_size=0.2,
        patience=None,
        refit=False,
        seed=0,
        device="cpu",
        jitter_p=0.5 if d["jitter"] else 0.0,
    )

    def build(**kw: Any) -> torch.nn.Module:
        return create_probe(head, n_layers=n_layers, dims=dim, n_classes=n_classes, **kw)

    def grid() -> Any:
        return train_grid(build, xt, yt, n_classes, TrainConfig(lr=lrs, weight_decay=wds, **base))

    def one_by_one() -> list[Any]:
        return [
            train_grid(build, xt, yt, n_classes, TrainConfig(lr=[lr], weight_decay=[wd], **base))
            for lr in lrs
            for wd in wds
        ]

    warm = dict(base, epochs=1)
    train_grid(
        build, xt[:256], yt[:256], n_classes, TrainConfig(lr=lrs[:2], weight_decay=wds[:1], **warm)
    )
    t_grid, res = _timed(grid, repeat)
    t_seq, solo = _timed(one_by_one, 1)
    diffs = np.abs(np.array([float(r.scores[0]) for r in solo]) - res.scores)
    differ = [
        f"lr={c['lr']:g}/wd={c['weight_decay']:g}: {100 * dv:.2f}"
        for c, dv in zip(res.configs, diffs, strict=True)
        if dv >= 1e-9
    ]
    print(
        f"{head}: validation balanced accuracy of the grid == alone for "
        f"{int((diffs < 1e-9).sum())}/{len(diffs)} configs; the others differ (pp) by float "
        f"rounding that training amplifies (vmap's batched kernels): {differ}"
    )
    label = f"{head}: {len(lrs)}x{len(wds)} grid, {n} x {n_layers} x {dim}, {epochs} epochs"
    return [
        {
            "what": f"{label}, one config after another",
            "seconds": t_seq,
            "ratio": 1.0,
            "max_diff_pp": 0.0,
        },
        {
            "what": f"{label}, vectorised (vmap)",
            "seconds": t_grid,
            "ratio": t_seq / t_grid,
            "max_diff_pp": 100 * float(diffs.max()),
        },
    ]


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["what"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'seconds':>8}  {'speed-up':>8}  {'max acc diff (pp)':>17}")
    for r in rows:
        what, sec, ratio, diff = r["what"], r["seconds"], r["ratio"], r["max_diff_pp"]
        print(f"{what:<{width}}  {sec:8.2f}  {ratio:7.2f}x  {diff:17.2f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cache", help="a FeatureCache folder (default: synthetic features)")
    p.add_argument("--layers", type=int, default=13)
    p.add_argument("--n", type=int, default=20000, help="samples (80%% train, 20%% test)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and BLAS threads for both sides (default: the libraries' own)",
    )
    p.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    p.add_argument("--skip-linear", action="store_true")
    p.add_argument(
        "--converged", action="store_true", help="also scikit-learn with max_iter=1000 (slow)"
    )
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--grid-heads", nargs="+", default=["laya", "alf"])
    p.add_argument("--grid-n", type=int, default=2000)
    p.add_argument("--grid-layers", type=int, default=6)
    p.add_argument("--grid-dim", type=int, default=32)
    p.add_argument("--grid-epochs", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # numpy / scikit-learn BLAS too
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    rows: list[dict[str, Any]] = []
    if not args.skip_linear:
        if args.cache:
            x, y, _ = load_cache(args.cache)
        else:
            x, y = synthetic_layers(args.n, args.layers, args.dim, args.classes)
        print(
            f"linear probes: {x.shape[0]} samples x {x.shape[1]} layers x {x.shape[2]} features, "
            f"{len(np.unique(y))} classes"
        )
        rows += bench_linear(x, y, 0.2, args.repeat, args.converged)
    if not args.skip_grid:
        for head in args.grid_heads:
            rows += bench_grid(
                head, args.grid_n, args.grid_layers, args.grid_dim, 4, args.grid_epochs, args.repeat
            )
    print_table(rows)


if __name__ == "__main__":
    main()
