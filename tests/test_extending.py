"""A new data source, pooling and head, each one file plus one registry line, run through the CLI.

The plugin below is written to a temporary file and given to ``probekit run --plugins``; the test
then checks the run's real values: the cached ``max`` features equal a masked max over the
model's ``output_hidden_states``, and the new head's saved predictions and metrics equal a re-fit
of it in this process on the same cache and split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""toy: data, a max pooling and a layer-mean head: each one definition and one registry line."""

import torch
from torch import nn

from probekit import Dataset, ProbeHead, ProbeOutput
from probekit import register_data_source, register_pooling, register_probe

GOOD = ["good", "great", "happy", "lovely", "nice", "kind", "bright", "calm", "fine", "warm"]
BAD = ["bad", "awful", "sad", "ugly", "nasty", "cruel", "dark", "angry", "poor", "cold"]


def load_toy(source, spec, options):
    """``toy:N``: N short texts, label 1 for a good word, 0 for a bad one, alternating."""
    n = int(source)
    labels = [i % 2 for i in range(n)]
    words = [(GOOD if y else BAD)[(i // 2) % 10] for i, y in enumerate(labels)]
    texts = [f"a {w} day number {i}" for i, w in enumerate(words)]
    return Dataset(
        name="toy", kind="text", labels=labels, label_names=["bad", "good"], texts=texts,
        spec=spec, options={"limit": options.limit, "seed": options.seed},
    )


def max_pool(hidden, mask):
    """The max over the tokens the mask keeps: (B, T, D), (B, T) -> (B, D)."""
    if mask is None:
        return hidden.amax(dim=1)
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)


class LayerMeanHead(ProbeHead):
    """One linear map of the mean over layers: (B, T, D) -> mean over T -> (B, C)."""

    input_norm = "standardize"

    def __init__(self, n_layers, dims, n_classes, tokens_per_layer=1):
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        self.linear = nn.Linear(self.max_dim, n_classes)

    def forward(self, x):
        return ProbeOutput(logits=self.linear(x.mean(dim=1)))


register_data_source("toy", load_toy)
register_pooling("max", max_pool)
register_probe("layer-mean")(LayerMeanHead)
'''


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "toy_plugin.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture
def restore_registries():
    """The plugin registers into this process too: leave the registries as they were."""
    from probekit.data import sources
    from probekit.probes import registry
    from probekit.recording import pooling

    saved = [(m, name, dict(getattr(m, name))) for m, name in
             ((registry, "_REGISTRY"), (pooling, "_REGISTRY"), (sources, "_SOURCES"))]  # fmt: skip
    yield
    for module, name, before in saved:
        table = getattr(module, name)
        table.clear()
        table.update(before)


def test_a_plugin_adds_a_data_source_a_pooling_and_a_head_through_the_cli(
    plugin, tiny_bert_dir, tmp_path, restore_registries
):
    from transformers import AutoModel, AutoTokenizer

    from probekit import FeatureCache, ProbeClassifier, load_data
    from probekit._utils.plugins import import_plugins

    argv = [
        *("run", "--plugins", str(plugin), "--model", f"hf:{tiny_bert_dir}"),
        *("--data", "toy:60", "--pooling", "max", "--probes", "layer-mean,linear"),
        *("--out", str(tmp_path / "runs"), "--name", "toy", "--bootstrap", "20"),
        *("--figures", "", "--device", "cpu", "--precision", "fp32"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "probekit", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "toy"

    # the cache holds the new pooling: a masked max over every hidden state of the model
    import_plugins([str(plugin)])  # the same registrations in this process
    texts = load_data("toy:60").texts
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    bert = AutoModel.from_pretrained(tiny_bert_dir).eval()
    inputs = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**inputs, output_hidden_states=True).hidden_states  # L x (N, T, D)
    keep = inputs["attention_mask"].bool().unsqueeze(-1)
    ref = torch.stack([h.masked_fill(~keep, float("-inf")).amax(dim=1) for h in hidden], 1)
    cache = FeatureCache.open(run_dir / "cache")
    assert cache.poolings == ["max"]
    got = cache.load(pooling="max")  # (N, L, D)
    assert got.shape == ref.shape == (60, 4, 32)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # not the mean: the check above tells the two apart
    mean = torch.stack([(h * keep).sum(1) / keep.sum(1) for h in hidden], 1)
    assert (got - mean).abs().max() > 0.1

    # the new head was fitted, saved and scored; a re-fit here gives the same predictions
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["heads"]) == {"layer-mean", "linear"}
    split = json.loads((run_dir / "split.json").read_text())
    train, test = np.asarray(split["train"]), np.asarray(split["test"])
    labels = cache.labels
    X = got.numpy()
    saved = ProbeClassifier.load(run_dir / "probes" / "layer-mean")
    refit = ProbeClassifier(head="layer-mean", tokens_per_layer=1, random_state=0, device="cpu")
    refit.fit(X[train], labels[train], layer_names=list(cache.layer_names))
    pred = refit.predict(X[test])
    np.testing.assert_array_equal(saved.predict(X[test]), pred)
    np.testing.assert_allclose(
        saved.predict_proba(X[test]), refit.predict_proba(X[test]), atol=1e-6
    )
    assert len(set(refit.predict_proba(X[test])[:, 1].round(4))) > 1  # not a constant head
    accuracy = float(np.mean(pred == labels[test]))
    assert metrics["heads"]["layer-mean"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
