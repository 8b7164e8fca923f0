"""Storage precision: float16 / bfloat16 caches hold the float32 features rounded once, take half
the disk, are fingerprinted, and barely move probe accuracy on the bundled MiniLM cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit import ProbeClassifier, extract, from_arrays, load_data, load_model


def _words(n: int = 20):
    texts = [f"word {i} " + "more " * (i % 4) for i in range(n)]
    return from_arrays(texts, [i % 2 for i in range(n)], label_names=["a", "b"])


def _shard_bytes(cache) -> int:
    return sum(p.stat().st_size for p in (cache.path / "shards").glob("*.safetensors"))


def test_half_precision_caches_are_the_float32_features_rounded_once(tiny_bert_dir, tmp_path):
    lm, data = load_model(tiny_bert_dir), _words()
    full = extract(lm, data, tmp_path / "f32", batch_size=8, shard_size=8, progress=False)
    prints = {}
    for name, dt in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        half = extract(
            lm, data, tmp_path / name, batch_size=8, shard_size=8, store_dtype=name, progress=False
        )
        assert half.manifest["dtype"] == name
        assert half.manifest["fingerprint"] != full.manifest["fingerprint"]
        prints[name] = half.manifest["fingerprint"]
        for key in full.keys():
            assert half[key].dtype == dt
            assert torch.equal(half[key], full[key].to(dt)), key  # one rounding, nothing else
        tensors = sum(full[k].numel() for k in full.keys())
        saved = _shard_bytes(full) - _shard_bytes(half)  # 2 bytes a value, give or take the
        assert abs(saved - 2 * tensors) <= 8 * 3, saved  # 8-byte header padding of 3 shards
    assert prints["float16"] != prints["bfloat16"]


@pytest.mark.slow
def test_half_precision_storage_moves_linear_probe_accuracy_by_at_most_0_3_points(tmp_path):
    """Per-layer linear probes (3-fold over 2000 words: 0.3 points = 6 of 2000 predictions) on
    float32 features and on the same features stored in float16 and bfloat16."""
    from sklearn.model_selection import StratifiedKFold

    cache = extract(
        load_model("bundled:minilm-l6"),
        load_data("bundled:vader-valence", limit=2000),
        tmp_path / "cache",
        pooling="mean",
        batch_size=256,
        progress=False,
    )
    X32, y = cache.load(), np.asarray(cache.labels)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(len(y)), y))

    def accuracy(X: torch.Tensor) -> np.ndarray:
        X = X.float().numpy()
        hits = np.zeros(X.shape[1])
        for tr, te in folds:
            clf = ProbeClassifier("linear", val_size=0, max_iter=200, random_state=0)
            clf.fit(X[tr], y[tr])
            hits += (clf.predict_layers(X[te]) == y[te, None]).sum(0)
        return hits / len(y)

    ref = accuracy(X32)
    assert ref.max() > 0.9  # valence is decodable: the comparison is not between two coin flips
    for dt in (torch.float16, torch.bfloat16):
        got = accuracy(X32.to(dt))  # what a float16 / bfloat16 cache holds (test above)
        diff = np.abs(got - ref) * 100
        assert diff.max() <= 0.3, f"{dt}: per-layer accuracy (fp32, stored): {list(zip(ref, got))}"
