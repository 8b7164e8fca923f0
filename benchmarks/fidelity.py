"""Do the seed papers' headline claims hold on probekit's bundled checkpoints?

Three tasks, each a frozen bundled checkpoint over a labelled set, recorded once into a cache
(``--cache-dir``, reused by later runs):

* MiniLM-L6 x word valence (``bundled:minilm-l6`` x ``bundled:vader-valence``, CLS + mean tokens
  of 7 layers);
* EfficientNet-Lite0 x MNIST digits (``bundled:efficientnet-lite0`` x ``bundled:mnist``, spatial
  mean of 5 stages);
* EfficientNet-Lite0 x Fashion-MNIST (Debian's ``dataset-fashion-mnist``, read from
  ``/usr/share/datasets/fashion-mnist`` and wrapped with ``probekit.from_arrays``).

Every head trains on the same stratified 80% train split (seed 0) and is scored on the other
20% by balanced accuracy. The claims:

(a) ALF (Ciernik et al.) with its recipe vs the last-layer linear probe and vs the best single
    layer chosen on a validation split (paper: +5.5 pp over the last layer, mean of 19 sets);
(b) LAYA (Vessio) vs the last-layer linear probe and vs ALF (paper: on par or better);
(c) KCLA-style head (Xiong et al.) vs full softmax attention over layers (same adapters), and
    time / memory of both as depth grows (the functions of ``bench_kcla.py``);
(d) AILA (Claster et al.): which layers matter when each is replaced by its train mean, one at a
    time (paper: the middle ones).

Every difference is a PAIRED bootstrap over the test samples
(:func:`probekit.analysis.stats.paired_bootstrap`, the one ``metrics.json`` uses): the same resampled
indices score both classifiers; we report the difference of balanced accuracy, its 95% percentile
interval and the fraction of resamples where it is <= 0.

Usage::

    python benchmarks/fidelity.py --threads 1          # CPU recipe, all three tasks
    python benchmarks/fidelity.py --recipe paper       # ALF's full 63-point grid (a GPU recipe)
    python benchmarks/fidelity.py --tasks minilm --json fidelity.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import probekit
from probekit import ProbeClassifier
from probekit.analysis.stats import paired_bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kcla import FullLayerAttention, make_head, peak_bytes, time_step  # noqa: E402

probekit.register_probe("full-attention")(FullLayerAttention)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, then uint8 data), gzip-compressed."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(limit: int, seed: int) -> probekit.Dataset:
    """A class-stratified subset of ``limit`` Fashion-MNIST training images (28x28 uint8)."""
    images_path = FASHION_DIR / "train-images-idx3-ubyte.gz"
    if not images_path.is_file():
        raise SystemExit(
            f"{images_path} not found: install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass --tasks without fashion"
        )
    images = _read_idx(images_path)
    labels = _read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(seed)
    per_class = limit // 10
    keep = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
        )
    )
    return probekit.from_arrays(
        images[keep], labels[keep], label_names=list(FASHION_CLASSES), name="fashion-mnist"
    )


# --------------------------------------------------------------------------- tasks


@dataclass
class Task:
    """One (checkpoint, data set) pair and how it is recorded."""

    key: str
    title: str
    model: str
    batch_size: int

    def dataset(self, n_images: int, seed: int) -> probekit.Dataset:
        if self.key == "minilm":
            return probekit.load_data("bundled:vader-valence")
        if self.key == "mnist":
            return probekit.load_data("bundled:mnist", limit=n_images, seed=seed)
        return fashion_mnist(n_images, seed)


TASKS = {
    "minilm": Task("minilm", "MiniLM-L6 x word valence", "bundled:minilm-l6", 64),
    "mnist": Task("mnist", "EfficientNet-Lite0 x MNIST", "bundled:efficientnet-lite0", 50),
    "fashion": Task(
        "fashion", "EfficientNet-Lite0 x Fashion-MNIST", "bundled:efficientnet-lite0", 50
    ),
}


def load_task(
    task: Task, cache_dir: Path, n_images: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Record (or reuse) the task's cache; ``X (N, L*P, D)``, ``y (N,)``, layer names, P."""
    data = task.dataset(n_images, seed)
    out = cache_dir / ("minilm-vader" if task.key == "minilm" else f"effnet-{task.key}-{len(data)}")
    t0 = time.perf_counter()
    try:  # a finished cache of this very data set: no need to load the model
        cache = probekit.FeatureCache.open(out)
        if cache.manifest["dataset"]["fingerprint"] != data.fingerprint:
            raise probekit.CacheError("another data set")
    except probekit.CacheError:
        cache = probekit.extract(task.model, data, out, batch_size=task.batch_size, progress=False)
    print(
        f"[{task.key}] cache {out} ({len(cache)} samples, poolings {list(cache.poolings)}, "
        f"{time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    # flat (N, L * P, D): the heads get tokens_per_layer=P, mean_ablated slices layer-major tokens
    X = cache.load(pooling=list(cache.poolings), dtype=torch.float32, flat=True).numpy()
    return X, np.asarray(cache.labels), list(cache.layer_names), len(cache.poolings)


# --------------------------------------------------------------------------- statistics


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's definition)."""
    classes = np.unique(y)
    return float(np.mean([np.mean(pred[y == c] == c) for c in classes]))


# --------------------------------------------------------------------------- recipes

ALF_GRID: dict[str, list[float]] = {
    "lr": [1e-1, 1e-2, 1e-3],
    "weight_decay": [float(w) for w in np.logspace(-6, 0, 7)],
    "attn_dropout": [0.0, 0.1, 0.3],
}

RECIPES: dict[str, dict[str, Any]] = {
    # The reference recipe: 63 configurations (lr x weight decay x attention dropout), AdamW,
    # cosine to 1e-6, 40 epochs and >= 1000 steps, batch 2048 (>= 5 batches), jitter, chosen on
    # a stratified 80/20 split by balanced accuracy, then refit on the whole train split.
    "paper": {
        "lr": ALF_GRID["lr"],
        "weight_decay": ALF_GRID["weight_decay"],
        "head_params": {"attn_dropout": ALF_GRID["attn_dropout"]},
    },
    # What fits a 2-core CPU in minutes: the same three axes, two values each (8 configs), 20
    # epochs of batch 256 instead of >= 1000 steps; still jitter, cosine, selection, refit.
    "cpu": {
        "lr": [1e-2, 1e-3],
        "weight_decay": [1e-4, 1e-1],
        "head_params": {"attn_dropout": [0.0, 0.3]},
        "epochs": 20,
        "batch_size": 256,
    },
}
"""ALF's ``ProbeClassifier`` keywords per recipe (every other head keeps its own defaults)."""


def describe_recipe(name: str) -> str:
    params = RECIPES[name]
    hp = params.get("head_params", {})
    n = len(params.get("lr", [0])) * len(params.get("weight_decay", [0]))
    n *= int(np.prod([len(v) for v in hp.values()])) if hp else 1
    rest = {k: v for k, v in params.items() if k not in ("lr", "weight_decay", "head_params")}
    return (
        f"ALF recipe {name!r}: {n} configs, lr {params.get('lr')}, weight decay "
        f"{[f'{w:g}' for w in params.get('weight_decay', [])]}, "
        f"attention dropout {hp.get('attn_dropout')}, other settings {rest or 'the paper defaults'}"
    )


# --------------------------------------------------------------------------- one task


def _fit(
    name: str, head: str, Xtr: np.ndarray, ytr: np.ndarray, P: int, seed: int, **params: Any
) -> ProbeClassifier:
    t0, c0 = time.perf_counter(), time.process_time()
    clf = ProbeClassifier(head=head, tokens_per_layer=P, random_state=seed, device="cpu", **params)
    clf.fit(Xtr, ytr)
    extra = f" best {clf.best_params_}" if head == "alf" else ""
    print(
        f"    {name:<16} {time.perf_counter() - t0:6.1f} s ({time.process_time() - c0:6.1f} "
        f"CPU s){extra}",
        flush=True,
    )
    return clf


def best_layer_on_validation(Xtr: np.ndarray, ytr: np.ndarray, P: int, seed: int) -> int:
    """The layer whose linear probe has the best balanced accuracy on a stratified 20% of train."""
    from sklearn.model_selection import train_test_split

    fit, val = train_test_split(np.arange(len(ytr)), test_size=0.2, random_state=seed, stratify=ytr)
    clf = ProbeClassifier(head="linear", tokens_per_layer=P, val_size=0.0, random_state=seed)
    pred = clf.fit(Xtr[fit], ytr[fit]).predict_layers(Xtr[val])  # (n_val, L)
    scores = [balanced_accuracy(ytr[val], pred[:, j]) for j in range(pred.shape[1])]
    return int(np.argmax(scores))


def mean_ablated(clf: ProbeClassifier, X: np.ndarray, layer: int) -> np.ndarray:
    """Predictions with every token of ``layer`` replaced by its train mean ``(N,)``."""
    p = clf.tokens_per_layer_
    Xa = X.copy()
    Xa[:, layer * p : (layer + 1) * p] = clf.feature_mean_[layer * p : (layer + 1) * p]
    return clf.predict(Xa)


def run_task(
    task: Task,
    X: np.ndarray,
    y: np.ndarray,
    names: list[str],
    P: int,
    recipe: str,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Train every head on the task's train split; the claim rows on its test split."""
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    L = len(names)
    print(
        f"[{task.key}] {len(tr)} train / {len(te)} test, L = {L} layers x P = {P} tokens",
        flush=True,
    )

    lin = _fit("linear", "linear", Xtr, ytr, P, seed)
    layer_pred = lin.predict_layers(Xte)  # (N, L)
    sel = best_layer_on_validation(Xtr, ytr, P, seed)
    preds = {
        "last layer": layer_pred[:, -1],
        f"best layer ({names[sel]}, val)": layer_pred[:, sel],
    }
    best_key = f"best layer ({names[sel]}, val)"
    clfs = {
        "ALF": _fit("ALF", "alf", Xtr, ytr, P, seed, **RECIPES[recipe]),
        "LAYA": _fit("LAYA", "laya", Xtr, ytr, P, seed),
        "KCLA": _fit("KCLA", "kcla", Xtr, ytr, P, seed),
        "full attention": _fit("full attention", "full-attention", Xtr, ytr, P, seed),
        "AILA-linear": _fit("AILA-linear", "aila-linear", Xtr, ytr, P, seed),
        "AILA-attention": _fit("AILA-attention", "aila-attention", Xtr, ytr, P, seed),
    }
    preds.update({k: c.predict(Xte) for k, c in clfs.items()})
    score = {k: balanced_accuracy(yte, p) for k, p in preds.items()}
    per_layer = " ".join(f"{balanced_accuracy(yte, layer_pred[:, j]) * 100:.1f}" for j in range(L))
    print(f"    per-layer linear (test, %): {per_layer}", flush=True)

    rows = []

    def compare(claim: str, a: str, b: str, paper: str) -> None:
        pb = paired_bootstrap(yte, preds[a], preds[b], n_resamples=n_boot, seed=seed)
        res = {"difference": pb.difference, "ci": [pb.lo, pb.hi], "p_le0": pb.p_not_better}
        rows.append(
            {
                "task": task.key,
                "claim": claim,
                "a": a,
                "b": b,
                "a_score": score[a],
                "b_score": score[b],
                **res,
                "paper": paper,
            }
        )

    compare("a", "ALF", "last layer", "+5.5 pp (19 sets)")
    compare("a", "ALF", best_key, "-")
    compare("b", "LAYA", "last layer", "on par or better")
    compare("b", "LAYA", "ALF", "on par")
    compare("c", "KCLA", "full attention", "on par, cheaper")
    for arch in ("AILA-linear", "AILA-attention"):
        clf = clfs[arch]
        ablated = [mean_ablated(clf, Xte, j) for j in range(L)]
        drops = [score[arch] - balanced_accuracy(yte, p) for p in ablated]
        top = int(np.argmax(drops))
        key = f"{arch} w/o {names[top]}"
        preds[key], score[key] = ablated[top], score[arch] - drops[top]
        compare("d", arch, key, "middle layers matter most")
        rows[-1]["ablation_drop"] = [float(d) for d in drops]
        rows[-1]["top_layer"] = top
        rows[-1]["layer_names"] = names
    return rows


# --------------------------------------------------------------------------- output


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'task':<8} {'claim':<5} {'A - B':<48} {'A %':>6} {'B %':>6} {'diff pp':>8} "
        f"{'95% CI (pp)':>16} {'P(<=0)':>7}  paper"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ci = f"[{r['ci'][0] * 100:+.1f}, {r['ci'][1] * 100:+.1f}]"
        print(
            f"{r['task']:<8} {r['claim']:<5} {r['a'] + ' - ' + r['b']:<48} "
            f"{r['a_score'] * 100:6.1f} {r['b_score'] * 100:6.1f} {r['difference'] * 100:+8.1f} "
            f"{ci:>16} {r['p_le0']:7.3f}  {r['paper']}"
        )
    for r in rows:
        if "ablation_drop" in r:
            drops = " ".join(
                f"{n}:{d * 100:+.1f}"
                for n, d in zip(r["layer_names"], r["ablation_drop"], strict=True)
            )
            L = len(r["layer_names"])
            top = r["top_layer"]
            where = "the first" if top == 0 else "the last" if top == L - 1 else "a middle"
            print(
                f"  (d) {r['task']} {r['a']}: drop when one layer is mean-ablated (pp) {drops}"
                f" -> largest at {where} layer"
            )


def depth_scaling(
    depths: list[int], batch: int = 256, dim: int = 384, repeats: int = 3
) -> list[dict[str, Any]]:
    """(c) cost: KCLA vs full layer attention over depth (``bench_kcla``'s measurements)."""
    device = torch.device("cpu")
    rows = []
    for n in depths:
        g = torch.Generator().manual_seed(n)
        x = torch.randn(batch, n, dim, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        row: dict[str, Any] = {"L": n}
        for kind in ("kcla", "full"):
            head = make_head(kind, n, dim, device)
            row[f"{kind}_ms"] = 1e3 * time_step(head, x, y, repeats)
            row[f"{kind}_infer_mib"] = peak_bytes(head, x, y, backward=False) / 2**20
        rows.append(row)
    print(
        f"\n(c) cost over depth, B={batch} D={dim} (fwd+bwd ms, best of {repeats}; inference peak MiB)"
    )
    print(f"{'L':>4} {'KCLA ms':>9} {'full ms':>9} {'KCLA MiB':>9} {'full MiB':>9}")
    for r in rows:
        print(
            f"{r['L']:>4} {r['kcla_ms']:9.1f} {r['full_ms']:9.1f} {r['kcla_infer_mib']:9.2f} "
            f"{r['full_infer_mib']:9.2f}"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--recipe", choices=list(RECIPES), default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=Path(".fidelity-cache"))
    parser.add_argument("--n-images", type=int, default=2000, help="images per image task")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--depths", type=int, nargs="+", default=[6, 12, 24, 48])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (1 is much faster on a CPU shared with other jobs)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {describe_recipe(args.recipe)}"
    )
    print(
        "other heads: their own defaults (LAYA: Adam 3e-4, batch 128, early stopping; KCLA, "
        "full attention, AILA: AdamW 1e-3, early stopping); linear: L-BFGS, C = 1\n",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for key in args.tasks:
        task = TASKS[key]
        X, y, names, P = load_task(task, args.cache_dir, args.n_images, args.seed)
        rows += run_task(task, X, y, names, P, args.recipe, args.bootstrap, args.seed)
    print(
        f"\nbalanced accuracy on the test split; diff = A - B, paired bootstrap ({args.bootstrap} "
        f"resamples of the test samples); P(<=0) = fraction of resamples with diff <= 0\n"
    )
    print_table(rows)
    scaling = depth_scaling(args.depths)
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s wall, {time.process_time():.0f} CPU s "
        f"(all threads of this process)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"recipe": args.recipe, "rows": rows, "depth": scaling}, indent=1)
        )


if __name__ == "__main__":
    main()
