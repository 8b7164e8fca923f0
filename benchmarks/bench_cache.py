"""Cost of verified cache reads: digest checks on versus the ``verify=False`` opt-out.

Every read of a :class:`~probekit.cache.FeatureCache` hashes the bytes it reads (each tensor
block has its own XXH3-128 digest in the shard's ``.json``), the first time this cache object
reads them. This benchmark opens the cache and loads (a) one layer, (b) every layer, with and without
the checks, on a fresh ``FeatureCache`` each time (so every repeat pays the first-use hashing),
interleaving the two variants, and prints the medians and their ratio. Target: verified
<= 1.10x unverified. It also reports a second load on the same object (blocks already checked)
and the time XXH3-128 alone takes over the same number of bytes in memory (the floor of the
extra cost).

Build the bundled MiniLM cache first (about 5.6k words, 7 layers x cls+mean x 384)::

    python -m probekit extract --model bundled:minilm-l6 --data bundled:vader-valence --out /tmp/x
    python benchmarks/bench_cache.py /tmp/x --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import xxhash

from probekit.cache import FeatureCache


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(path: str, repeats: int, layers: object) -> dict[str, float]:
    """Medians (seconds) of open + load with and without checks, interleaved, and their ratio."""
    runs: dict[str, list[float]] = {"verified": [], "unverified": [], "verified, 2nd load": []}
    variants = {
        "verified": lambda: FeatureCache.open(path).load(layers=layers),
        "unverified": lambda: FeatureCache.open(path, verify=False).load(layers=layers),
    }
    for fn in variants.values():  # warm the page cache and the allocator
        fn()
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            runs[name].append(_time(variants[name]))
        cache = FeatureCache.open(path)
        cache.load(layers=layers)
        runs["verified, 2nd load"].append(_time(lambda c=cache: c.load(layers=layers)))
    out = {name: statistics.median(ts) for name, ts in runs.items()}
    out["ratio"] = out["verified"] / out["unverified"]
    return out


def hash_floor(nbytes: int, repeats: int) -> float:
    """Median seconds of XXH3-128 over ``nbytes`` already in memory."""
    buf = memoryview(bytearray(b"\x5a") * nbytes)  # written pages, not the shared zero page
    return statistics.median(_time(lambda: xxhash.xxh3_128_hexdigest(buf)) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", help="a finished cache folder")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (copying)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = FeatureCache.open(args.cache)
    mib = sum(f.stat().st_size for f, _, _ in cache._shards) / 2**20
    print(
        f"{cache}\n{len(cache._shards)} shards, {mib:.1f} MiB; medians of {args.repeats} "
        "interleaved repeats, each on a freshly opened cache"
    )
    print(
        f"{'read':<12} {'verified':>10} {'unverified':>11} {'ratio':>7} {'2nd load':>10} "
        f"{'xxh3 alone':>11}"
    )
    for label, layers in (("one layer", [-1]), ("all layers", None)):
        r = bench(args.cache, args.repeats, layers)
        sel, pools = cache.select(layers)
        nbytes = sum(
            f.entries[f"{cache.layer_names[j]}.{p}"][3]
            - f.entries[f"{cache.layer_names[j]}.{p}"][2]
            for f in cache._files
            for j in sel
            for p in pools
        )
        floor = hash_floor(nbytes, args.repeats)
        print(
            f"{label:<12} {r['verified'] * 1e3:>8.1f}ms {r['unverified'] * 1e3:>9.1f}ms "
            f"{r['ratio']:>6.2f}x {r['verified, 2nd load'] * 1e3:>8.1f}ms "
            f"{floor * 1e3:>9.1f}ms"
        )


if __name__ == "__main__":
    main()
