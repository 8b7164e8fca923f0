"""Bootstrap intervals: the vectorised ``probekit.analysis.stats`` against the per-resample loop.

The loop is :func:`bootstrap_ci` below (one ``sklearn.metrics.balanced_accuracy_score``
call per resample), which ``probekit fit`` used for every head and every layer; the vectorised
version draws the same ``(R, N)`` resample matrix and scores all rows with per-class
``np.bincount`` s. Both are timed on the same labels, interleaved (loop, vectorised, loop, ...),
and the table gives medians of wall and process-CPU time, and whether the intervals are equal.
A third row times the paired bootstrap of two classifiers (vectorised) against its naive loop.

Usage::

    python benchmarks/bench_bootstrap.py                      # N=1500 test samples, R=1000
    python benchmarks/bench_bootstrap.py --n 1500 --classes 2 10 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score

from probekit.analysis.stats import bootstrap_interval, paired_bootstrap


def bootstrap_ci(y_true, y_pred, metric, n, seed):
    """The naive reference: one ``metric`` call per resample of the same ``(n, N)`` positions."""
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(n, len(y_true)))
    values = np.array([metric(y_true[i], y_pred[i]) for i in idx])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def naive_paired(y, a, b, r, seed):
    idx = np.random.default_rng(seed).integers(0, len(y), size=(r, len(y)))
    d = np.array(
        [balanced_accuracy_score(y[i], a[i]) - balanced_accuracy_score(y[i], b[i]) for i in idx]
    )
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi), float(np.mean(d <= 0))


def vect_paired(y, a, b, r, seed):
    res = paired_bootstrap(y, a, b, n_resamples=r, seed=seed)
    return res.lo, res.hi, res.p_not_better


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="test samples")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds")
    ap.add_argument("--target", type=float, default=50.0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"N={args.n} test samples, R={args.resamples} resamples, {args.repeats} interleaved "
        "rounds after a warm-up; medians (shared machine: wall is noisy, CPU time steadier)"
    )
    head = (
        f"{'classes':>7} {'step':<26} {'loop s':>8} {'vect s':>8} {'x wall':>7} "
        f"{'x cpu':>7}  same result"
    )
    print(head)
    print("-" * len(head))
    worst = float("inf")
    for k in args.classes:
        rng = np.random.default_rng(k)
        y = rng.integers(0, k, args.n)
        a = np.where(rng.random(args.n) < 0.8, y, rng.integers(0, k, args.n))
        b = np.where(rng.random(args.n) < 0.75, y, rng.integers(0, k, args.n))
        steps = {
            "balanced-accuracy interval": (
                lambda y=y, a=a: bootstrap_ci(y, a, balanced_accuracy_score, args.resamples, 0),
                lambda y=y, a=a: bootstrap_interval(y, a, n_resamples=args.resamples, seed=0),
            ),
            "paired bootstrap": (
                lambda y=y, a=a, b=b: naive_paired(y, a, b, args.resamples, 0),
                lambda y=y, a=a, b=b: vect_paired(y, a, b, args.resamples, 0),
            ),
        }
        for name, (loop, vect) in steps.items():
            loop(), vect()  # warm-up
            runs: dict[str, list[tuple[float, float, object]]] = {"loop": [], "vect": []}
            for _ in range(args.repeats):
                runs["loop"].append(_timed(loop))
                runs["vect"].append(_timed(vect))
            wall = {v: statistics.median(r[0] for r in rs) for v, rs in runs.items()}
            cpu = {v: statistics.median(r[1] for r in rs) for v, rs in runs.items()}
            same = np.allclose(runs["loop"][0][2], runs["vect"][0][2], rtol=1e-12, atol=0)
            xw, xc = wall["loop"] / wall["vect"], cpu["loop"] / max(cpu["vect"], 1e-9)
            if name.startswith("balanced"):
                worst = min(worst, xw)
            print(
                f"{k:>7} {name:<26} {wall['loop']:8.3f} {wall['vect']:8.4f} {xw:7.0f} "
                f"{xc:7.0f}  {same}"
            )
    print(
        f"target: balanced-accuracy interval >= {args.target:.0f}x the loop (wall, medians): "
        f"{worst:.0f}x -> {'met' if worst >= args.target else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
