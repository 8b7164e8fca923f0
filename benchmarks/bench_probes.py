"""Probe training benchmarks: per-layer linear probes vs scikit-learn, and the vectorised grid.

(1) All-layer linear probes: ``ProbeClassifier(head="linear")`` against
    ``StandardScaler + LogisticRegression(C=1.0)`` per layer, the layers spread over the same
    number of workers as probekit's threads (joblib's process pool, each worker's BLAS held to
    one thread with threadpoolctl), on the same features (synthetic: 13 layers x 16k train
    samples x 384 features with layer-dependent signal, or a FeatureCache given with
    ``--cache``). Both stop at 100 iterations or a largest gradient entry below ``tol=1e-4``.
    Repeats are interleaved (scikit-learn, probekit, scikit-learn, ...); the table gives
    medians, and both solvers' iteration counts per layer are printed. Reports times, their
    ratio and the largest per-layer difference in held-out accuracy. Target: >= 2x faster at
    <= 0.5 points.
(2) The vectorised grid: a 3 lr x 7 weight-decay grid of a head (ALF / LAYA) trained in one
    vectorised pass against the same 21 configurations trained one after the other (same
    seed, same split, same epochs). Target: >= 3x.

Usage::

    python benchmarks/bench_probes.py                  # both, synthetic data
    python benchmarks/bench_probes.py --cache runs/x/cache --skip-grid
    python benchmarks/bench_probes.py --threads 1 --grid-heads laya alf
    python benchmarks/bench_probes.py --skip-linear --grid-heads laya --profile-grid
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
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


def _sk_layer(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, max_iter: int
) -> tuple[float, int]:
    """One layer's scikit-learn probe on a single BLAS thread: (held-out accuracy, iterations)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter=100
        scaler = StandardScaler().fit(xtr)
        clf = LogisticRegression(C=1.0, max_iter=max_iter, tol=1e-4)
        clf.fit(scaler.transform(xtr), ytr)
        return float(clf.score(scaler.transform(xte), yte)), int(clf.n_iter_.max())


def bench_linear(
    x: np.ndarray,
    y: np.ndarray,
    test_frac: float,
    repeat: int,
    jobs: int,
    converged: bool = False,
) -> list[dict[str, Any]]:
    """Time and per-layer held-out accuracy of both sides on one stratified split.

    With ``converged``, also scikit-learn with ``max_iter=1000`` (no timing target): where
    scikit-learn stops at its default 100 iterations unconverged, the default estimator
    (whose final probes start from the validation split's solution) lands closer to this.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import train_test_split

    from probekit.estimator import ProbeClassifier

    tr, te = train_test_split(np.arange(len(y)), test_size=test_frac, stratify=y, random_state=0)
    xtr, xte, ytr, yte = x[tr], x[te], y[tr], y[te]
    n_layers = x.shape[1]
    layers_tr = [np.ascontiguousarray(xtr[:, i]) for i in range(n_layers)]
    layers_te = [np.ascontiguousarray(xte[:, i]) for i in range(n_layers)]
    pool = Parallel(n_jobs=jobs, backend="loky")

    def sklearn_layers(max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
        out = pool(
            delayed(_sk_layer)(a, ytr, b, yte, max_iter)
            for a, b in zip(layers_tr, layers_te, strict=True)
        )
        return np.array([o[0] for o in out]), np.array([o[1] for o in out])

    def ours(**params: Any) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        def run() -> tuple[np.ndarray, np.ndarray]:
            clf = ProbeClassifier(
                "linear", class_weight=None, device="cpu", random_state=0, **params
            )
            clf.fit(xtr, ytr)
            return (clf.predict_layers(xte) == yte[:, None]).mean(0), np.asarray(clf.n_iter_)

        return run

    variants = {
        f"sklearn LogisticRegression, {jobs} joblib workers over {n_layers} layers": sklearn_layers,
        "probekit linear, all layers (val_size=0)": ours(val_size=0),
        "probekit linear, default (20% val, layer pick, refit)": ours(),
    }
    for fn in variants.values():  # warm-up: imports, joblib's worker processes
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    outs: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    names = list(variants)
    t_sk, acc_sk = statistics.median(times[names[0]]), outs[names[0]][0]
    rows = []
    for name in names:
        t, (acc, iters) = statistics.median(times[name]), outs[name]
        rows.append(
            {
                "what": name,
                "seconds": t,
                "ratio": t_sk / t,
                "max_diff_pp": 100 * float(np.abs(acc - acc_sk).max()),
                "runs": [round(v, 2) for v in times[name]],
            }
        )
        print(
            f"{name}: held-out accuracy per layer {np.round(acc, 4).tolist()}; "
            f"iterations per layer {np.asarray(iters).tolist()}"
        )
    if converged:
        t_conv, (acc_conv, it_conv) = _timed(lambda: sklearn_layers(1000), 1)
        print(
            f"sklearn max_iter=1000: accuracy {np.round(acc_conv, 4).tolist()}; iterations "
            f"{it_conv.tolist()}"
        )
        rows.append(
            {
                "what": "sklearn, max_iter=1000 (vs probekit default)",
                "seconds": t_conv,
                "ratio": t_sk / t_conv,
                "max_diff_pp": 100 * float(np.abs(outs[names[2]][0] - acc_conv).max()),
            }
        )
    return rows


GEMM_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::matmul",
    "aten::linear",
    "aten::einsum",
    "aten::_softmax",
    "aten::_log_softmax",
)


def profile_grid(head: str, grid: Callable[[], Any], one_by_one: Callable[[], Any]) -> None:
    """Where the time goes, grid vs one config after another (torch.profiler, CPU).

    Splits self CPU time into the arithmetic that batching cannot shrink (matmuls and
    softmaxes: the same FLOPs in both) and the rest (per-op dispatch, elementwise, optimiser),
    which is all that vmap can save; ``T_seq / arithmetic_grid`` bounds the grid's speed-up.
    """
    from torch.profiler import ProfilerActivity, profile

    totals = {}
    for name, fn in (("one by one", one_by_one), ("grid", grid)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            wall = time.perf_counter() - t0
        events = prof.key_averages()
        arith = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
        calls = sum(e.count for e in events if e.key.startswith("aten::"))
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        totals[name] = (wall, arith, total, calls)
        print(
            f"\n== profile {head}, {name}: {wall:.2f} s wall (profiled), {calls} aten calls, "
            f"self CPU {total:.2f} s, of it matmul/softmax {arith:.2f} s =="
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    (ws, a_s, _, c_s), (wg, a_g, _, c_g) = totals["one by one"], totals["grid"]
    print(
        f"{head}: aten calls {c_s} -> {c_g} ({c_s / max(c_g, 1):.1f}x fewer); matmul/softmax "
        f"self time {a_s:.2f} s -> {a_g:.2f} s; speed-up bound if the grid had no overhead "
        f"at all: {ws / max(a_g, 1e-9):.2f}x (profiled {ws / wg:.2f}x)"
    )


def bench_grid(
    head: str,
    n: int,
    n_layers: int,
    dim: int,
    n_classes: int,
    epochs: int,
    repeat: int,
    profile: bool = False,
) -> list[dict[str, Any]]:
    """The 3 x 7 grid in one vectorised pass vs config after config (search phase only)."""
    from probekit.estimator import HEAD_DEFAULTS
    from probekit.probes import create_probe
    from probekit.train import train_grid

    x, y = synthetic_layers(n, n_layers, dim, n_classes, seed=1)
    xt = torch.from_numpy(x)
    xt = (xt - xt.mean(0)) / xt.std(0)
    if head == "alf":
        xt = torch.nn.functional.normalize(xt, dim=-1)
    yt = torch.from_numpy(y)
    lrs, wds = [1e-1, 1e-2, 1e-3], [float(w) for w in np.logspace(-6, 0, 7)]
    base = dataclasses.replace(
        HEAD_DEFAULTS[head],
        epochs=epochs,
        val_size=0.2,
        patience=None,
        refit=False,
        seed=0,
        device="cpu",
    )

    def build(**kw: Any) -> torch.nn.Module:
        return create_probe(head, n_layers=n_layers, dims=dim, n_classes=n_classes, **kw)

    def grid() -> Any:
        return train_grid(
            build, xt, yt, n_classes, dataclasses.replace(base, lr=lrs, weight_decay=wds)
        )

    def one_by_one() -> list[Any]:
        return [
            train_grid(
                build, xt, yt, n_classes, dataclasses.replace(base, lr=[lr], weight_decay=[wd])
            )
            for lr in lrs
            for wd in wds
        ]

    warm = dataclasses.replace(base, epochs=1, lr=lrs[:2], weight_decay=wds[:1])
    train_grid(build, xt[:256], yt[:256], n_classes, warm)
    t_grids, t_seqs = [], []
    for _ in range(repeat):  # interleaved
        t0 = time.perf_counter()
        res = grid()
        t_grids.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        solo = one_by_one()
        t_seqs.append(time.perf_counter() - t0)
    t_grid, t_seq = statistics.median(t_grids), statistics.median(t_seqs)
    if profile:
        profile_grid(head, grid, one_by_one)
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
            "runs": [round(v, 2) for v in t_seqs],
            "ratio": 1.0,
            "max_diff_pp": 0.0,
        },
        {
            "what": f"{label}, vectorised (vmap)",
            "seconds": t_grid,
            "runs": [round(v, 2) for v in t_grids],
            "ratio": t_seq / t_grid,
            "max_diff_pp": 100 * float(diffs.max()),
        },
    ]


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["what"]) for r in rows)
    print(
        f"{'benchmark':<{width}}  {'median s':>8}  {'speed-up':>8}  {'max acc diff (pp)':>17}"
        "  runs (s)"
    )
    for r in rows:
        what, sec, ratio, diff = r["what"], r["seconds"], r["ratio"], r["max_diff_pp"]
        print(f"{what:<{width}}  {sec:8.2f}  {ratio:7.2f}x  {diff:17.2f}  {r.get('runs', '')}")


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
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs (median)")
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
    p.add_argument("--profile-grid", action="store_true", help="torch.profiler of each grid")
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
        rows += bench_linear(x, y, 0.2, args.repeat, torch.get_num_threads(), args.converged)
    if not args.skip_grid:
        for head in args.grid_heads:
            rows += bench_grid(
                head,
                args.grid_n,
                args.grid_layers,
                args.grid_dim,
                4,
                args.grid_epochs,
                args.repeat,
                args.profile_grid,
            )
    print_table(rows)
    for r in rows:
        if r["what"].startswith("probekit linear, all"):
            ok = r["ratio"] >= 2 and r["max_diff_pp"] <= 0.5
            print(
                f"target linear >= 2x scikit-learn (same workers) at <= 0.5 pp: {r['ratio']:.2f}x,"
                f" {r['max_diff_pp']:.2f} pp -> {'met' if ok else 'NOT met'}"
            )
        if "vectorised" in r["what"]:
            print(
                f"target grid >= 3x one config at a time ({r['what'].split(':')[0]}): "
                f"{r['ratio']:.2f}x -> {'met' if r['ratio'] >= 3 else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
