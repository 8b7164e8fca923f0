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

from .test_estimator import _make_cache

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
    assert (
        main(
            [
                "extract",
                "--model",
                f"hf:{tiny_bert_dir}",
                "--data",
                f"csv:{data}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_fit_control_and_mdl_write_metrics_and_report(word_cache, tmp_path):
    from probekit import FeatureCache, ProbeClassifier, similarity
    from probekit.estimator.control import label_cdf, labels_from_cdf
    from probekit.runs.compare import read_similarity

    out = tmp_path / "fit"
    assert (
        main(
            [
                "fit",
                "--cache",
                str(word_cache),
                "--probes",
                "linear",
                "--out",
                str(out),
                "--bootstrap",
                "50",
                "--control",
                "--mdl",
            ]
        )
        == 0
    )
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
    ref = ProbeClassifier(
        head="linear", tokens_per_layer=len(cache.poolings), random_state=0, device="cpu"
    ).fit(X[tr], y_ctl[tr])
    ctl_acc = (ref.predict_layers(X[te]) == y_ctl[te, None]).mean(0)
    rows = lin["per_layer"]
    np.testing.assert_allclose([r["control_accuracy"] for r in rows], ctl_acc, atol=1.01 / len(te))
    for r in rows:
        assert r["selectivity"] == pytest.approx(r["accuracy"] - r["control_accuracy"], abs=1e-9)
        lo, hi = r["selectivity_ci"]
        assert lo <= r["selectivity"] <= hi
    np.testing.assert_allclose(
        lin["control"]["validation_selectivity"],
        np.subtract(
            lin["control"]["validation_accuracy"], lin["control"]["validation_control_accuracy"]
        ),
    )
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
    np.testing.assert_allclose(
        [float(r["selectivity"]) for r in layer_rows], [r["selectivity"] for r in rows], atol=1e-4
    )
    from probekit.report.html import build_figures

    figs = {f.name: f.figure for f in build_figures(out)}
    curves = {t.name: list(t.y) for t in figs["selectivity"].data if t.name}
    np.testing.assert_allclose(curves["selectivity"], [r["selectivity"] for r in rows])
    np.testing.assert_allclose(curves["control accuracy"], [r["control_accuracy"] for r in rows])
    (mdl_curve,) = [t for t in figs["mdl"].data if t.name == "compression"]
    np.testing.assert_allclose(list(mdl_curve.y), [r["compression"] for r in mdl["layers"]])
    np.testing.assert_allclose(np.asarray(figs["cka"].data[0].z, dtype=float), m, atol=1e-12)
    assert main(["report", str(out)]) == 0
    report = (out / "report.html").read_text()
    for text in (
        "Control task and selectivity per layer",
        "MDL probing (online code)",
        "Layer similarity (linear CKA)",
        "selectivity %",
        "online bits",
    ):
        assert text in report, text


def test_compare_cli_writes_the_similarity_of_two_caches(
    word_cache, tiny_gpt2_dir, tmp_path, capsys
):
    from safetensors.numpy import load_file

    from probekit import FeatureCache, similarity

    gpt = tmp_path / "gpt-cache"
    data = tmp_path / "words.csv"  # the same file, so the same samples
    assert (
        main(
            [
                "extract",
                "--model",
                f"hf:{tiny_gpt2_dir}",
                "--data",
                f"csv:{data}",
                "--out",
                str(gpt),
                "--pooling",
                "mean",
            ]
        )
        == 0
    )
    out = tmp_path / "cmp"
    for method in ("cka", "cka-debiased", "rsa"):
        assert (
            main(["compare", str(word_cache), str(gpt), "--out", str(out), "--method", method]) == 0
        )
        ref = similarity(FeatureCache.open(word_cache), FeatureCache.open(gpt), method)
        np.testing.assert_allclose(
            load_file(str(out / f"similarity-{method}.safetensors"))["similarity"], ref, atol=1e-12
        )
        with open(out / f"similarity-{method}.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0][1:] == list(FeatureCache.open(gpt).layer_names)
        assert [r[0] for r in rows[1:]] == list(FeatureCache.open(word_cache).layer_names)
        np.testing.assert_allclose(
            np.array([r[1:] for r in rows[1:]], dtype=float), ref, rtol=1e-12
        )
        heat = (out / f"similarity-{method}.html").read_text()
        assert "heatmap" in heat
    # one cache alone: its layers with each other
    # (mean pooling: BERT's [CLS] vector at the embedding layer is the same for every text)
    assert (
        main(["compare", str(word_cache), "--out", str(tmp_path / "self"), "--pooling", "mean"])
        == 0
    )
    own = load_file(str(tmp_path / "self" / "similarity-cka.safetensors"))["similarity"]
    np.testing.assert_allclose(
        own, similarity(FeatureCache.open(word_cache), pooling="mean"), atol=1e-12
    )
    np.testing.assert_allclose(np.diag(own), 1.0, atol=1e-9)
    # caches of two different datasets are refused with one line, exit 2
    other = tmp_path / "other-cache"
    assert (
        main(
            [
                "extract",
                "--model",
                f"hf:{tiny_gpt2_dir}",
                "--data",
                f"csv:{_csv(tmp_path / 'other.csv', suffix='x')}",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["compare", str(word_cache), str(other), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "different datasets" in err
    assert not (tmp_path / "bad" / "similarity-cka.csv").exists()
    with pytest.raises(SystemExit) as usage:  # argparse's usage error names the choices
        main(["compare", str(word_cache), "--out", str(tmp_path / "x"), "--method", "cca"])
    assert usage.value.code == 2 and "cka-debiased" in capsys.readouterr().err


def test_compare_random_run_has_both_curves_and_separate_caches(tiny_bert_dir, tmp_path):
    from probekit import FeatureCache
    from probekit.pipeline import run
    from probekit.report.html import build_figures
    from probekit.runs.config import RunConfig
    from probekit.runs.extract import extract_stage

    data = _csv(tmp_path / "words.csv")
    cfg = RunConfig(
        name="rnd",
        model=f"hf:{tiny_bert_dir}",
        data=f"csv:{data}",
        probes=["linear"],
        out=str(tmp_path / "runs"),
        bootstrap=50,
        figures=[],
        compare_random=True,
        init_seed=3,
    )
    (run_dir,) = run(cfg, progress=False)
    trained, random = (
        FeatureCache.open(run_dir / "cache"),
        FeatureCache.open(run_dir / "cache-random"),
    )
    assert trained.manifest["fingerprint"] != random.manifest["fingerprint"]
    assert random.manifest["model"]["weights"] == "random" and random.manifest["model"]["seed"] == 3
    assert trained.manifest["model"].get("weights", "pretrained") != "random"
    assert not np.allclose(trained.load(), random.load())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rnd = metrics["random_init"]
    assert rnd["fingerprint"] == random.manifest["fingerprint"] and rnd["seed"] == 3
    ours = [r["balanced_accuracy"] for r in metrics["heads"]["linear"]["per_layer"]]
    theirs = [r["balanced_accuracy"] for r in rnd["heads"]["linear"]["per_layer"]]
    assert [r["layer"] for r in rnd["heads"]["linear"]["per_layer"]] == metrics["layer_names"]
    # one figure, both curves, with the values of metrics.json
    (fig,) = [f for f in build_figures(run_dir) if f.name == "random-baseline"]
    curves = {t.name: list(t.y) for t in fig.figure.data if t.name}
    np.testing.assert_allclose(curves["trained"], ours)
    np.testing.assert_allclose(curves["random init"], theirs)
    with open(run_dir / "metrics.csv") as f:
        models = {r["model"] for r in csv.DictReader(f)}
    assert models == {"trained", "random"}
    assert "Random-weights baseline" in (run_dir / "report.html").read_text()
    # the trained-vs-random CKA sits beside the within-model one
    assert (run_dir / rnd["similarity_to_trained"]["file"]).is_file()
    # the same seed gives an identical random cache; another seed another one
    again = extract_stage(
        RunConfig(model=cfg.model, data=cfg.data, init_seed=3, cache=str(tmp_path / "again")),
        progress=False,
        random_init=True,
    )
    assert again.manifest["fingerprint"] == random.manifest["fingerprint"]
    assert np.array_equal(again.load().numpy(), random.load().numpy())
    other = extract_stage(
        RunConfig(
            model=cfg.model,
            data=cfg.data,
            init_seed=4,
            random_init=True,
            cache=str(tmp_path / "other"),
        ),
        progress=False,
    )
    assert other.manifest["fingerprint"] != random.manifest["fingerprint"]
    assert not np.allclose(other.load().numpy(), random.load().numpy())


def test_random_init_options_are_checked_before_work():
    from probekit import ConfigError
    from probekit.runs.config import RunConfig

    with pytest.raises(ConfigError, match="random_init"):
        RunConfig(random_init=True, compare_random=True)
    with pytest.raises(ConfigError, match="control needs the linear probe"):
        RunConfig(control=True, probes=["alf"])
    assert RunConfig.from_dict({"random-init": "true", "mdl": "yes"}).random_init is True


def test_fit_skips_a_cka_map_too_big_to_compute_and_says_why(tmp_path, monkeypatch):
    """A 7B model's within-model CKA is ~1e15 multiply-adds: the run warns, records why, and its
    report still builds (here the limit is lowered to the toy cache's 120 x 24 x 24)."""
    import probekit.runs.science as analyses
    from probekit.report.html import build_figures

    _make_cache(tmp_path / "cache")  # 120 samples, cls widths 6 + 10 + 8 = 24
    argv = ["fit", "--cache", str(tmp_path / "cache"), "--probes", "linear", "--bootstrap", "20"]
    assert main([*argv, "--out", str(tmp_path / "ok")]) == 0
    ok = json.loads((tmp_path / "ok" / "metrics.json").read_text())["similarity"]
    assert (tmp_path / "ok" / ok["file"]).is_file()
    monkeypatch.setattr(analyses, "CKA_MAX_WORK", 120 * 24 * 24 - 1)
    with pytest.warns(UserWarning, match="within layer similarity skipped: .* 6.9e\\+04"):
        assert main([*argv, "--out", str(tmp_path / "big")]) == 0
    skipped = json.loads((tmp_path / "big" / "metrics.json").read_text())["similarity"]
    assert set(skipped) == {"method", "skipped"} and "probekit compare" in skipped["skipped"]
    assert not (tmp_path / "big" / "similarity").exists()
    names = {f.name for f in build_figures(tmp_path / "big")}
    assert "accuracy" in names and "cka" not in names
    assert "cka" in {f.name for f in build_figures(tmp_path / "ok")}
