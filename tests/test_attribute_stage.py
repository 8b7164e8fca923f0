"""The attribute stage under a memory budget: chunked from the memory-mapped cache, equal to an
attribution of the whole test split in memory, and bounded in resident memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

from probekit.analysis.attribution import (
    ablation_sensitivity,
    attribution_agreement,
    layer_attribution,
    layer_map,
)
from probekit.cache import FeatureCache
from probekit.errors import ConfigError
from probekit.estimator import ProbeClassifier, ProbeRegressor
from probekit.runs.attribute import attribute_stage
from probekit.runs.config import RunConfig
from probekit.runs.fit import fit_stage
from probekit.runs.folder import write_config, write_split, write_targets

from .test_estimator import _make_cache
from .test_outofcore import _write_cache

HEADS = ["aila-attention", "aila-linear", "alf", "concat", "kcla", "laya", "linear", "scalar-mix"]
QUICK = {"epochs": 2}
TINY = "12KB"  # rows of 240 bytes: 6 per chunk, an ablated batch of one sample


def _run(tmp_path, task="classification", heads=None):
    cache = _make_cache(tmp_path / "cache")
    if task == "regression":
        rng = np.random.default_rng(1)
        write_targets(
            tmp_path / "cache",
            rng.normal(size=len(cache)).tolist(),
            "score",
            cache.manifest["dataset"]["fingerprint"],
        )
    if heads is None:
        heads = HEADS if task == "classification" else ["linear", "laya", "aila-attention"]
    params = {h: dict(QUICK) for h in heads if h != "linear"}
    if len(heads) > 2:
        params["laya"]["layers"] = [0, 2]  # a head on some of the cache's layers
    cfg = RunConfig(
        name="run",
        out=str(tmp_path),
        probes=heads,
        cache=str(tmp_path / "cache"),
        bootstrap=10,
        probe_params=params,
        task=task,
        test_size=0.25,
    )
    write_config(cfg)
    fit_stage(cache, cfg, progress=False)
    return tmp_path / "run", cache


def _reference(run_dir, cache, mode, seed, regression=False):
    """The whole test split in memory, through the public functions, as a naive stage would."""
    test = np.asarray(json.loads((run_dir / "split.json").read_text())["test"])
    X = cache.load(pooling=cache.poolings)[test]  # (N, L, P, D) for several poolings
    if regression:
        y = np.asarray(
            json.loads((run_dir.parent / "cache" / "targets.json").read_text())["targets"]
        )
        y = y[np.asarray(cache.index)][test]
    else:
        y = np.asarray(cache.labels)[test]
    est = ProbeRegressor if regression else ProbeClassifier
    out = {}
    for head_dir in sorted((run_dir / "probes").iterdir()):
        clf = est.load(head_dir)
        abl = ablation_sensitivity(clf, X, y, mode=mode, random_state=seed)
        ref = {
            "ablation": abl.per_sample,
            "accuracy_drop": abl.accuracy_drop,
            "base_accuracy": abl.base_accuracy,
            "predictions": clf.predict(X),
        }
        try:
            ref["layer_weights"] = layer_attribution(clf, X)
            ref["agreement"] = attribution_agreement(ref["layer_weights"], abl.per_sample)
        except ValueError:
            pass
        try:
            ref["layer_map"] = layer_map(clf, X)
        except ValueError:
            pass
        out[head_dir.name] = ref
    return out


def _check(run_dir, summary, refs, rtol=0.0):
    """Outputs within 1e-6 (plus ``rtol``: regression's squared errors are in target units) of
    the in-memory reference: the heads run in float32 on batches of other sizes."""
    assert set(summary["heads"]) == set(refs)
    for head, ref in refs.items():
        got = load_file(str(run_dir / "attribution" / f"{head}.safetensors"))
        entry = summary["heads"][head]
        keys = {"ablation", "accuracy_drop", "predictions"} | (
            {"layer_weights", "agreement", "layer_map"} & set(ref)
        )
        assert keys <= set(got), (head, set(got))
        assert ("layer_weights" in got) == ("layer_weights" in ref), head
        assert ("layer_map" in got) == ("layer_map" in ref), head
        for key in keys:
            np.testing.assert_allclose(
                got[key],
                np.asarray(ref[key], dtype=got[key].dtype),
                rtol=rtol,
                atol=1e-6,
                err_msg=f"{head} {key}",
            )
        np.testing.assert_allclose(
            entry["ablation_mean"], ref["ablation"].mean(0), rtol=rtol, atol=1e-6
        )
        np.testing.assert_allclose(
            entry["accuracy_drop"], ref["accuracy_drop"], rtol=rtol, atol=1e-6
        )
        assert entry["base_accuracy"] == pytest.approx(ref["base_accuracy"], abs=1e-6)
        if "layer_weights" in ref:
            np.testing.assert_allclose(
                entry["weights_mean"], ref["layer_weights"].mean(0), atol=1e-6
            )
            assert entry["agreement_median"] == pytest.approx(
                float(np.nanmedian(ref["agreement"])), abs=1e-6
            )


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("attribute"))


@pytest.mark.parametrize("mode", ["mean", "zero", "shuffle"])
def test_chunked_stage_equals_the_whole_split_in_memory(classification_run, mode):
    run_dir, cache = classification_run
    refs = _reference(run_dir, cache, mode, seed=3)
    assert {h for h, r in refs.items() if "layer_weights" in r} >= {"laya", "alf", "kcla"}
    assert {h for h, r in refs.items() if "layer_map" in r} >= {"aila-attention"}
    summary = attribute_stage(run_dir, ablation=mode, seed=3, memory_budget=TINY)
    _check(run_dir, summary, refs)
    assert not list((run_dir / "attribution").glob(".*"))  # no scratch file left
    # one chunk (a large budget) gives the same
    _check(run_dir, attribute_stage(run_dir, ablation=mode, seed=3, memory_budget="1GB"), refs)


def test_chunked_regression_stage_equals_in_memory(tmp_path):
    run_dir, cache = _run(tmp_path, task="regression")
    refs = _reference(run_dir, cache, "shuffle", seed=1, regression=True)
    summary = attribute_stage(run_dir, ablation="shuffle", seed=1, memory_budget=TINY)
    _check(run_dir, summary, refs, rtol=1e-5)
    got = load_file(str(run_dir / "attribution" / "linear.safetensors"))
    test = json.loads((run_dir / "split.json").read_text())["test"]
    y = np.asarray(json.loads((run_dir.parent / "cache" / "targets.json").read_text())["targets"])
    np.testing.assert_array_equal(
        got["targets"], y[np.asarray(cache.index)][test].astype(np.float32)
    )


def test_cli_attribute_takes_a_budget(tmp_path, capsys):
    from probekit.cli import main

    run_dir, cache = _run(tmp_path, heads=["linear", "laya"])  # the figures need every layer
    assert main(["attribute", str(run_dir), "--memory-budget", TINY, "--ablation", "zero"]) == 0
    refs = _reference(run_dir, cache, "zero", seed=0)
    _check(run_dir, json.loads((run_dir / "attribution" / "attribution.json").read_text()), refs)
    capsys.readouterr()
    assert main(["attribute", str(run_dir), "--memory-budget", "lots"]) == 2
    assert "memory_budget" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="ablation"):
        attribute_stage(run_dir, ablation="noise")


def test_figures_and_report_with_a_head_on_some_layers(tmp_path):
    """A head fitted on layers 0 and 2 of 3: its figures are drawn over its own layers (the
    figures of `probekit attribute` failed on it before)."""
    from probekit.report.html import build_figures, write_report

    run_dir, _ = _run(tmp_path, heads=["linear", "laya", "alf"])  # laya on layers [0, 2]
    attribute_stage(run_dir, memory_budget=TINY)
    figs = {f.name: f.figure for f in build_figures(run_dir)}
    assert list(figs["weights-laya"].data[0].x) == ["layers.0", "layers.2"]
    assert list(figs["ablation-laya"].data[0].x) == ["layers.0", "layers.2"]
    assert list(figs["weights-alf"].data[0].x) == ["layers.0", "layers.1", "layers.2"]
    assert write_report(run_dir).is_file()


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from probekit._utils.memory import peak_rss, reset_peak_rss, rss
    from probekit.pipeline import attribute_stage
    from probekit.estimator import ProbeClassifier
    from probekit.analysis.attribution import ablation_sensitivity, layer_attribution
    run_dir, budget = sys.argv[1], sys.argv[2]
    warm = np.random.default_rng(0).normal(size=(8, 8, 1024)).astype(np.float32)
    clf = ProbeClassifier.load(run_dir + "/probes/laya")
    ablation_sensitivity(clf, warm, np.arange(8) % 2, mode="shuffle")  # load every module
    layer_attribution(clf, warm)
    assert reset_peak_rss()  # the peak of this process only, from here
    base = rss()
    attribute_stage(run_dir, ablation="shuffle", memory_budget=budget)
    print(json.dumps({"growth_mb": (peak_rss() - base) / 2**20}))
    """
)


def test_stage_peak_memory_stays_within_budget(tmp_path):
    # 4000 samples x 8 layers x 1024 float32 = 125 MiB of features, a quarter of them in the test
    # split: the in-memory stage loaded the whole cache, then its test rows (> 150 MiB). Chunked
    # under a 32 MiB budget, shuffle ablation included (its rows gathered from every shard), the
    # peak resident set grows by about the budget, not the cache.
    n, layers, dim = 4000, 8, 1024
    _write_cache(tmp_path / "cache", n, [dim] * layers, shard_size=500)
    run_dir = tmp_path / "run"
    cfg = RunConfig(
        name="run", out=str(tmp_path), probes=["linear", "laya"], cache=str(tmp_path / "cache")
    )
    write_config(cfg)
    test = np.arange(1, n, 4)
    write_split(run_dir, np.setdiff1d(np.arange(n), test).tolist(), test.tolist(), 0, 0.25)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, layers, dim)).astype(np.float32)
    y = np.arange(200) % 2
    ProbeClassifier("linear", max_iter=5, random_state=0).fit(x, y).save(run_dir / "probes/linear")
    ProbeClassifier("laya", epochs=1, random_state=0).fit(x, y).save(run_dir / "probes/laya")
    res = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(run_dir), "32MiB"],
        capture_output=True,
        text=True,
        check=True,
    )
    growth = json.loads(res.stdout.strip().splitlines()[-1])["growth_mb"]
    features_mb = n * layers * dim * 4 / 2**20
    print(f"peak RSS growth of the chunked attribute stage: {growth:.1f} MiB")
    assert growth < 2 * 32 + 16 < 0.75 * features_mb, growth  # measured: 43-55 MiB (main: 1 GiB)
    out = load_file(str(run_dir / "attribution" / "laya.safetensors"))
    assert out["ablation"].shape == (test.size, layers)
    # the test rows' layer weights and predictions as in memory
    cache = FeatureCache.open(tmp_path / "cache")
    clf = ProbeClassifier.load(run_dir / "probes" / "laya")
    xt = cache.load()[test[:300]]
    np.testing.assert_allclose(out["layer_weights"][:300], layer_attribution(clf, xt), atol=1e-6)
    np.testing.assert_array_equal(out["predictions"][:300], clf.predict(xt))
