"""Out-of-core probe training: peak memory and time of ``probekit fit`` against the cache size.

Writes synthetic caches of the given sizes (same layers and width, more samples; shard by
shard with ``CacheWriter``, never the whole cache in memory), runs
``probekit fit --probes linear,laya --memory-budget 512MB`` on each in a fresh process, and prints
the peak resident set (``VmHWM`` of that process: its own, not its parent's) and the wall time per size, the ratio of
the largest to the smallest peak (target <= 1.5: flat) and time per GB (target: at most linear
growth). Caches are deleted afterwards.

Usage::

    python benchmarks/bench_scale.py                           # 0.5, 1, 2, 4 GB
    python benchmarks/bench_scale.py --sizes 0.25,0.5 --laya-epochs 1 --keep

``--laya-epochs`` shortens LAYA's recipe (50 epochs with early stopping) on a busy CPU; the
linear head always runs its full recipe (per-layer L-BFGS, validation, refit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_cache(path: Path, n: int, n_layers: int, dim: int, seed: int = 0) -> None:
    """A float32 cache of ``n`` samples, ``n_layers`` layers of width ``dim``, pooling ``cls``,
    two classes with a signal growing with depth."""
    from probekit.cache import CacheWriter

    manifest = {
        "model": {"id": "synthetic"},
        "layers": [{"name": f"layers.{i}", "dim": dim} for i in range(n_layers)],
        "poolings": ["cls"],
        "dtype": "float32",
        "dataset": {
            "name": "synthetic",
            "fingerprint": f"{n}-{seed}",
            "n": n,
            "label_names": ["a", "b"],
        },
    }
    w = CacheWriter.create(path, manifest, n)
    direction = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    for i in w.missing_shards():
        start, stop = w.shard_range(i)
        rng = np.random.default_rng([seed, i])
        y = rng.integers(0, 2, stop - start)
        feats = {}
        for layer in range(n_layers):
            x = rng.standard_normal((stop - start, dim), dtype=np.float32)
            x += np.outer(2.0 * (y - 0.5) * (0.3 + layer / n_layers), direction)
            feats[f"layers.{layer}.cls"] = x
        w.write_shard(i, feats, y)
    w.finalize()


def child(args: argparse.Namespace) -> None:
    """Run ``probekit fit`` in this process and print its peak RSS and time as JSON."""
    from probekit._utils.memory import peak_rss
    from probekit.cli import main
    from probekit.runs import config as runs

    if args.laya_epochs:
        runs.CPU_PROBE_PARAMS["laya"] = {"epochs": args.laya_epochs}
    t0 = time.perf_counter()
    code = main(
        [
            "fit",
            "--cache",
            args.cache,
            "--probes",
            args.probes,
            "--out",
            args.out,
            "--memory-budget",
            args.memory_budget,
            "--bootstrap",
            "100",
        ]
    )
    seconds = time.perf_counter() - t0
    peak = peak_rss()  # VmHWM: this process's own peak (ru_maxrss includes the parent's)
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="0.5,1,2,4", help="cache sizes in GB (10^9 bytes)")
    p.add_argument("--layers", type=int, default=33)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--probes", default="linear,laya")
    p.add_argument("--memory-budget", default="512MB")
    p.add_argument("--laya-epochs", type=int, default=0, help="0: LAYA's own recipe")
    p.add_argument("--dir", default=None, help="where caches go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the caches")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    root = Path(args.dir or tempfile.mkdtemp(prefix="probekit-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    need = sum(float(s) for s in args.sizes.split(",")) * 1e9 * 1.05
    free = shutil.disk_usage(root).free
    if free < need:
        sys.exit(
            f"bench_scale: {root} has {free / 1e9:.1f} GB free, the caches need {need / 1e9:.1f}"
        )
    row = args.layers * args.dim * 4
    rows = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        for gb in (float(s) for s in args.sizes.split(",")):
            n = int(gb * 1e9 // row)
            cache = root / f"cache-{gb:g}GB"
            t0 = time.perf_counter()
            write_cache(cache, n, args.layers, args.dim)
            write_s = time.perf_counter() - t0
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--cache",
                    str(cache),
                    "--out",
                    str(root / f"fit-{gb:g}GB"),
                    "--probes",
                    args.probes,
                    "--memory-budget",
                    args.memory_budget,
                    "--laya-epochs",
                    str(args.laya_epochs),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            out = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}
            if out.get("code") != 0:
                sys.exit(f"probekit fit failed on {cache}:\n{res.stderr[-3000:]}")
            metrics = json.loads((root / f"fit-{gb:g}GB" / "metrics.json").read_text())
            accs = {h: round(e["accuracy"], 3) for h, e in metrics["heads"].items()}
            rows.append((gb, n, out["peak_rss"] / 1e9, out["seconds"], write_s, accs))
            print(
                f"{gb:5g} GB  n={n:7d}  peak RSS {out['peak_rss'] / 1e9:5.2f} GB  fit "
                f"{out['seconds']:7.1f} s ({out['seconds'] / gb:6.1f} s/GB)  write {write_s:5.1f} s"
                f"  test accuracy {accs}",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(cache)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    peaks = [r[2] for r in rows]
    per_gb = [r[3] / r[0] for r in rows]
    print(
        f"\nlayers={args.layers} dim={args.dim} probes={args.probes} "
        f"--memory-budget {args.memory_budget} laya_epochs={args.laya_epochs or 'recipe'}"
    )
    print("size GB      " + " ".join(f"{r[0]:7g}" for r in rows))
    print("peak RSS GB  " + " ".join(f"{x:7.2f}" for x in peaks))
    print("fit s        " + " ".join(f"{r[3]:7.1f}" for r in rows))
    print("fit s / GB   " + " ".join(f"{x:7.1f}" for x in per_gb))
    ratio = max(peaks) / min(peaks)
    print(
        f"peak RSS largest / smallest: {ratio:.2f} (target <= 1.5): "
        f"{'flat' if ratio <= 1.5 else 'NOT flat'}"
    )
    growth = per_gb[-1] / per_gb[0]
    print(f"time per GB, largest / smallest: {growth:.2f} (<= ~1: at most linear)")


if __name__ == "__main__":
    main()
