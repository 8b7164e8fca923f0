"""The report of a big run: attribution read lazily in chunks, per-sample heatmaps subsampled
above a cap (class-stratified, seeded), every mean over all test samples, bounded memory; a small
run's figures unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from safetensors.numpy import load_file, save_file

from probekit.analysis.attribution import AblationResult
from probekit.report.arrays import stratified_subsample
from probekit.report.html import _head_layers, build_figures
from probekit.runs.attribute import _RowFile, attribute_stage
from probekit.runs.config import RunConfig
from probekit.runs.folder import write_config, write_split
from probekit.viz import (
    AblationDisplay,
    ClassProfileDisplay,
    LayerAttributionDisplay,
    LayerMapDisplay,
)

from .test_attribute_stage import _run
from .test_outofcore import _write_cache


def test_small_run_figures_are_those_of_the_whole_arrays(tmp_path):
    """At or under the cap, every attribution figure is exactly what the displays draw from the
    whole arrays loaded in memory (the report before it read them lazily)."""
    run_dir, cache = _run(tmp_path)  # every head; laya on layers 0 and 2; AILA layer maps
    attribute_stage(run_dir)
    figs = {f.name: f for f in build_figures(run_dir)}
    summary = json.loads((run_dir / "attribution" / "attribution.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = np.asarray(summary["test"])
    labels = np.asarray(cache.labels)[test]
    names = metrics["label_names"]
    checked = 0
    for path in sorted((run_dir / "attribution").glob("*.safetensors")):
        head, a = path.stem, load_file(str(path))
        layers = _head_layers(run_dir, head, metrics["layer_names"])
        want = {}
        if "layer_weights" in a and head != "scalar-mix":
            want["weights"] = LayerAttributionDisplay.from_arrays(
                a["layer_weights"],
                layers,
                labels,
                names,
                predictions=a["predictions"],
                sample_ids=np.asarray(cache.index)[test],
                texts=[cache.texts[i] for i in test] if cache.texts else None,
                value_name=f"{head} layer weight",
            ).figure_
            want["profile"] = ClassProfileDisplay.from_arrays(
                a["layer_weights"], layers, labels, names, value_name=f"{head} layer weight"
            ).figure_
        want["ablation"] = AblationDisplay.from_result(
            AblationResult(
                per_sample=a["ablation"],
                accuracy_drop=a["accuracy_drop"],
                base_accuracy=summary["heads"][head]["base_accuracy"],
                layer_names=list(layers),
                mode=summary["mode"],
            )
        ).figure_
        if "layer_map" in a:
            want["layermap"] = LayerMapDisplay.from_arrays(a["layer_map"], layers).figure_
        for kind, fig in want.items():
            assert figs[f"{kind}-{head}"].figure.to_json() == fig.to_json(), (kind, head)
            checked += 1
        assert "shown" not in figs[f"ablation-{head}"].caption
    assert checked == 20  # 5 heatmaps, 5 profiles, 8 ablations and 2 layer maps of 8 heads
    assert "weights-laya" in figs and "test samples shown" not in figs["weights-laya"].caption


def _synthetic_run(tmp_path, n_cache, layers, test, heads, rng, memory_budget="1MB", writer=False):
    """A run folder whose attribution files are written directly (random values, NaNs in the
    layer maps), over a synthetic cache of ``n_cache`` samples (labels ``i % 2``)."""
    _write_cache(tmp_path / "cache", n_cache, [4] * layers, shard_size=max(50, n_cache // 4))
    cfg = RunConfig(
        name="run",
        out=str(tmp_path),
        probes=list(heads),
        cache=str(tmp_path / "cache"),
        memory_budget=memory_budget,
    )
    write_config(cfg)
    run_dir = tmp_path / "run"
    write_split(run_dir, np.setdiff1d(np.arange(n_cache), test).tolist(), test.tolist(), 0, 0.25)
    names = [f"layers.{i}" for i in range(layers)]
    metrics = {
        "layer_names": names,
        "label_names": ["a", "b"],
        "n_train": 0,
        "n_test": len(test),
        "heads": {
            h: {
                "accuracy": 0.5,
                "accuracy_ci": [0.4, 0.6],
                "balanced_accuracy_ci": [0.4, 0.6],
                "balanced_accuracy": 0.5 + 0.01 * i,
            }
            for i, h in enumerate(heads)
        },
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    att = run_dir / "attribution"
    att.mkdir()
    n = len(test)
    for head in heads:
        aila = head.startswith("aila")
        if writer:  # block by block, never the whole arrays in memory
            out = _RowFile(
                att / f"{head}.safetensors", n, {"accuracy_drop": ((layers,), np.float32)}
            )
            for start in range(0, n, 2000):
                b = min(2000, n - start)
                rows = {
                    "ablation": rng.normal(size=(b, layers)).astype(np.float32),
                    "layer_weights": rng.random((b, layers)).astype(np.float32),
                    "predictions": rng.integers(0, 2, b),
                }
                if aila:
                    rows["layer_map"] = rng.random((b, layers, layers)).astype(np.float32)
                out.write(start, rows)
            out.finish({"accuracy_drop": rng.normal(size=layers).astype(np.float32)})
        else:
            arrays = {
                "ablation": rng.normal(size=(n, layers)).astype(np.float32),
                "layer_weights": rng.random((n, layers)).astype(np.float32),
                "accuracy_drop": rng.normal(size=layers).astype(np.float32),
                "predictions": rng.integers(0, 2, n),
            }
            if aila:
                lm = rng.random((n, layers, layers)).astype(np.float32)
                lm[rng.random(lm.shape) < 0.05] = np.nan
                arrays["layer_map"] = lm
            save_file(arrays, str(att / f"{head}.safetensors"))
    summary = {
        "mode": "mean",
        "test": test.tolist(),
        "heads": {h: {"base_accuracy": 0.5, "agreement_median": 0.1} for h in heads},
    }
    (att / "attribution.json").write_text(json.dumps(summary))
    return run_dir


def test_stratified_subsample_is_proportional_sorted_and_seeded():
    rng = np.random.default_rng(3)
    labels = rng.choice(5, size=10_007, p=[0.5, 0.3, 0.15, 0.049, 0.001])
    for k in (1, 7, 100, 999):
        idx = stratified_subsample(labels, k, seed=11)
        assert len(idx) == k and len(np.unique(idx)) == k and np.all(np.diff(idx) > 0)
        got = np.bincount(labels[idx], minlength=5)
        want = k * np.bincount(labels, minlength=5) / len(labels)
        assert np.all(np.abs(got - want) < 1 + 1e-9), (k, got, want)
        np.testing.assert_array_equal(idx, stratified_subsample(labels, k, seed=11))
    assert not np.array_equal(
        stratified_subsample(labels, 100, 1), stratified_subsample(labels, 100, 2)
    )
    np.testing.assert_array_equal(stratified_subsample(labels[:50], 50), np.arange(50))


def test_big_run_subsamples_heatmaps_and_means_all_samples(tmp_path):
    rng = np.random.default_rng(0)
    n_cache, layers, cap = 4000, 5, 101
    # an unbalanced test split: every sample of class 0 below 3000, a third of class 1
    idx = np.arange(n_cache)
    test = np.sort(np.concatenate([idx[(idx % 2 == 0) & (idx < 3000)], idx[idx % 6 == 1]]))
    heads = ["aila-attention", "laya"]
    run_dir = _synthetic_run(tmp_path, n_cache, layers, test, heads, rng)  # 1MB: 125kB chunks
    figs = {f.name: f for f in build_figures(run_dir, max_samples=cap)}
    again = {f.name: f for f in build_figures(run_dir, max_samples=cap)}
    labels = test % 2  # the cache's labels
    n = len(test)
    for head in heads:
        a = load_file(str(run_dir / "attribution" / f"{head}.safetensors"))
        w = a["layer_weights"].astype(np.float64)
        heat = figs[f"weights-{head}"]
        assert f"{cap} of {n} test samples shown" in heat.caption
        assert f"{cap} of {n} test samples shown" in heat.figure.layout.title.text
        z = np.asarray(heat.figure.data[0].z)
        ids = np.array([int(c[0][0]) for c in heat.figure.data[0].customdata])  # cache index
        assert z.shape == (cap, layers)
        assert heat.figure.to_json() == again[f"weights-{head}"].figure.to_json()  # seeded
        pos = np.searchsorted(test, ids)  # rows of the test split shown
        assert np.array_equal(test[pos], ids) and len(np.unique(ids)) == cap
        np.testing.assert_array_equal(z, w[pos])  # the right rows, grouped by class ...
        for c in (0, 1):  # ... in the original order within a class, in proportion
            rows = pos[labels[pos] == c]
            assert np.all(np.diff(rows) > 0)
            assert abs(len(rows) - cap * np.mean(labels == c)) < 1 + 1e-9
        # means over ALL test samples, read in many chunks
        prof = np.asarray(figs[f"profile-{head}"].figure.data[0].z)
        want = np.stack([w[labels == c].mean(0) for c in (0, 1)])
        np.testing.assert_allclose(prof, want, rtol=1e-10)
        bars = figs[f"ablation-{head}"].figure.data
        abl = a["ablation"].astype(np.float64)
        np.testing.assert_allclose(bars[0].y, abl.mean(0), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(
            bars[0].error_y.array, 1.959963984540054 * abl.std(0, ddof=1) / np.sqrt(n), rtol=1e-9
        )
        np.testing.assert_allclose(bars[1].y, a["accuracy_drop"].astype(np.float64))
        assert f"N = {n}" in figs[f"ablation-{head}"].figure.layout.title.text
    lm = load_file(str(run_dir / "attribution" / "aila-attention.safetensors"))["layer_map"]
    assert np.isnan(lm).any()
    np.testing.assert_allclose(
        figs["layermap-aila-attention"].figure.data[0].z,
        np.nanmean(lm.astype(np.float64), axis=0),
        rtol=1e-10,
    )
    # under the cap: every sample, no note
    full = {f.name: f for f in build_figures(run_dir, max_samples=n)}
    assert np.asarray(full["weights-laya"].figure.data[0].z).shape == (n, layers)
    assert "shown" not in full["weights-laya"].caption


def test_regression_heatmap_subsample_follows_the_targets(tmp_path):
    """A regression run above the cap: a seeded sample stratified by target decile, drawn sorted
    by target; the ablation bars over every test sample; a head on some layers drawn over its
    own layers."""
    run_dir, _ = _run(tmp_path, task="regression")  # linear, laya (layers 0 and 2), AILA
    attribute_stage(run_dir)
    cap = 10
    figs = {f.name: f for f in build_figures(run_dir, max_samples=cap)}
    again = {f.name: f for f in build_figures(run_dir, max_samples=cap)}
    for head in ("laya", "aila-attention"):
        a = load_file(str(run_dir / "attribution" / f"{head}.safetensors"))
        y, w = a["targets"], a["layer_weights"]
        n = len(y)
        heat = figs[f"weights-{head}"]
        assert f"{cap} of {n} test samples shown" in heat.caption
        assert f"({cap} of {n} test samples shown)" in heat.figure.layout.title.text
        assert heat.figure.to_json() == again[f"weights-{head}"].figure.to_json()
        z = np.asarray(heat.figure.data[0].z)
        assert z.shape == (cap, w.shape[1]) and list(heat.figure.data[0].x) == (
            ["layers.0", "layers.2"] if head == "laya" else ["layers.0", "layers.1", "layers.2"]
        )
        rows = [int(np.flatnonzero((w == r).all(1))[0]) for r in z]  # which samples are drawn
        assert len(set(rows)) == cap and np.all(np.diff(y[rows]) >= 0)  # sorted by target
        deciles = np.searchsorted(np.quantile(y, np.linspace(0, 1, 11)[1:-1]), y)
        got = np.bincount(deciles[rows], minlength=10)
        assert np.all(np.abs(got - cap * np.bincount(deciles, minlength=10) / n) < 1 + 1e-9)
        abl = a["ablation"].astype(np.float64)
        np.testing.assert_allclose(
            figs[f"ablation-{head}"].figure.data[0].y, abl.mean(0), rtol=1e-12, atol=1e-15
        )
    full = {f.name: f for f in build_figures(run_dir)}
    assert np.asarray(full["weights-laya"].figure.data[0].z).shape[0] == n
    assert (
        "shown" not in full["weights-laya"].caption + full["weights-laya"].figure.layout.title.text
    )


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from probekit.analysis.attribution import AblationResult
    from probekit.cache import FeatureCache
    from probekit._utils.memory import peak_rss, reset_peak_rss, rss
    from probekit.report.html import write_report
    from probekit.viz import AblationDisplay, LayerAttributionDisplay, LayerMapDisplay

    run_dir, cache_dir = sys.argv[1], sys.argv[2]
    warm = np.random.default_rng(0).random((8, 4))  # import torch, scipy, plotly and the displays
    FeatureCache.open(cache_dir)
    LayerAttributionDisplay.from_arrays(warm, list("abcd"), np.arange(8) % 2).figure_.to_html()
    LayerMapDisplay.from_arrays(warm[:4], list("abcd"))
    AblationDisplay.from_result(AblationResult(warm, warm[0], 0.5, list("abcd"), "mean"))
    assert reset_peak_rss()  # the peak of this process only, from here
    base = rss()
    path = write_report(run_dir)
    growth = (peak_rss() - base) / 2**20
    print(json.dumps({"growth_mb": growth, "html_mb": path.stat().st_size / 2**20}))
    """
)


def test_report_of_a_big_run_stays_within_memory(tmp_path):
    # 60,000 test samples x 32 layers: the AILA layer map is 60000 x 32 x 32 float32 = 234 MiB
    # on disk, twice that as float64, and numpy's nanmean copies it once more: the report that
    # loaded the arrays whole grew by 2.2 GiB (and wrote a 128 MB report.html). Read in chunks of
    # at most 4 MiB, it grows by what two 2,000-row heatmaps take to serialise (80-84 MiB measured).
    rng = np.random.default_rng(1)
    n, layers = 60_000, 32
    run_dir = _synthetic_run(
        tmp_path,
        n,
        layers,
        np.arange(n),
        ["aila-attention", "laya"],
        rng,
        memory_budget=None,
        writer=True,
    )
    res = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(run_dir), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(out)  # pytest -s: the README's figure
    map_mb = n * layers * layers * 4 / 2**20
    assert out["growth_mb"] < 0.75 * map_mb, out
    html = (run_dir / "report.html").read_text()
    assert "2000 of 60000 test samples shown" in html
