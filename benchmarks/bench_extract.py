"""Extraction throughput: ``extract()`` against a plain forward pass, and the ``precision`` option.

Workloads (each on the same pre-made batches for every variant):

* ``minilm words``: the bundled MiniLM on single words from ``bundled:vader-valence`` (a few
  tokens each: per-batch overhead weighs most here);
* ``minilm sentences``: the same model on synthetic 20-40-word sentences built from the lexicon;
* ``vit-s``: ``timm:vit_small_patch16_224`` with random weights on ``bundled:mnist`` digits;
* ``gemma3-270m``: the bundled decoder (Gemma 3 270M, 18 blocks x 640, the ``llm`` extra) on the
  same kind of synthetic sentences, pooled ``last`` (its default).

Variants, per workload, in fp32:

* ``forward``: ``model.forward`` on inputs preprocessed once beforehand (no hooks, no pooling,
  no cache), under ``torch.no_grad()`` like ``extract``;
* ``extract pre-tok``: ``extract()`` (hooks, pooling, copies, the writer thread, shard writes
  and finalize into a fresh temporary folder) through a :class:`LoadedModel` whose
  ``preprocess`` returns the same pre-made batches, so only extraction's own cost is added;
* ``extract e2e``: ``extract()`` on the real dataset with the model's real preprocessing, run
  in extract's prefetch thread (tokenizer / PIL transforms), competing for the same cores;
* ``preprocess``: the model's preprocessing alone, over the whole workload.

Then the ``precision`` option (``fp32``, ``medium``, ``bf16``) on a subset of each workload:
plain-forward and extract speed relative to the fp32 forward, and the cosine similarity of each
layer's pooled features to the fp32 ones (minimum over layers, poolings and samples).

Every variant gets a warm-up run; repeats are interleaved (variant A, B, C, A, B, C, ...) so
that a change in the machine's load hits all of them alike. The fp32 table gives the median and
the fastest run, the spread ((max - min) / median) and ``cpu/wall``, the process's CPU seconds
per wall second (about the thread count on a quiet machine; lower when other processes take the
cores), and the ratio to the forward pass from the medians, the fastest runs and CPU time. On a
shared machine the fastest runs are the steadier estimate (other processes only add time; with
2 OpenMP threads on 2 cores one busy neighbour can make a run several times slower), which is
why the precision table uses them. ``--wait-idle PCT`` waits before each timed run until the
CPU is that idle. Slow precision cells (a single run longer than ``--cell-budget`` s, e.g. bf16
on a CPU without native bf16) keep their first run as a measurement and repeat only within
that budget.

``--memory`` measures the peak RSS growth of one extraction per workload in fresh processes; ``--profile``
prints torch.profiler tables.

Usage::

    python benchmarks/bench_extract.py            # about 4-5 minutes on a quiet 2-core CPU
    python benchmarks/bench_extract.py --quick    # smoke run, about a minute (mostly loading)
    python benchmarks/bench_extract.py --threads 2 --repeats 7 --vit-n 128 --profile
    python benchmarks/bench_extract.py --memory --wait-idle 85   # shared machine
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's C++ logging
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import probekit  # noqa: E402
from probekit import extract, load_data, load_model  # noqa: E402
from probekit._utils import runtime as _runtime  # noqa: E402
from probekit.data import Dataset, from_arrays  # noqa: E402
from probekit.models.loading import LoadedModel  # noqa: E402
from probekit.recording.extraction import PRECISIONS, precision_context  # noqa: E402

# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Timing:
    """Wall and process-CPU seconds of each timed run (warm-up excluded)."""

    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def spread(self) -> float:
        if len(self.wall) < 2:
            return float("nan")
        return (max(self.wall) - min(self.wall)) / self.median

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def cpu_per_wall(self) -> float:
        return sum(self.cpu) / sum(self.wall)


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


class IdleGate:
    """Before a timed run, wait until the other processes leave the CPU mostly idle.

    Reads ``/proc/stat`` over 0.5 s windows (this process is idle meanwhile, so what is busy is
    someone else) until ``pct`` % of the CPU time is idle, for at most ``max_wait`` s a call.
    ``pct = 0`` turns it off. Counts the calls that gave up waiting (``contended``).
    """

    def __init__(self, pct: float = 0.0, max_wait: float = 20.0) -> None:
        self.pct, self.max_wait = pct, max_wait
        self.calls = self.contended = 0
        self.waited = 0.0

    @staticmethod
    def _idle_fraction(window: float) -> float:
        def read() -> tuple[int, int]:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            return sum(v), v[3] + v[4]

        (t0, i0), _ = read(), time.sleep(window)
        t1, i1 = read()
        return (i1 - i0) / max(1, t1 - t0)

    def __call__(self) -> None:
        if self.pct <= 0 or not os.path.exists("/proc/stat"):
            return
        self.calls += 1
        start = time.perf_counter()
        while self._idle_fraction(0.5) * 100 < self.pct:
            if time.perf_counter() - start > self.max_wait:
                self.contended += 1
                break
        self.waited += time.perf_counter() - start

    def summary(self) -> str:
        if self.pct <= 0:
            return "idle gate off"
        return (
            f"idle gate {self.pct:.0f}%: {self.calls} waits, {self.waited:.0f} s waited, "
            f"{self.contended} gave up after {self.max_wait:.0f} s (ran contended)"
        )


GATE = IdleGate()


def bench_interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """One warm-up run of each variant, then ``repeats`` rounds of all of them in turn."""
    for fn in variants.values():
        fn()
    timings = {name: Timing() for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            GATE()
            wall, cpu, _ = _timed(fn)
            timings[name].wall.append(wall)
            timings[name].cpu.append(cpu)
    return timings


def bench_budgeted(fn: Callable[[], Any], repeats: int, budget: float) -> tuple[Timing, Any]:
    """Warm up and repeat ``fn``; a first run longer than ``budget`` s counts as a measurement
    (its warm-up share is negligible), and repeats stop once ``budget`` s are spent."""
    timing = Timing()
    GATE()
    wall, cpu, out = _timed(fn)
    if wall > budget:
        timing.wall.append(wall)
        timing.cpu.append(cpu)
    spent = 0.0
    while len(timing.wall) < repeats and (not timing.wall or spent + timing.median <= budget):
        GATE()
        wall, cpu, out = _timed(fn)
        timing.wall.append(wall)
        timing.cpu.append(cpu)
        spent += wall
    return timing, out


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


# ----------------------------------------------------------------------------- workloads


@dataclasses.dataclass
class Workload:
    """One model on one dataset, with its inputs preprocessed once along extract's batches."""

    name: str
    model: LoadedModel  # the real model (real preprocessing)
    data: Dataset  # the real dataset
    batch_size: int
    shard_size: int
    batches: list[dict[str, Tensor]]  # preprocessed, in extract's batch order
    pre_model: LoadedModel  # same nn.Module, preprocess = lookup of ``batches``
    pre_data: Dataset  # items are sample positions as strings

    @property
    def n(self) -> int:
        return len(self.data)

    def tokens_per_sample(self) -> float:
        """Sequence length the model sees, averaged over samples (text: padded length)."""
        total = 0
        for b in self.batches:
            v = next(iter(b.values()))
            if "input_ids" in b:
                total += v.shape[0] * v.shape[1]
            else:  # a ViT: patches + prefix tokens
                patches = getattr(getattr(self.model.model, "patch_embed", None), "num_patches", 0)
                total += v.shape[0] * (patches + self.model.n_prefix_tokens)
        return total / self.n


def batch_starts(n: int, batch_size: int, shard_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every batch, as extract forms them (batches never cross shards)."""
    out = []
    for s0 in range(0, n, shard_size):
        s1 = min(s0 + shard_size, n)
        out += [(b, min(b + batch_size, s1)) for b in range(s0, s1, batch_size)]
    return out


def make_workload(
    name: str, model: LoadedModel, data: Dataset, batch_size: int, shard_size: int
) -> Workload:
    """Preprocess ``data`` once; build the pre-tokenized twin of ``model`` and ``data``."""
    spans = batch_starts(len(data), batch_size, shard_size)
    batches = [model.preprocess(data.get_items(range(a, b))) for a, b in spans]
    table = {(a, b - a): inputs for (a, b), inputs in zip(spans, batches, strict=True)}

    def cached_preprocess(items: list[Any]) -> dict[str, Tensor]:
        idx = [int(s) for s in items]
        hit = table.get((idx[0], len(idx)))
        if hit is not None and idx == list(range(idx[0], idx[0] + len(idx))):
            return hit
        return model.preprocess(data.get_items(idx))  # not one of the pre-made batches

    pre_model = dataclasses.replace(model, preprocess=cached_preprocess, kind="text")
    pre_data = from_arrays(
        [str(i) for i in range(len(data))],
        data.labels,
        label_names=data.label_names,
        name=f"{data.name}-pretokenized",
    )
    return Workload(name, model, data, batch_size, shard_size, batches, pre_model, pre_data)


def subset_workload(w: Workload, n: int, batch_size: int) -> Workload:
    """The first ``n`` samples of ``w`` (for the precision runs), in one shard."""
    items = w.data.get_items(range(n))
    if w.data.kind == "text":
        data = from_arrays(
            items, w.data.labels[:n], label_names=w.data.label_names, name=f"{w.data.name}-{n}"
        )
    else:
        assert w.data.images is not None
        data = from_arrays(
            w.data.images[:n],
            w.data.labels[:n],
            label_names=w.data.label_names,
            name=f"{w.data.name}-{n}",
        )
    return make_workload(w.name, w.model, data, batch_size, n)


def synthetic_sentences(words: Dataset, n: int, lo: int, hi: int, seed: int = 0) -> Dataset:
    """``n`` sentences of ``lo..hi`` lexicon words; label: the majority valence of its words."""
    rng = random.Random(seed)
    assert words.texts is not None
    pos = list(range(len(words)))
    texts, labels = [], []
    for _ in range(n):
        pick = rng.choices(pos, k=rng.randint(lo, hi))
        texts.append(" ".join(words.texts[i] for i in pick))
        labels.append(int(2 * sum(int(words.labels[i]) for i in pick) > len(pick)))
    return from_arrays(
        texts, labels, label_names=words.label_names, name=f"vader-sentences-{lo}-{hi}"
    )


# ----------------------------------------------------------------------------- runs


def run_forward(w: Workload, precision: str = "fp32") -> None:
    with torch.no_grad(), precision_context(precision, w.model.device):
        for inputs in w.batches:
            w.model.forward(inputs)


def run_preprocess(w: Workload) -> None:
    for a, b in batch_starts(w.n, w.batch_size, w.shard_size):
        w.model.preprocess(w.data.get_items(range(a, b)))


class ExtractRunner:
    """Calls ``extract_fn`` into a fresh folder under ``root`` each time (a finished cache would
    be reused, not recomputed); the folder is removed after the next call or on :meth:`cleanup`."""

    def __init__(self, root: Path, extract_fn: Callable[..., Any] = extract) -> None:
        self.root = root
        self.extract_fn = extract_fn
        self._last: Path | None = None

    def __call__(
        self, w: Workload, *, pre: bool, precision: str = "fp32", keep: bool = False
    ) -> Any:
        self.cleanup()
        out = Path(tempfile.mkdtemp(prefix="cache-", dir=self.root))
        self._last = out
        model, data = (w.pre_model, w.pre_data) if pre else (w.model, w.data)
        cache = self.extract_fn(
            model,
            data,
            out,
            batch_size=w.batch_size,
            shard_size=w.shard_size,
            precision=precision,
            progress=False,
        )
        if keep:
            return {p: cache.load(pooling=p) for p in cache.poolings}, cache.layer_names
        return None

    def cleanup(self) -> None:
        if self._last is not None:
            shutil.rmtree(self._last, ignore_errors=True)
            self._last = None


def agreement(
    ref: dict[str, Tensor], other: dict[str, Tensor], layer_names: list[str]
) -> tuple[float, str, float]:
    """Minimum cosine similarity over samples, layers and poolings, where it is, and the largest
    relative error ``|other - ref| / |ref|`` of one sample's vector."""
    worst, where, rel = 2.0, "", 0.0
    for p, x in ref.items():
        x, y = x.double(), other[p].double()  # (N, L, D)
        cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)  # (N, L)
        per_layer = cos.min(dim=0).values
        j = int(per_layer.argmin())
        if float(per_layer[j]) < worst:
            worst, where = float(per_layer[j]), f"{layer_names[j]}.{p}"
        err = (y - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-30)
        rel = max(rel, float(err.max()))
    return worst, where, rel


# ----------------------------------------------------------------------------- report


def fmt_rate(n: int, seconds: float) -> str:
    rate = n / seconds
    return f"{rate:10.1f}" if rate < 1e4 else f"{rate:10.0f}"


def fmt_pct(x: float) -> str:
    return "   -" if x != x else f"{100 * x:3.0f}%"


def fp32_section(
    workloads: list[Workload], runner: ExtractRunner, repeats: int, target: float
) -> list[tuple[Any, ...]]:
    print(
        "\n== fp32: extract() against a plain forward pass "
        f"(median of {repeats} interleaved runs after a warm-up) =="
    )
    head = (
        f"{'workload':<18} {'variant':<16} {'samples/s':>10} {'median s':>9} {'min s':>7} "
        f"{'spread':>6} {'cpu/wall':>8} {'fwd/this':>8} {'(min)':>6} {'(cpu)':>6}"
    )
    print(head)
    print("-" * len(head))
    ratios = []
    for w in workloads:
        variants = {
            "forward": lambda w=w: run_forward(w),
            "extract pre-tok": lambda w=w: runner(w, pre=True),
            "extract e2e": lambda w=w: runner(w, pre=False),
            "preprocess": lambda w=w: run_preprocess(w),
        }
        load0 = load_average()
        t = bench_interleaved(variants, repeats)
        fwd = t["forward"].median
        fwd_cpu, fwd_best = t["forward"].cpu_median, t["forward"].best
        for name, timing in t.items():
            extract_row = name not in ("forward", "preprocess")
            rel = f"{fwd / timing.median:8.3f}" if extract_row else ""
            rel_min = f"{fwd_best / timing.best:6.3f}" if extract_row else ""
            rel_cpu = f"{fwd_cpu / timing.cpu_median:6.3f}" if extract_row else ""
            print(
                f"{w.name:<18} {name:<16} {fmt_rate(w.n, timing.median)} {timing.median:9.3f} "
                f"{timing.best:7.3f} {fmt_pct(timing.spread):>6} {timing.cpu_per_wall:8.2f} "
                f"{rel:>8} {rel_min:>6} {rel_cpu:>6}"
            )
        info = (
            f"  N={w.n}, batch {w.batch_size}, shard {w.shard_size}, "
            f"{w.tokens_per_sample():.1f} tokens/sample; load avg before: {load0}, "
            f"after: {load_average()}"
        )
        print(info)
        pre, e2e = t["extract pre-tok"], t["extract e2e"]
        ratios.append(
            (w.name, fwd / pre.median, fwd_best / pre.best, fwd / e2e.median, fwd_best / e2e.best)
        )
    print(
        "  fwd/this: median forward time / median time of this variant (its throughput relative"
        " to the forward pass);\n  (min): the same from the fastest runs (noise only adds time);"
        " (cpu): from median process CPU seconds\n  (all threads; less sensitive to other"
        " processes, but inflated by OpenMP spin-waiting)."
    )
    print()
    for name, pre, pre_min, e2e, e2e_min in ratios:
        verdict = (
            "met"
            if min(pre, pre_min) >= target
            else "met on the fastest runs only"
            if pre_min >= target
            else "met on the medians only"
            if pre >= target
            else "NOT met"
        )
        print(
            f"target extract >= {target:.2f} x forward ({name}): pre-tokenized {pre:.3f} median, "
            f"{pre_min:.3f} fastest -> {verdict}; end-to-end {e2e:.3f} / {e2e_min:.3f}"
        )
    return ratios


def precision_section(
    subsets: list[Workload],
    runner: ExtractRunner,
    precisions: list[str],
    repeats: int,
    budget: float,
) -> None:
    print(
        f"\n== precision: speed-up vs the fp32 forward, and pooled-feature agreement with fp32 "
        f"(fastest of up to {repeats} runs after a warm-up, {budget:.0f} s budget per cell) =="
    )
    head = (
        f"{'workload':<18} {'N':>4} {'precision':<9} {'fwd samp/s':>10} {'fwd x':>6} "
        f"{'ext samp/s':>10} {'ext x':>6} {'runs':>5} {'min cosine':>11} {'max rel':>8}  at"
    )
    print(head)
    print("-" * (len(head) + 14))
    for w in subsets:
        ref = None
        fwd32 = None
        for p in precisions:
            tf, _ = bench_budgeted(lambda w=w, p=p: run_forward(w, p), repeats, budget)
            te, (feats, names) = bench_budgeted(
                lambda w=w, p=p: runner(w, pre=True, precision=p, keep=True), repeats, budget
            )
            if p == "fp32":
                ref, fwd32 = feats, tf.best
            if ref is not None:
                cos, where, rel = agreement(ref, feats, names)
                cos_s = f"{cos:11.7f} {rel:8.1e}"
            else:
                cos_s, where = f"{'(no fp32)':>20}", ""
            sx_f = f"{fwd32 / tf.best:6.2f}" if fwd32 else "     -"
            sx_e = f"{fwd32 / te.best:6.2f}" if fwd32 else "     -"
            print(
                f"{w.name:<18} {w.n:>4} {p:<9} {fmt_rate(w.n, tf.best)} {sx_f} "
                f"{fmt_rate(w.n, te.best)} {sx_e} {len(tf.wall):>2}/{len(te.wall):<2} "
                f"{cos_s}  {where}"
            )
    print(
        "  fwd x / ext x: fp32-forward time / this time (>1 is faster); runs: forward/extract; "
        "min cosine over samples, layers and poolings;\n  max rel: largest "
        "|x - x_fp32| / |x_fp32| of one sample's pooled vector (0 = bitwise equal)"
    )


def profile_extract(workloads: list[Workload], runner: ExtractRunner, rows: int) -> None:
    """torch.profiler tables of one forward and one pre-tokenized extract per workload."""
    from torch.profiler import ProfilerActivity, profile

    for w in workloads:
        for name, fn in (
            ("forward", lambda w=w: run_forward(w)),
            ("extract pre-tok", lambda w=w: runner(w, pre=True)),
        ):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"\n== profile: {w.name}, {name} (self CPU time, top {rows}) ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(w: Workload, variant: str) -> None:
    """Run one pre-tokenized extract and print the peak RSS growth over the RSS before it
    (sampled every 5 ms by a thread). Runs in a fresh process: the heap an earlier run left
    behind would hide the growth."""
    import threading

    fn = extract
    with tempfile.TemporaryDirectory(prefix="bench-extract-mem-") as tmp:
        runner = ExtractRunner(Path(tmp), fn)
        base, peak, stop = _rss_bytes(), [0], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                stop.wait(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        runner(w, pre=True)
        stop.set()
        thread.join()
        runner.cleanup()
    print(f"MEMORY {(peak[0] - base) / 2**20:.1f}")


def memory_section(args: argparse.Namespace, workloads: list[Workload]) -> None:
    import subprocess

    variants = ["extract"]
    print("\n== memory: peak RSS growth during one pre-tokenized extract (fresh process each) ==")
    keys = {"minilm words": "words", "minilm sentences": "sentences", "vit-s (random)": "vit"}
    passthrough = [a for a in sys.argv[1:] if a not in ("--memory", "--profile")]
    for w in workloads:
        cells = []
        for v in variants:
            cmd = [
                sys.executable,
                __file__,
                *passthrough,
                "--only",
                keys[w.name],
                "--memory-child",
                v,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = [x for x in res.stdout.splitlines() if x.startswith("MEMORY ")]
            cells.append(
                f"{v} +{float(line[0].split()[1]):.0f} MiB"
                if line
                else f"{v} failed: {res.stderr.strip().splitlines()[-1:]}"
            )
        print(
            f"{w.name:<18} N={w.n:<5} batch {w.batch_size:<3} shard {w.shard_size:<5} "
            + "   ".join(cells)
        )


# ----------------------------------------------------------------------------- page faults

# name: (PROBEKIT_MALLOC, precision). "old default" is what `probekit extract` did before
# probekit tuned glibc's malloc at import and before precision="auto".
CHURN_VARIANTS = {
    "old default": ("default", "fp32"),
    "tuned malloc fp32": ("", "fp32"),
    "new default": ("", "auto"),
}


def churn_child(args: argparse.Namespace) -> None:
    """``probekit extract --model bundled:efficientnet-lite0 --data bundled:mnist --limit N`` in
    this fresh process (the allocator is set at import, so each variant needs its own process);
    prints ``CHURN {json}``: wall, user/kernel CPU seconds and minor page faults of ``extract()``."""
    import json
    import resource

    from probekit._utils import runtime as _runtime  # noqa: E402

    model = load_model("bundled:efficientnet-lite0")
    data = load_data("bundled:mnist", limit=args.effnet_n)
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cache = extract(
            model, data, Path(tmp) / "cache", precision=args.churn_child, progress=False
        )
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        precision = cache.manifest["precision"]
    print(
        "CHURN "
        + json.dumps(
            {
                "wall": wall,
                "user": r1.ru_utime - r0.ru_utime,
                "sys": r1.ru_stime - r0.ru_stime,
                "minflt": r1.ru_minflt - r0.ru_minflt,
                "tuned": _runtime.allocator_state()["tuned"],
                "precision": precision,
            }
        )
    )


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an ``(n, n) @ (n, n)`` matmul in ``dtype``: the fastest of ``repeats`` runs."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b)[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def forward_flops(model: LoadedModel, data: Dataset, n: int = 4) -> float:
    """FLOPs of the forward pass per sample (``torch.utils.flop_counter``; matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = model.preprocess(data.get_items(range(n)))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward(inputs)
    return counter.get_total_flops() / n


def churn_section(args: argparse.Namespace) -> None:
    """Kernel time, page faults, throughput and GFLOP/s of the EfficientNet/MNIST extraction,
    old default against new, each run in a fresh process, variants interleaved."""
    import json
    import resource
    import subprocess

    print(
        f"\n== page faults: `probekit extract --model bundled:efficientnet-lite0 --data "
        f"bundled:mnist --limit {args.effnet_n}` (extract() in a fresh process per run, "
        f"{args.churn_repeats} interleaved rounds, medians) =="
    )
    model = load_model("bundled:efficientnet-lite0")
    data = load_data("bundled:mnist", limit=8)
    flops = forward_flops(model, data)
    ceil32 = matmul_ceiling(torch.float32)
    bf16_native = _runtime.bf16_is_native("cpu")
    ceil16 = matmul_ceiling(torch.bfloat16) if bf16_native else float("nan")
    print(
        f"forward: {flops / 1e9:.3f} GFLOP/sample (FlopCounterMode); matmul ceiling (2048^3, "
        f"{torch.get_num_threads()} threads, fastest of 5): fp32 {ceil32:.0f} GFLOP/s, bf16 "
        + (f"{ceil16:.0f} GFLOP/s (native)" if bf16_native else "not native (not measured)")
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CHURN_VARIANTS}
    passthrough = ["--threads", str(args.threads), "--effnet-n", str(args.effnet_n)]
    for _ in range(args.churn_repeats):
        for name, (malloc, precision) in CHURN_VARIANTS.items():
            env = {**os.environ, "PROBEKIT_MALLOC": malloc}
            cmd = [sys.executable, __file__, *passthrough, "--churn-child", precision]
            GATE()
            c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            c1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
            line = [x for x in res.stdout.splitlines() if x.startswith("CHURN ")]
            if not line:
                raise RuntimeError(f"{name} failed: {res.stderr.strip()[-2000:]}")
            run = json.loads(line[0][6:])
            run.update(
                proc_wall=wall,
                proc_sys=c1.ru_stime - c0.ru_stime,
                proc_cpu=c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime,
                proc_minflt=c1.ru_minflt - c0.ru_minflt,
            )
            runs[name].append(run)
            print(
                f"  run: {name:<18} extract {run['wall']:7.2f} s wall, {run['user']:7.2f} s "
                f"user, {run['sys']:6.2f} s kernel, {run['minflt'] / 1e6:5.2f} M faults "
                f"(process {wall:6.1f} s)",
                flush=True,
            )
    med = {
        name: {
            k: statistics.median(float(r[k]) for r in rs)
            for k in rs[0]
            if k not in ("precision", "tuned")
        }
        for name, rs in runs.items()
    }
    head = (
        f"{'variant':<18} {'precision':<9} {'samples/s':>9} {'x old':>6} {'(cpu)':>6} {'wall s':>7} "
        f"{'user s':>7} {'kernel s':>8} {'kernel %':>8} {'faults':>7} {'GFLOP/s':>8} "
        f"{'% ceil':>6} | {'process: wall s':>15} {'kernel s':>8} {'faults':>7}"
    )
    print(head)
    print("-" * len(head))
    old = med["old default"]
    for name, m in med.items():
        rs = runs[name]
        kernel = m["sys"] / max(1e-9, m["user"] + m["sys"])
        gflops = flops * args.effnet_n / m["wall"] / 1e9
        ceil = ceil16 if rs[0]["precision"] == "bf16" else ceil32
        tuned = {bool(r["tuned"]) for r in rs}
        print(
            f"{name:<18} {rs[0]['precision']:<9} {args.effnet_n / m['wall']:9.1f} "
            f"{old['wall'] / m['wall']:6.2f} "
            f"{(old['user'] + old['sys']) / (m['user'] + m['sys']):6.2f} "
            f"{m['wall']:7.2f} {m['user']:7.2f} {m['sys']:8.2f} "
            f"{100 * kernel:7.1f}% {m['minflt'] / 1e6:6.2f}M {gflops:8.1f} "
            f"{100 * gflops / ceil:5.1f}% | {m['proc_wall']:15.2f} {m['proc_sys']:8.2f} "
            f"{m['proc_minflt'] / 1e6:6.2f}M"
            + ("" if tuned == {name != "old default"} else "  (allocator state unexpected!)")
        )
    print(
        "  samples/s, wall, user, kernel, faults: of extract() alone (medians); x old: median "
        "old-default wall / this wall; (cpu): the same\n  from user + kernel CPU seconds (the "
        "steadier one when other processes share the cores);\n  kernel %: kernel / (user + kernel) CPU seconds; "
        "GFLOP/s: forward FLOPs x samples / extract() wall, against the matmul ceiling of "
        "the\n  precision used; process: the whole child process (imports, model and data "
        "loading included). Other processes on a\n  shared machine only add wall time: "
        "kernel % and faults are the steadier figures."
    )
    for name in ("tuned malloc fp32", "new default"):
        m = med[name]
        kernel = m["sys"] / max(1e-9, m["user"] + m["sys"])
        speed = old["wall"] / m["wall"]
        speed_cpu = (old["user"] + old["sys"]) / (m["user"] + m["sys"])
        print(
            f"target ({name}): kernel {100 * kernel:.1f}% of CPU time (< 15%: "
            f"{'met' if kernel < 0.15 else 'NOT met'}); throughput {speed:.2f}x the old default "
            f"by wall, {speed_cpu:.2f}x by CPU time (>= {args.churn_target:.1f}x: "
            f"{'met' if speed >= args.churn_target else 'NOT met'} / "
            f"{'met' if speed_cpu >= args.churn_target else 'NOT met'})"
        )


# ----------------------------------------------------------------------------- main


def build_workloads(args: argparse.Namespace) -> tuple[list[Workload], list[Workload]]:
    """The fp32 workloads and their subsets for the precision runs."""
    workloads: list[Workload] = []
    subsets: list[Workload] = []

    def text_shard(n: int) -> int:
        half = (n // 2) // args.text_batch * args.text_batch
        return args.text_shard or max(args.text_batch, half)

    if "words" in args.only or "sentences" in args.only:
        minilm = load_model("bundled:minilm-l6")
        if "words" in args.only:
            data = load_data("bundled:vader-valence", limit=args.words_n)
            w = make_workload("minilm words", minilm, data, args.text_batch, text_shard(len(data)))
            workloads.append(w)
            subsets.append(subset_workload(w, min(args.prec_words_n, w.n), args.text_batch))
        if "sentences" in args.only:
            data = synthetic_sentences(
                load_data("bundled:vader-valence"), args.sentences_n, *args.sentence_words
            )
            w = make_workload(
                "minilm sentences", minilm, data, args.text_batch, text_shard(len(data))
            )
            workloads.append(w)
            subsets.append(subset_workload(w, min(args.prec_sentences_n, w.n), args.text_batch))
    if "gemma" in args.only:
        gemma = load_model("bundled:gemma3-270m")
        data = synthetic_sentences(
            load_data("bundled:vader-valence"), args.gemma_n, *args.sentence_words
        )
        w = make_workload("gemma3-270m sentences", gemma, data, args.gemma_batch, len(data))
        workloads.append(w)
        subsets.append(subset_workload(w, min(args.prec_gemma_n, w.n), args.gemma_batch))
    if "vit" in args.only:
        vit = load_model("timm:vit_small_patch16_224", pretrained=False)
        data = load_data("bundled:mnist", limit=args.vit_n)
        w = make_workload("vit-s (random)", vit, data, args.vit_batch, args.vit_shard or len(data))
        workloads.append(w)
        subsets.append(subset_workload(w, min(args.prec_vit_n, w.n), args.vit_batch))
    return workloads, subsets


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per variant")
    ap.add_argument("--words-n", type=int, default=1024, help="single words (MiniLM)")
    ap.add_argument("--sentences-n", type=int, default=128, help="synthetic sentences (MiniLM)")
    ap.add_argument("--sentence-words", type=int, nargs=2, default=(20, 40), metavar=("LO", "HI"))
    ap.add_argument("--text-batch", type=int, default=64, help="batch size for MiniLM")
    ap.add_argument(
        "--text-shard",
        type=int,
        default=0,
        help="shard size for MiniLM (0: half the data, so the writer thread overlaps)",
    )
    ap.add_argument("--vit-n", type=int, default=32, help="MNIST images (ViT-S)")
    ap.add_argument("--vit-batch", type=int, default=8, help="batch size for ViT-S")
    ap.add_argument("--vit-shard", type=int, default=0, help="shard size for ViT-S (0: N)")
    ap.add_argument("--gemma-n", type=int, default=48, help="synthetic sentences (Gemma 3)")
    ap.add_argument("--gemma-batch", type=int, default=16, help="batch size for Gemma 3")
    ap.add_argument("--prec-gemma-n", type=int, default=16)
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--prec-words-n", type=int, default=256)
    ap.add_argument("--prec-sentences-n", type=int, default=32)
    ap.add_argument("--prec-vit-n", type=int, default=4)
    ap.add_argument(
        "--cell-budget",
        type=float,
        default=8.0,
        help="seconds per precision cell before repeats stop",
    )
    ap.add_argument("--target", type=float, default=0.95, help="extract / forward target")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=("words", "sentences", "vit", "effnet", "gemma"),
        default=("words", "sentences", "vit", "effnet", "gemma"),
    )
    ap.add_argument("--effnet-n", type=int, default=500, help="MNIST digits (EfficientNet)")
    ap.add_argument("--churn-repeats", type=int, default=3, help="rounds of the page-fault runs")
    ap.add_argument(
        "--churn-target",
        type=float,
        default=1.8,
        help="new / old default throughput target (page-fault section)",
    )
    ap.add_argument("--skip-precision", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables too")
    ap.add_argument(
        "--memory",
        action="store_true",
        help="peak RSS growth of one extract per workload, in fresh processes (Linux)",
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="PCT",
        help="before each timed run wait until PCT %% of the CPU is idle (0: off)",
    )
    ap.add_argument("--wait-max", type=float, default=20.0, help="most seconds one wait lasts")
    ap.add_argument("--memory-child", choices=("extract",), help=argparse.SUPPRESS)
    ap.add_argument("--churn-child", choices=("fp32", "auto"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
        args.words_n, args.sentences_n, args.vit_n = 256, 32, 8
        args.vit_batch = 2
        args.prec_words_n, args.prec_sentences_n, args.prec_vit_n = 64, 8, 2
        args.cell_budget = 2.0
        args.effnet_n, args.churn_repeats = 64, 1
        args.gemma_n, args.gemma_batch, args.prec_gemma_n = 8, 4, 4

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    GATE.pct, GATE.max_wait = args.wait_idle, args.wait_max
    if args.churn_child:
        churn_child(args)
        return
    if args.memory_child:
        workloads, _ = build_workloads(args)
        memory_child(workloads[0], args.memory_child)
        return
    t_start = time.perf_counter()
    print(
        f"probekit {getattr(probekit, '__version__', '?')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}"
    )
    print(f"load average (1/5/15 min) at start: {load_average()}")
    print(f"allocator: {_runtime.allocator_state()}")
    if "effnet" in args.only:
        churn_section(args)
    workloads, subsets = build_workloads(args)
    if workloads:
        print(f"setup (models, data, preprocessing once): {time.perf_counter() - t_start:.1f} s")
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        runner = ExtractRunner(Path(tmp))
        if workloads:
            fp32_section(workloads, runner, args.repeats, args.target)
        if subsets and not args.skip_precision:
            precision_section(subsets, runner, args.precisions, args.repeats, args.cell_budget)
        if args.profile:
            profile_extract(workloads, runner, rows=15)
        runner.cleanup()
    if args.memory:
        memory_section(args, workloads)
    print(
        f"\nload average at end: {load_average()}; {GATE.summary()}; "
        f"total {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
