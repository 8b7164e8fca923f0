"""Extraction with 1 and with N processes (``torchrun``) on the bundled MiniLM: throughput and identity.

Runs ``probekit extract`` on ``bundled:vader-valence`` (``--limit`` words, mean pooling) three
ways, each into a fresh cache folder, in fresh processes:

* ``1 process``: one process using every core (``OMP_NUM_THREADS`` = cores);
* ``N processes``: ``python -m torch.distributed.run --standalone --nproc-per-node N -m probekit
  extract ...`` (gloo on CPU), each rank with cores / N threads;
* ``1 process, 1 thread`` (the identity reference for the ranks, which run one thread each
  when N = cores).

It prints the wall time of each command (process start, imports and model load included, which
is the cost a user sees) and the samples per second, then compares every shard file of the
N-process cache with the 1-process ones, byte for byte (the ``.json`` beside each shard records
the thread count that computed it, so only the data files can match across thread counts). On a
2-core machine expect parity between 1 and 2 processes: the point is that it runs and gives the
same features; the speed-up comes with one GPU per rank.

Usage::

    python benchmarks/bench_extract_ranks.py [--limit 2048] [--nproc 2] [--shard-size 256]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, nproc: int, threads: int, args: argparse.Namespace) -> float:
    """Wall seconds of one ``probekit extract`` into ``out``."""
    cli = [
        "extract",
        "--model",
        "bundled:minilm-l6",
        "--data",
        "bundled:vader-valence",
        "--limit",
        str(args.limit),
        "--pooling",
        "mean",
        "--batch-size",
        str(args.batch_size),
        "--shard-size",
        str(args.shard_size),
        "--out",
        str(out),
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "probekit", *cli]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "probekit",
            *cli,
        ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall


def shards(cache: Path) -> dict[str, bytes]:
    """The shard data files (each shard's ``.json`` also records the thread count that computed
    it, which differs between a 1-process run on every core and 1-thread ranks)."""
    return {p.name: p.read_bytes() for p in sorted((cache / "shards").glob("*.safetensors"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=2048, help="words of bundled:vader-valence")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=256)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    per_rank = max(1, cores // args.nproc)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [
            ("1 process", root / "one", 1, cores),
            (f"{args.nproc} processes", root / "ranks", args.nproc, per_rank),
            (f"1 process, {per_rank} thread(s)", root / "one_thin", 1, per_rank),
        ]
        print(f"bundled MiniLM, {args.limit} words, shards of {args.shard_size}, {cores} cores")
        print(f"{'run':<26s} {'threads':>7s} {'wall s':>8s} {'samples/s':>10s}")
        for name, out, nproc, threads in rows:
            wall = run(out, nproc, threads, args)
            print(f"{name:<26s} {threads:>7d} {wall:>8.1f} {args.limit / wall:>10.1f}")
        ranks = shards(root / "ranks")
        for name, out, _, _ in (rows[0], rows[2]):
            ref = shards(out)
            same = sum(ranks.get(k) == v for k, v in ref.items())
            verdict = "bitwise equal" if same == len(ref) == len(ranks) else "DIFFERENT"
            print(
                f"{args.nproc}-process cache vs {name}: {same}/{len(ref)} shard data files equal "
                f"({verdict})"
            )


if __name__ == "__main__":
    main()
