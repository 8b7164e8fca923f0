"""Token-level rows: word extraction against sentence extraction, and a 200k-word-row fit under a
memory budget against the same fit in memory.

(a) Extraction throughput, in words per second, of the bundled MiniLM (``bundled:minilm-l6``) over
the sentences of ``bundled:wordnet-pos``:

* ``sentence``: ``extract(unit="sample", pooling="mean")``: the baseline, one row per sentence
  (the texts are the words joined by spaces, so both variants see the same words);
* ``word``: ``extract(unit="word", word_pooling="mean")``: one row per labelled word, the words
  tokenized with ``is_split_into_words`` and each word's sub-words pooled in the forward hook.

Both run end to end (tokenizer in extract's prefetch thread, hooks, pooling, shard writes and
finalize into a fresh temporary folder) on the same model and data, one warm-up each, then
``--repeats`` interleaved rounds (sentence, word, sentence, word, ...) so that a change in the
machine's load hits both alike. The table gives medians of wall time, user and kernel CPU seconds
and minor page faults (``resource.getrusage`` of this process, all threads), and the ratio of the
word variant's throughput to the sentence variant's (target >= 0.9x).

(b) Fit of a linear probe (per-layer L-BFGS, layer selection, refit) on a synthetic word cache of
``--rows`` rows (5-35 words per sentence) x 7 layers x ``--dim`` float32 features, written shard
by shard through the real :class:`~probekit.cache.CacheWriter` (samples and positions included):

* ``in memory``: ``ProbeClassifier(stream=False)``: the cache loaded whole (the baseline);
* ``budget``: ``ProbeClassifier(memory_budget=--fit-max-memory)``: the rows stream from the
  memory-mapped cache (the features are larger than the budget).

Each fit runs in a fresh process (interleaved rounds); the table gives wall time, the child's user
and kernel CPU seconds and page faults, and its peak RSS growth over the RSS after imports
(``probekit._utils.memory.peak_rss`` after ``reset_peak_rss``: ``ru_maxrss`` would carry a
parent's peak over).

Usage::

    python benchmarks/bench_tokens.py            # about 4-5 minutes on a quiet 2-core CPU
    python benchmarks/bench_tokens.py --quick    # smoke run, about a minute
    python benchmarks/bench_tokens.py --only fit --rows 400000 --dim 384
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from probekit import extract, load_data, load_model  # noqa: E402
from probekit.cache import CacheWriter  # noqa: E402

# ----------------------------------------------------------------------------- machine


def machine() -> str:
    """CPU model, cores, torch threads and load average."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - not Linux
        pass
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        load = "n/a"
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, load average {load}"
    )


def usage(who: int = resource.RUSAGE_SELF) -> dict[str, float]:
    r = resource.getrusage(who)
    return {"user": r.ru_utime, "sys": r.ru_stime, "minflt": r.ru_minflt, "majflt": r.ru_majflt}


def delta(r0: dict[str, float], r1: dict[str, float]) -> dict[str, float]:
    return {k: r1[k] - r0[k] for k in r0}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ----------------------------------------------------------------------------- (a) extraction


def extraction_section(args: argparse.Namespace) -> None:
    model = load_model("bundled:minilm-l6")
    data = load_data("bundled:wordnet-pos", label_column="upos", limit=args.sentences)
    assert data.units is not None
    n_words = data.units.n_words
    variants: dict[str, dict[str, Any]] = {
        "sentence": {"unit": "sample", "pooling": "mean"},
        "word": {"unit": "word", "word_pooling": "mean"},
    }
    root = Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    rows: dict[str, int] = {}
    precision = ""

    def run(name: str, k: int) -> dict[str, float]:
        nonlocal precision
        out = root / f"{name}-{k}"
        r0, t0 = usage(), time.perf_counter()
        cache = extract(
            model,
            data,
            out,
            batch_size=args.batch_size,
            precision=args.precision,
            progress=False,
            **variants[name],
        )
        wall = time.perf_counter() - t0
        r = delta(r0, usage())
        rows[name], precision = len(cache), str(cache.manifest["precision"])
        shutil.rmtree(out, ignore_errors=True)
        return {"wall": wall, **r}

    print(
        f"\n== (a) extraction: bundled:minilm-l6 on {len(data)} sentences of bundled:wordnet-pos "
        f"({n_words} words, batch {args.batch_size}, precision {args.precision}); warm-up, then "
        f"{args.repeats} interleaved rounds, medians =="
    )
    try:
        for name in variants:
            run(name, -1)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for k in range(args.repeats):
            for name in variants:
                runs[name].append(run(name, k))
                r = runs[name][-1]
                print(
                    f"  run {k}: {name:<8} {r['wall']:6.2f} s wall, {r['user']:6.2f} s user, "
                    f"{r['sys']:5.2f} s kernel, {r['minflt'] / 1e3:7.1f} k faults",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: medians(rs) for name, rs in runs.items()}
    base = med["sentence"]
    head = (
        f"{'variant':<9} {'rows':>6} {'words/s':>8} {'x sent':>7} {'(cpu)':>6} {'best x':>7} "
        f"{'wall s':>7} {'user s':>7} {'kernel s':>8} {'faults':>8}"
    )
    print(head)
    print("-" * len(head))
    best_base = min(r["wall"] for r in runs["sentence"])
    for name, m in med.items():
        cpu, base_cpu = m["user"] + m["sys"], base["user"] + base["sys"]
        best = min(r["wall"] for r in runs[name])
        print(
            f"{name:<9} {rows[name]:>6} {n_words / m['wall']:8.0f} {base['wall'] / m['wall']:7.2f} "
            f"{base_cpu / cpu:6.2f} {best_base / best:7.2f} {m['wall']:7.2f} {m['user']:7.2f} "
            f"{m['sys']:8.2f} {m['minflt'] / 1e3:7.1f}k"
        )
    ratio = base["wall"] / med["word"]["wall"]
    print(
        f"  words/s: the {n_words} words / median wall; x sent: sentence wall / this wall "
        f"(medians); (cpu): the same from user + kernel seconds;\n  best x: from the fastest "
        f"runs; precision resolved: {precision}.\n"
        f"target: word throughput >= 0.9x sentence: {ratio:.2f}x "
        f"({'met' if ratio >= 0.9 else 'NOT met'})"
    )


# ----------------------------------------------------------------------------- (b) fit


def write_word_cache(path: Path, rows: int, n_layers: int, dim: int, seed: int = 0) -> int:
    """A synthetic word cache of about ``rows`` rows: sentences of 5-35 words, 3 classes, each
    layer's first feature shifted by the class (more with depth), shards of 1,000 sentences."""
    rng = np.random.default_rng(seed)
    n_sentences = max(1, rows // 20)
    lengths = rng.integers(5, 36, n_sentences)
    shard = 1000
    shard_rows = [int(lengths[s : s + shard].sum()) for s in range(0, n_sentences, shard)]
    manifest = {
        "model": {"id": "synthetic"},
        "layers": [{"name": f"layers.{i}", "dim": dim} for i in range(n_layers)],
        "poolings": ["mean"],
        "dtype": "float32",
        "unit": "word",
        "word_pooling": "mean",
        "dataset": {
            "name": "words",
            "fingerprint": f"bench-{seed}-{rows}-{dim}",
            "n": n_sentences,
            "label_names": ["NOUN", "VERB", "DET"],
        },
    }
    w = CacheWriter.create(path, manifest, sum(shard_rows), shard_size=shard, shard_rows=shard_rows)
    for i in w.missing_shards():
        sents = np.arange(i * shard, min((i + 1) * shard, n_sentences))
        samples = np.repeat(sents, lengths[sents])
        positions = np.concatenate([np.arange(k) for k in lengths[sents]])
        r = np.random.default_rng([seed, i])
        y = r.integers(0, 3, samples.size)
        feats = {}
        for li in range(n_layers):
            x = r.normal(size=(samples.size, dim)).astype(np.float32)
            x[:, 0] += (li + 1) * 0.3 * (y - 1)
            feats[f"layers.{li}.mean"] = x
        w.write_shard(i, feats, y, samples, positions)
    return len(w.finalize())


FIT_CHILD = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from probekit._utils.memory import peak_rss, reset_peak_rss, rss
from probekit.cache import FeatureCache
from probekit.estimator import ProbeClassifier
cache = FeatureCache.open(sys.argv[1])
kw = {"random_state": 0}
if sys.argv[2] == "memory":
    kw["stream"] = False
else:
    kw["memory_budget"] = sys.argv[2]
clf = ProbeClassifier("linear", **kw)
reset_peak_rss()
base = rss()
t0 = time.perf_counter()
clf.fit(cache)
wall = time.perf_counter() - t0
print("FIT " + json.dumps({"fit_wall": wall, "growth": peak_rss() - base,
    "streamed": bool(clf._should_stream(cache, clf._budget())) if "memory_budget" in kw else False,
    "layer": int(clf.selected_layer_), "score": float(clf.best_score_)}))
"""


def fit_section(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-tokens-fit-"))
    try:
        t0 = time.perf_counter()
        n = write_word_cache(root / "cache", args.rows, 7, args.dim)
        feat_mb = n * 7 * args.dim * 4 / 2**20
        print(
            f"\n== (b) linear probe fit: synthetic word cache, {n} rows x 7 layers x {args.dim} "
            f"float32 ({feat_mb:.0f} MiB of features, written in {time.perf_counter() - t0:.1f} s); "
            f"a fresh process per fit, {args.fit_repeats} interleaved rounds, medians =="
        )
        variants = {"in memory": "memory", f"budget {args.fit_max_memory}": args.fit_max_memory}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        info: dict[str, dict[str, Any]] = {}
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for k in range(args.fit_repeats):
            for name, how in variants.items():
                r0, t1 = usage(resource.RUSAGE_CHILDREN), time.perf_counter()
                res = subprocess.run(
                    [sys.executable, "-c", FIT_CHILD, str(root / "cache"), how],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                wall = time.perf_counter() - t1
                r = delta(r0, usage(resource.RUSAGE_CHILDREN))
                line = [x for x in res.stdout.splitlines() if x.startswith("FIT ")]
                if not line:
                    raise RuntimeError(f"{name} failed: {res.stderr.strip()[-2000:]}")
                out = json.loads(line[0][4:])
                info[name] = out
                runs[name].append(
                    {"fit_wall": out["fit_wall"], "growth": out["growth"], "proc": wall, **r}
                )
                print(
                    f"  run {k}: {name:<14} fit {out['fit_wall']:6.1f} s, process {wall:6.1f} s, "
                    f"{r['user']:6.1f} s user, {r['sys']:5.1f} s kernel, peak RSS growth "
                    f"{out['growth'] / 2**20:7.0f} MiB",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: medians(rs) for name, rs in runs.items()}
    base = med["in memory"]
    head = (
        f"{'variant':<14} {'streamed':>8} {'fit s':>7} {'x mem':>6} {'process s':>9} "
        f"{'user s':>7} {'kernel s':>8} {'faults':>8} {'peak RSS':>9} {'x mem':>6} "
        f"{'layer':>5} {'val bacc':>8}"
    )
    print(head)
    print("-" * len(head))
    for name, m in med.items():
        print(
            f"{name:<14} {str(info[name]['streamed']):>8} {m['fit_wall']:7.1f} "
            f"{m['fit_wall'] / base['fit_wall']:6.2f} {m['proc']:9.1f} {m['user']:7.1f} "
            f"{m['sys']:8.1f} {m['minflt'] / 1e6:7.2f}M {m['growth'] / 2**20:5.0f} MiB "
            f"{m['growth'] / base['growth']:6.2f} {info[name]['layer']:>5} "
            f"{info[name]['score']:8.4f}"
        )
    print(
        "  fit s: ProbeClassifier.fit alone; x mem: this / in memory (time, then peak RSS); "
        "process: the whole child (imports, opening the cache);\n  peak RSS: the child's peak "
        "resident set over its RSS before the fit; layer, val bacc: the selected layer and its "
        "validation balanced accuracy."
    )


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--only", default="extract,fit", help="sections: extract, fit")
    ap.add_argument("--sentences", type=int, default=512, help="wordnet-pos sentences, (a)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds, (a)")
    ap.add_argument("--batch-size", type=int, default=64, help="extraction batch size, (a)")
    ap.add_argument("--precision", default="auto", help="extract precision, (a)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rows", type=int, default=200_000, help="word rows of the cache, (b)")
    ap.add_argument("--dim", type=int, default=128, help="features per layer, (b)")
    ap.add_argument(
        "--fit-max-memory",
        "--memory-budget",
        default="512MB",
        help="memory_budget of the streamed fit, (b)",
    )
    ap.add_argument("--fit-repeats", type=int, default=2, help="interleaved rounds, (b)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, one round")
    args = ap.parse_args()
    if args.quick:
        args.sentences, args.repeats, args.rows, args.fit_repeats = 128, 1, 40_000, 1
        args.fit_max_memory = "64MB"
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    if "extract" in args.only:
        extraction_section(args)
    if "fit" in args.only:
        fit_section(args)


if __name__ == "__main__":
    main()
