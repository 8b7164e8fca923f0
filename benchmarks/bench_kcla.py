"""KCLA head vs full softmax layer attention: time and memory as depth grows.

KCLA aggregates layers with running sums (compute linear in depth, state independent of
depth); the baseline lets every layer attend over all layers, which is ``(B, G, L, L)``.
Both use the same per-layer adapters (to d = 128, G = 8 heads of 16) and the same classifier.

Measured per depth L, on synthetic features (B = 256, D = 384, 10 classes):
    * time of one forward + backward (best of ``--repeats`` runs after a warm-up);
    * peak tensor memory of one forward + backward, and of one inference forward (no_grad),
      counting only tensors allocated during the step (inputs and parameters excluded).

Memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the torch profiler's memory
timeline (``profile_memory=True``; every tensor allocation and free, in order), from which
the peak of live bytes is taken. Process RSS would not see the caching of the CPU allocator
reliably, and tracemalloc does not see torch's allocations.

With ``--cache DIR`` it measures accuracy instead: ``ProbeClassifier(head="kcla")`` with and
without the batch norm + ReLU after the gate (``bn_attention``), fitted on the same stratified
80/20 split of a feature cache (CLS pooling) for each seed, with a paired bootstrap of the
difference in test balanced accuracy over the same test samples.

Usage::

    python benchmarks/bench_kcla.py [--device cuda] [--depths 6 12 24 48 96] [--repeats 5] [--threads 1]
    python benchmarks/bench_kcla.py --cache DIR [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's C++ logging

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from probekit.probes import GroupLinear, ProbeHead, ProbeOutput, create_probe  # noqa: E402


class FullLayerAttention(ProbeHead):
    """Baseline: softmax attention of every layer over all layers, ``(B, G, L, L)``.

    The same per-layer adapters as KCLA (a layer's P tokens concatenated, then mapped to d),
    then full self-attention across the L adapted layers, mean over layers, linear classifier.
    """

    def __init__(
        self,
        n_layers: int,
        dims: int | Sequence[int],
        n_classes: int,
        tokens_per_layer: int = 1,
        *,
        dim: int = 128,
        head_dim: int = 16,
    ):
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        self.n_heads, self.head_dim = dim // head_dim, head_dim
        self.adapters = GroupLinear(self.feature_mask(per_layer=True), dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, x: Tensor) -> ProbeOutput:
        b, n = x.shape[0], self.n_layers
        h = self.adapters(x.reshape(b, n, -1))  # (B, L, d)
        q, k, v = self.qkv(h).view(b, n, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, G, L, d_g)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(-1)  # (B, G, L, L)
        o = self.out((attn @ v).transpose(1, 2).reshape(b, n, -1))  # (B, L, d)
        weights = attn[:, :, -1].mean(1)  # (B, L)
        return ProbeOutput(logits=self.classifier(o.mean(1)), layer_weights=weights)


def make_head(kind: str, n_layers: int, dim: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    if kind == "kcla":
        head = create_probe("kcla", n_layers=n_layers, dims=dim, n_classes=10)
    else:
        head = FullLayerAttention(n_layers, dim, 10)
    return head.to(device).train()


def step(head: nn.Module, x: Tensor, y: Tensor, backward: bool) -> None:
    if backward:
        head.zero_grad(set_to_none=True)
        F.cross_entropy(head(x).logits, y).backward()
    else:
        with torch.no_grad():
            head(x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(head: nn.Module, x: Tensor, y: Tensor, repeats: int) -> float:
    step(head, x, y, True)  # warm-up
    times = []
    for _ in range(repeats):
        sync(x.device)
        t0 = time.perf_counter()
        step(head, x, y, True)
        sync(x.device)
        times.append(time.perf_counter() - t0)
    return min(times)  # best of N: the least disturbed by other processes


def peak_bytes(head: nn.Module, x: Tensor, y: Tensor, backward: bool) -> int:
    """Peak bytes of tensors allocated during one step and live at the same time."""
    step(head, x, y, backward)  # warm-up: grads exist, allocator settled
    head.zero_grad(set_to_none=True)
    if x.device.type == "cuda":
        sync(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        step(head, x, y, backward)
        sync(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step(head, x, y, backward)
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
            peak = max(peak, live)
        elif action == Action.DESTROY:
            live -= size
    return peak


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced accuracy of every row: ``y, pred (R, N)`` class indices -> ``(R,)``."""
    hits = np.stack([((y == c) & (pred == c)).sum(1) for c in range(n_classes)], 1)  # (R, C)
    support = np.stack([(y == c).sum(1) for c in range(n_classes)], 1)
    return (hits / np.maximum(support, 1)).mean(1)


def compare_bn_attention(cache_dir: str, seeds: list[int], n_boot: int = 2000) -> None:
    """Test balanced accuracy of KCLA with and without ``bn_attention``, paired per seed."""
    from sklearn.model_selection import train_test_split

    from probekit import FeatureCache, ProbeClassifier

    cache = FeatureCache.open(cache_dir)
    x = cache.load(pooling="cls").numpy()  # (N, L, D)
    classes, y = np.unique(np.asarray(cache.labels), return_inverse=True)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    print(
        f"cache={cache_dir}  X={x.shape}  train={len(tr)} test={len(te)}  threads={torch.get_num_threads()}"
    )
    print(f"paired bootstrap over the {len(te)} test samples, {n_boot} resamples\n")
    print(
        f"{'seed':>4} {'bn on':>8} {'bn off':>8} {'on - off':>9} {'95% interval':>18} {'P(<=0)':>7} {'fit s':>11}"
    )
    rng = np.random.default_rng(0)
    diffs = []
    for seed in seeds:
        preds, secs = {}, {}
        for bn in (True, False):
            t0 = time.perf_counter()
            clf = ProbeClassifier(
                head="kcla", head_params={"bn_attention": bn}, random_state=seed
            ).fit(x[tr], y[tr])
            secs[bn] = time.perf_counter() - t0
            preds[bn] = clf.predict(x[te])
        idx = rng.integers(0, len(te), (n_boot, len(te)))
        yt = y[te]
        boot = balanced_accuracy(yt[idx], preds[True][idx], len(classes)) - balanced_accuracy(
            yt[idx], preds[False][idx], len(classes)
        )
        on, off = (
            balanced_accuracy(yt[None], preds[b][None], len(classes))[0] for b in (True, False)
        )
        lo, hi = np.percentile(boot, [2.5, 97.5])
        diffs.append(on - off)
        print(
            f"{seed:>4} {100 * on:>8.1f} {100 * off:>8.1f} {100 * (on - off):>+9.1f} "
            f"[{100 * lo:>+6.1f}, {100 * hi:>+6.1f}] pp {np.mean(boot <= 0):>7.3f} "
            f"{secs[True]:>5.0f}/{secs[False]:<5.0f}"
        )
    print(f"\nmean difference over seeds: {100 * np.mean(diffs):+.2f} pp (balanced accuracy, %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12, 24, 48, 96])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--cache", default=None, help="measure bn_attention accuracy on a cache")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cache:
        compare_bn_attention(args.cache, args.seeds)
        return
    device = torch.device(args.device)
    print(f"device={device}  torch={torch.__version__}  threads={torch.get_num_threads()}")
    print(
        f"B={args.batch} D={args.dim}, heads: d=128, G=8 x 16; time = best of {args.repeats} fwd+bwd"
    )
    print("memory = peak of tensors allocated during the step (inputs and parameters excluded)\n")

    rows = []
    for n in args.depths:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(args.batch, n, args.dim, generator=g).to(device)
        y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
        row = {"L": n}
        for kind in ("kcla", "full"):
            head = make_head(kind, n, args.dim, device)
            row[f"{kind}_ms"] = 1e3 * time_step(head, x, y, args.repeats)
            row[f"{kind}_train_mb"] = peak_bytes(head, x, y, backward=True) / 2**20
            row[f"{kind}_infer_mb"] = peak_bytes(head, x, y, backward=False) / 2**20
        rows.append(row)

    cols = [
        "kcla_ms",
        "full_ms",
        "kcla_train_mb",
        "full_train_mb",
        "kcla_infer_mb",
        "full_infer_mb",
    ]
    heads = [
        "KCLA ms",
        "full ms",
        "KCLA train MiB",
        "full train MiB",
        "KCLA infer MiB",
        "full infer MiB",
    ]
    print(f"{'L':>4} " + " ".join(f"{h:>15}" for h in heads))
    for r in rows:
        print(f"{r['L']:>4} " + " ".join(f"{r[c]:>15.2f}" for c in cols))
    print("\ngrowth ratios between consecutive depths (L doubles: linear ~2x, quadratic ~4x)")
    print(f"{'L':>9} " + " ".join(f"{h:>15}" for h in heads))
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        ratio = [b[c] / a[c] if a[c] > 0 else float("nan") for c in cols]
        print(f"{a['L']:>3}->{b['L']:<4} " + " ".join(f"{v:>15.2f}" for v in ratio))
    first, last = rows[0], rows[-1]
    print(f"\n{first['L']}->{last['L']} layers (x{last['L'] / first['L']:.0f}):")
    for c, h in zip(cols, heads, strict=True):
        print(f"  {h:<15} x{last[c] / first[c]:.1f}")


if __name__ == "__main__":
    main()
