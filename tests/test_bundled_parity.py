"""On a real cache (bundled MiniLM on the bundled word-valence task): per-layer linear probes
match scikit-learn's LogisticRegression within 0.5 accuracy points on every layer."""

from __future__ import annotations

import numpy as np
import pytest

from probekit import extract, load_data, load_model

from .test_estimator import linear_parity


@pytest.mark.slow
def test_minilm_vader_linear_matches_sklearn_every_layer(tmp_path_factory):
    from sklearn.model_selection import train_test_split

    cache = extract(
        load_model("bundled:minilm-l6"),
        load_data("bundled:vader-valence"),
        tmp_path_factory.mktemp("minilm") / "cache",
        pooling="mean",
        batch_size=256,
        progress=False,
    )
    X, y = cache.load().numpy(), np.asarray(cache.labels)
    assert X.shape == (5588, 7, 384)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    ours, ref = linear_parity(X[tr], y[tr], X[te], y[te], max_iter=1000)
    diff = np.abs(ours - ref) * 100
    assert diff.max() <= 0.5, f"per-layer accuracy (ours, sklearn): {list(zip(ours, ref))}"
    assert ours.max() > 0.9  # word valence is well decodable from MiniLM's middle layers
