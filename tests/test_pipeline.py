"""The whole flow: probekit run / fit / attribute / report on a tiny model, and the CLI's errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit.cli import main
from probekit.pipeline import run
from probekit.runs.config import RunConfig, load_config

POS = ["good", "great", "nice", "lovely", "happy", "joy", "fine", "super", "kind", "calm"]
NEG = ["bad", "awful", "nasty", "horrid", "sad", "pain", "grim", "vile", "mean", "cruel"]


@pytest.fixture
def word_csv(tmp_path: Path) -> Path:
    path = tmp_path / "words.csv"
    rows = [f"{w} {i},positive" for i in range(3) for w in POS] + [
        f"{w} {i},negative" for i in range(3) for w in NEG
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


FAST = ["linear", "concat", "laya", "aila-attention"]


def test_run_end_to_end_and_rerun_reuses_cache(tiny_bert_dir, word_csv, tmp_path):
    cfg = RunConfig(
        name="tiny",
        model=f"hf:{tiny_bert_dir}",
        data=f"csv:{word_csv}",
        probes=FAST,
        out=str(tmp_path / "runs"),
        bootstrap=50,
        figures=[],
    )
    (run_dir,) = run(cfg, progress=False)
    for name in (
        "config.json",
        "split.json",
        "metrics.json",
        "metrics.csv",
        "report.html",
        "cache/manifest.json",
        "attribution/attribution.json",
        "figures/accuracy.html",
    ):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["heads"]) == set(FAST)
    per_layer = metrics["heads"]["linear"]["per_layer"]
    assert [r["layer"] for r in per_layer] == [f"layers.{i}" for i in range(4)]
    for e in metrics["heads"].values():
        lo, hi = e["balanced_accuracy_ci"]
        assert 0 <= lo <= e["balanced_accuracy"] <= hi <= 1
    _check_paired(run_dir, metrics, n_boot=50, seed=0)
    report = (run_dir / "report.html").read_text()
    assert "Per-layer linear probes" in report
    # self-contained: plotly.js itself is embedded, nothing is loaded from elsewhere
    assert "Plotly.newPlot" in report and len(report) > 1_000_000
    assert not re.search(r"<script[^>]*\bsrc=", report)
    assert "vs last layer (layers.3)" in report
    mtime = (run_dir / "cache" / "manifest.json").stat().st_mtime_ns
    run(cfg, progress=False)
    assert (run_dir / "cache" / "manifest.json").stat().st_mtime_ns == mtime


def _check_paired(run_dir: Path, metrics: dict, n_boot: int, seed: int) -> None:
    """Each head's paired comparison equals a naive loop of scikit-learn over the same resamples."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score as bacc

    from probekit import FeatureCache, ProbeClassifier

    test = np.asarray(json.loads((run_dir / "split.json").read_text())["test"])
    cache = FeatureCache.open(run_dir / "cache")
    X = cache.load(pooling=cache.poolings).numpy()[test]
    y = np.asarray(cache.labels)[test]
    lin = ProbeClassifier.load(run_dir / "probes" / "linear")
    layer_pred = lin.predict_layers(X)
    refs = {"vs_last_layer": layer_pred[:, -1], "vs_best_layer": layer_pred[:, lin.selected_layer_]}
    assert metrics["baselines"] == {
        "last_layer": cache.layer_names[-1],
        "best_layer": cache.layer_names[lin.selected_layer_],
    }
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    for head, entry in metrics["heads"].items():
        pred = ProbeClassifier.load(run_dir / "probes" / head).predict(X)
        for key, ref in refs.items():
            with warnings.catch_warnings():  # a resample may lack a predicted class
                warnings.simplefilter("ignore")
                diffs = np.array([bacc(y[i], pred[i]) - bacc(y[i], ref[i]) for i in idx])
            got = entry["paired"][key]
            assert got["difference"] == pytest.approx(bacc(y, pred) - bacc(y, ref), abs=1e-12)
            assert got["ci"] == pytest.approx(np.percentile(diffs, [2.5, 97.5]).tolist(), abs=1e-12)
            assert got["p_le0"] == pytest.approx(float(np.mean(diffs <= 0)), abs=1e-12)
    assert metrics["heads"]["linear"]["paired"]["vs_best_layer"]["difference"] == 0.0


def test_config_files_hold_the_cli_options(tmp_path, word_csv):
    (tmp_path / "a.yaml").write_text(
        f"model: bundled:minilm-l6\ndata: csv:{word_csv}\nprobes: linear,alf\n"
    )
    (tmp_path / "b.toml").write_text(
        'out = "x"\n[[runs]]\nname = "one"\n[[runs]]\nname = "two"\nlimit = 10\n'
    )
    (a,) = load_config(tmp_path / "a.yaml")
    assert a.probes == ["linear", "alf"] and a.data == f"csv:{word_csv}"
    one, two = load_config(tmp_path / "b.toml")
    assert (one.name, two.name, two.limit, one.out) == ("one", "two", 10, "x")
    (tmp_path / "bad.yaml").write_text("modle: x\n")
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config(tmp_path / "bad.yaml")


@pytest.fixture
def tiny_cache(tiny_bert_dir, word_csv, tmp_path):
    out = tmp_path / "cache"
    assert (
        main(
            [
                "extract",
                "--model",
                f"hf:{tiny_bert_dir}",
                "--data",
                f"csv:{word_csv}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_cli_fit_attribute_report(tiny_cache, tmp_path, capsys):
    out = tmp_path / "fit"
    assert (
        main(
            [
                "fit",
                "--cache",
                str(tiny_cache),
                "--probes",
                "linear,laya,diff-means",
                "--out",
                str(out),
                "--bootstrap",
                "50",
            ]
        )
        == 0
    )
    assert (out / "metrics.csv").read_text().startswith("head,layer,accuracy")
    assert (out / "probes" / "laya" / "model.safetensors").is_file()
    assert "AUROC" in capsys.readouterr().out
    _check_binary(out, n_boot=50, seed=0)
    assert main(["attribute", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    report = (out / "report.html").read_text()
    assert "Per-layer probes: AUROC" in report and "recall @ 1% FPR [95% CI]" in report
    assert "AUROC vs last layer (layers.3)" in report


def _check_binary(run_dir: Path, n_boot: int, seed: int) -> None:
    """A binary run's AUROC, AUPRC and recall at 1% FPR (per head, per layer of the per-layer
    heads, paired with the last linear layer) equal scikit-learn on the same resamples; the
    per-class recall rows of metrics.csv equal metrics.json's."""
    import csv

    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    from probekit import FeatureCache, ProbeClassifier

    def scores(y, s):
        fpr, tpr, _ = roc_curve(y, s)
        return np.array(
            [roc_auc_score(y, s), average_precision_score(y, s), tpr[fpr <= 0.01].max()]
        )

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["bootstrap"] == {"resamples": n_boot, "by": "row", "n_units": metrics["n_test"]}
    test = np.asarray(json.loads((run_dir / "split.json").read_text())["test"])
    cache = FeatureCache.open(run_dir / "cache") if (run_dir / "cache").is_dir() else None
    cache = cache or FeatureCache.open(json.loads((run_dir / "config.json").read_text())["cache"])
    X = cache.load(pooling=cache.poolings).numpy()[test]
    y = np.asarray(cache.labels)[test]
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    lin = ProbeClassifier.load(run_dir / "probes" / "linear")
    last = lin.decision_layers(X)[:, -1]
    ref = np.array([scores(y[i], last[i]) for i in idx])  # (R, 3)
    names = ("auroc", "auprc", "recall_at_1fpr")
    for head, e in metrics["heads"].items():
        clf = ProbeClassifier.load(run_dir / "probes" / head)
        s = clf.decision_function(X)
        np.testing.assert_allclose([e[k] for k in names], scores(y, s), rtol=1e-9)
        res = np.array([scores(y[i], s[i]) for i in idx])
        for j, k in enumerate(names):
            np.testing.assert_allclose(
                e[f"{k}_ci"], np.percentile(res[:, j], [2.5, 97.5]), rtol=1e-9
            )
            d = res[:, j] - ref[:, j]
            got = e["paired"]["vs_last_layer"][k]
            np.testing.assert_allclose(got["ci"], np.percentile(d, [2.5, 97.5]), atol=1e-12)
            # sklearn's trapezoid rounds a perfect 1.0 to 1 - 1e-16: ties at 0 within 1e-12
            assert got["p_le0"] == pytest.approx(float(np.mean(d <= 1e-12)))
        if head in ("linear", "diff-means"):
            layer_s = clf.decision_layers(X)
            for j, row in enumerate(e["per_layer"]):
                np.testing.assert_allclose(
                    [row[k] for k in names], scores(y, layer_s[:, j]), rtol=1e-9
                )
    assert len(metrics["heads"]["diff-means"]["per_layer"]) == len(cache.layer_names)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert "class" not in rows[0]
    long = {(r["layer"], r["class"]): r for r in csv.DictReader((run_dir / "per_class.csv").open())}
    per_class = metrics["heads"]["linear"]["per_class"]
    assert len(long) == sum(len(v) for v in per_class.values())
    for layer, recalls in per_class.items():
        for cls, recall in recalls.items():
            r = long[(layer, cls)]
            assert float(r["recall"]) == pytest.approx(recall, abs=5e-5) and r["head"] == "linear"
            assert int(r["support"]) == metrics["heads"]["linear"]["per_class_support"][cls]
    top = next(r for r in rows if r["head"] == "diff-means" and r["layer"] == "all")
    assert float(top["auroc"]) == pytest.approx(metrics["heads"]["diff-means"]["auroc"], abs=5e-5)


def _one_line_error(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert needle in err[0].lower(), err[0]


def test_cli_fit_bad_input(tiny_cache, tmp_path, capsys):
    out = str(tmp_path / "fit")
    _one_line_error(
        capsys, ["fit", "--cache", str(tmp_path / "none"), "--out", out], "no feature cache"
    )
    _one_line_error(
        capsys,
        ["fit", "--cache", str(tiny_cache), "--probes", "linear,nope", "--out", out],
        "unknown probe",
    )
    # incomplete cache
    manifest = json.loads((tiny_cache / "manifest.json").read_text())
    from probekit.cache.integrity import manifest_bytes  # a hand edit would fail the digest

    (tiny_cache / "manifest.json").write_bytes(manifest_bytes({**manifest, "complete": False}))
    _one_line_error(capsys, ["fit", "--cache", str(tiny_cache), "--out", out], "incomplete")
    (tiny_cache / "manifest.json").write_text(json.dumps(manifest))


def _rewrite_cache(src, dst, labels=None, nan=False):
    """A copy of a cache with other labels or a NaN feature (written through CacheWriter)."""
    from probekit.cache import CacheWriter, FeatureCache

    cache = FeatureCache.open(src)
    m = dict(cache.manifest)
    m["dataset"] = dict(m["dataset"], fingerprint="edited")
    w = CacheWriter.create(
        dst,
        {k: m[k] for k in ("model", "layers", "poolings", "dtype", "dataset")},
        n_samples=len(cache),
    )
    tensors = {k: cache[k].clone() for k in cache.keys()}
    if nan:
        tensors[cache.keys()[0]][0, 0] = float("nan")
    y = np.zeros(len(cache), dtype=np.int64) if labels == "single" else cache.labels
    w.write_shard(0, tensors, torch.as_tensor(y))
    return w.finalize()


def test_cli_fit_single_class_and_nan(tiny_cache, tmp_path, capsys):
    _rewrite_cache(tiny_cache, tmp_path / "single", labels="single")
    _one_line_error(
        capsys,
        ["fit", "--cache", str(tmp_path / "single"), "--out", str(tmp_path / "f1")],
        "single class",
    )
    _rewrite_cache(tiny_cache, tmp_path / "nan", nan=True)
    _one_line_error(
        capsys, ["fit", "--cache", str(tmp_path / "nan"), "--out", str(tmp_path / "f2")], "nan"
    )
