"""Control tasks, MDL, layer similarity and the random-init baseline in the cache -> probe ->
report flow: ``probekit fit --control --mdl``, ``probekit compare``, ``compare_random`` runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from probekit.cli import main

POS = ["good", "great", "nice", "lovely", "happy", "joy", "fine", "super", "kind", "calm"]
NEG = ["bad", "awful", "nasty", "horrid", "sad", "pain", "grim", "vile", "mean", "cruel"]


def _csv(path: Path, reps: int = 3, suffix: str = "") -> Path:
    rows = [f"{w}{suffix} {i},positive" for i in range(reps) for w in POS]
    rows += [f"{w}{suffix} {i},negative" for i in range(reps) for w in NEG]
    # every text twice: the control task's labels are per type, so repeats share one
    path.write_text("text,label\n" + "\n".join(rows + rows) + "\n")
    return path


@pytest.fixture
def word_cache(tiny_bert_dir, tmp_path):
    out = tmp_path / "cache"
    data = _csv(tmp_path / "words.csv")
    assert main(["extract", "--model", f"hf:{tiny_bert_dir}", "--data", f"csv:{data}",
                 "--out", str(out)]) == 0
    return out


def test_fit_control_and_mdl_write_metrics_and_report(word_cache, tmp_path):
    from probekit import FeatureCache, ProbeClassifier, similarity
    from probekit.compare import read_similarity
    from probekit.control import label_cdf, labels_from_cdf

    out = tmp_path / "fit"
    assert main(["fit", "--cache", str(word_cache), "--probe", "linear", "--out", str(out),
                 "--bootstrap", "50", "--control", "--mdl"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())
    cache = FeatureCache.open(word_cache)
    X = cache.load(pooling=cache.poolings)
    y = np.asarray(cache.labels)
    keys = list(cache.texts)
    tr, te = np.asarray(split["train"]), np.asarray(split["test"])
    lin = metrics["heads"]["linear"]
    # the control probe, refitted independently: control labels of every sample from the train
    # labels' distribution and the recorded seed; per-layer test accuracy on them
    classes, cdf = label_cdf(y[tr])
    y_ctl = labels_from_cdf(keys, classes, cdf, lin["control"]["seed"])
    ref = ProbeClassifier(head="linear", tokens_per_layer=len(cache.poolings), random_state=0,
                          device="cpu").fit(X[tr], y_ctl[tr])
    ctl_acc = (ref.predict_layers(X[te]) == y_ctl[te, None]).mean(0)
    rows = lin["per_layer"]
    np.testing.assert_allclose([r["control_accuracy"] for r in rows], ctl_acc, atol=1.01 / len(te))
    for r in rows:
        assert r["selectivity"] == pytest.approx(r["accuracy"] - r["control_accuracy"], abs=1e-9)
        lo, hi = r["selectivity_ci"]
        assert lo <= r["selectivity"] <= hi
    np.testing.assert_allclose(lin["control"]["validation_selectivity"],
                               np.subtract(lin["control"]["validation_accuracy"],
                                           lin["control"]["validation_control_accuracy"]))
    # MDL: the uniform code is n_train log2(C); compression = uniform / online, per layer
    mdl = metrics["mdl"]
    assert [r["layer"] for r in mdl["layers"]] == list(cache.layer_names)
    assert mdl["n_samples"] == len(tr)
    for r in mdl["layers"]:
        assert r["uniform_bits"] == pytest.approx(len(tr) * math.log2(2))
        assert r["compression"] == pytest.approx(r["uniform_bits"] / r["online_bits"])
    # the within-model CKA, as probekit.similarity computes it
    m, names, _ = read_similarity(out / metrics["similarity"]["file"])
    np.testing.assert_allclose(m, similarity(cache), atol=1e-12)
    assert names == list(cache.layer_names)
    with open(out / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    layer_rows = [r for r in table if r["head"] == "linear" and r["layer"] != "all"]
    np.testing.assert_allclose([float(r["selectivity"]) for r in layer_rows],
                               [r["selectivity"] for r in rows], atol=1e-4)
    assert main(["report", str(out)]) == 0
    report = (out / "report.html").read_text()
    for text in ("Control task and selectivity per layer", "MDL probing (online code)",
                 "Layer similarity (linear CKA)", "selectivity %", "online bits"):
        assert text in report, text

