"""ProbeRegressor: the linear head against scikit-learn's Ridge, the training loop's MSE / R²,
fusion heads, attribution and ablation in squared-error units, save / load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_regressor
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probekit import (
    ConfigError,
    DataError,
    ProbeClassifier,
    ProbeRegressor,
    ablation_sensitivity,
    layer_attribution,
)
from probekit.train.regression import fit_ridge_probes, mse_loss, r2_batched


def _task(n: int = 400, n_layers: int = 4, dim: int = 24, targets: int = 1, seed: int = 0):
    """Layered features with unequal scales and offsets; the signal grows with depth."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.3, 4.0, size=dim)
    x = (rng.normal(size=(n, n_layers, dim)) * scale + rng.normal(size=dim) * 3).astype(np.float32)
    w = rng.normal(size=(dim, targets))
    y = sum(
        (layer / n_layers) * (x[:, layer] - x[:, layer].mean(0)) / scale @ w
        for layer in range(n_layers)
    )
    y = y + rng.normal(size=(n, targets)) * 1.5 + np.array([5.0, -2.0][:targets]) * 10
    return x, (y[:, 0] if targets == 1 else y)


@pytest.mark.parametrize("alpha", [0.1, 10.0, 300.0])
def test_linear_head_is_ridge_per_layer(alpha):
    x, y = _task()
    tr, te = np.arange(320), np.arange(320, 400)
    reg = ProbeRegressor(alpha=alpha, random_state=0).fit(x[tr], y[tr])
    per_layer = reg.predict_layers(x[te])  # (N, L)
    for layer in range(x.shape[1]):
        ref = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x[tr, layer], y[tr])
        want = ref.predict(x[te, layer])
        assert abs(r2_score(y[te], per_layer[:, layer]) - r2_score(y[te], want)) < 0.005
        np.testing.assert_allclose(per_layer[:, layer], want, rtol=1e-4, atol=1e-3 * y.std())
    # the reported prediction is the layer chosen on validation R²
    assert reg.selected_layer_ == int(np.argmax(reg.layer_scores_))
    np.testing.assert_allclose(reg.predict(x[te]), per_layer[:, reg.selected_layer_], rtol=1e-6)
    assert reg.score(x[te], y[te]) == pytest.approx(
        r2_score(y[te], per_layer[:, reg.selected_layer_]), abs=1e-9
    )


def test_linear_head_multi_target_and_dual_form():
    """Two targets at once, and fewer samples than features (the dual solve)."""
    x, y = _task(n=60, dim=40, targets=2, seed=3)
    reg = ProbeRegressor(alpha=2.0, val_size=0, random_state=0).fit(x, y)
    assert reg.predict(x).shape == (60, 2)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=2.0)).fit(x[:, 2], y)
    np.testing.assert_allclose(
        reg.predict_layers(x)[:, 2], ref.predict(x[:, 2]), rtol=1e-4, atol=1e-3
    )


def test_ridge_solver_matches_sklearn_on_raw_features():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 50, 8)) * 3 + 1
    Y = rng.normal(size=(50, 1))
    sol = fit_ridge_probes(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(Y), 5.0)
    for layer in range(2):
        ref = Ridge(alpha=5.0).fit(X[layer], Y)
        np.testing.assert_allclose(
            sol.weight[layer, :, 0].numpy(), ref.coef_.reshape(-1), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            sol.bias[layer].numpy(), np.reshape(ref.intercept_, -1), rtol=1e-4, atol=1e-6
        )


def test_r2_and_mse_match_references():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(30, 2))
    pred = y + rng.normal(size=(3, 30, 2))  # three configs
    got = r2_batched(torch.as_tensor(pred), torch.as_tensor(y)).numpy()
    want = [r2_score(y, p) for p in pred]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    out = {"logits": torch.as_tensor(pred, dtype=torch.float32)}
    loss = mse_loss(out, torch.as_tensor(y, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(loss, ((pred - y) ** 2).mean(axis=(1, 2)), rtol=1e-5)


def test_fusion_head_learns_and_attributes():
    """LAYA regresses a target carried by the last layer only, and its weights point there."""
    rng = np.random.default_rng(4)
    scale = rng.uniform(0.3, 4.0, size=12)
    x = (rng.normal(size=(240, 3, 12)) * scale + rng.normal(size=12) * 3).astype(np.float32)
    y = (
        ((x[:, 2] - x[:, 2].mean(0)) / scale) @ rng.normal(size=12) * 2
        + 0.5 * rng.normal(size=240)
        + 50
    )
    tr, te = np.arange(180), np.arange(180, 240)
    reg = ProbeRegressor(head="laya", epochs=12, lr=3e-3, random_state=0).fit(x[tr], y[tr])
    assert reg.score(x[te], y[te]) > 0.8  # trained with MSE, predicts in target units
    w = layer_attribution(reg, x[te])
    assert w.shape == (60, 3)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(w, reg.layer_weights(x[te]), atol=1e-6)
    assert w.mean(0).argmax() == 2 and w[:, 2].mean() > 0.5


def test_ablation_is_squared_error_rise():
    x, y = _task(n=200, n_layers=3, dim=10, seed=5)
    reg = ProbeRegressor(head="laya", epochs=3, random_state=0).fit(x, y)
    res = ablation_sensitivity(reg, x[:50], y[:50], mode="zero")
    assert res.units == "squared error"
    base = reg.predict(x[:50])
    for layer in range(3):
        xa = x[:50].copy()
        xa[:, layer] = 0
        abl = reg.predict(xa)
        np.testing.assert_allclose(
            res.per_sample[:, layer],
            (abl - y[:50]) ** 2 - (base - y[:50]) ** 2,
            rtol=1e-4,
            atol=1e-4 * y.var(),
        )
        assert res.accuracy_drop[layer] == pytest.approx(
            r2_score(y[:50], base) - r2_score(y[:50], abl), abs=1e-6
        )
    assert res.base_accuracy == pytest.approx(r2_score(y[:50], base), abs=1e-9)


def test_minibatch_linear_head_regression():
    """The linear head trained by AdamW with the MSE loss approaches the ridge solution."""
    x, y = _task(n=300, n_layers=2, dim=8, seed=6)
    reg = ProbeRegressor(
        solver="adamw",
        epochs=150,
        lr=3e-2,
        weight_decay=0.0,
        val_size=0.2,
        patience=None,
        random_state=0,
    ).fit(x, y)
    ridge = ProbeRegressor(alpha=1e-3, val_size=0, random_state=0).fit(x, y)
    assert reg.layer_scores_.shape == (2,)
    assert (
        abs(r2_score(y, reg.predict_layers(x)[:, 1]) - r2_score(y, ridge.predict_layers(x)[:, 1]))
        < 0.02
    )


def test_save_load_roundtrip_and_task_check(tmp_path):
    x, y = _task(n=120, n_layers=2, dim=6, seed=7)
    reg = ProbeRegressor(head="laya", epochs=3, random_state=0).fit(x, y)
    reg.save(tmp_path / "r")
    back = ProbeRegressor.load(tmp_path / "r")
    np.testing.assert_array_equal(back.predict(x), reg.predict(x))
    with pytest.raises(DataError, match="ProbeRegressor.load"):
        ProbeClassifier.load(tmp_path / "r")


def test_contract_and_errors():
    assert is_regressor(ProbeRegressor())
    assert clone(ProbeRegressor(alpha=3.0)).alpha == 3.0
    x, y = _task(n=40, n_layers=2, dim=4)
    with pytest.raises(ConfigError, match="alpha"):
        ProbeRegressor(alpha=-1.0).fit(x, y)
    with pytest.raises(DataError, match="numbers"):
        ProbeRegressor().fit(x, np.array(["a"] * 40))
    with pytest.raises(DataError, match="NaN"):
        ProbeRegressor().fit(x, np.full(40, np.nan))


# ------------------------------------------------------------------------------ data


def test_vader_valence_scores_are_the_lexicon_means():
    import importlib.util
    from pathlib import Path

    from probekit.data import load_data

    ds = load_data("bundled:vader-valence-scores", target="regression")
    folder = Path(next(iter(importlib.util.find_spec("vaderSentiment").submodule_search_locations)))
    ref = {}
    for line in (folder / "vader_lexicon.txt").read_text(encoding="utf-8").splitlines():
        token, mean = line.split("\t")[:2]
        ref[token] = float(mean)  # a later duplicate overwrites
    assert len(ds) == len(ref) == 7506
    assert dict(zip(ds.texts, ds.targets.tolist(), strict=True)) == ref
    assert (np.abs(ds.targets) < 1.0).sum() > 1000  # near-neutral tokens kept, not thresholded
    sub = load_data("bundled:vader-valence-scores", target="regression", limit=300, seed=1)
    assert len(sub) == 300 and all(ref[t] == v for t, v in zip(sub.texts, sub.targets, strict=True))
    assert (
        sub.fingerprint
        != load_data(
            "bundled:vader-valence-scores", target="regression", limit=300, seed=2
        ).fingerprint
    )
    with pytest.raises(DataError, match="target='regression'"):
        load_data("bundled:vader-valence-scores")


def test_csv_numeric_target_column_is_detected(tmp_path):
    from probekit.data import load_data

    path = tmp_path / "words.csv"
    path.write_text("text,kind,score\ngood,adj,2.5\nbad,adj,-1.25\nfine,adj,0.5\n")
    ds = load_data(f"csv:{path}", target="regression")
    assert ds.target_name == "score" and ds.texts == ["good", "bad", "fine"]
    np.testing.assert_array_equal(ds.targets, [2.5, -1.25, 0.5])
    with pytest.raises(DataError, match="not numeric"):
        load_data(f"csv:{path}", target="regression", label_column="kind")
    with pytest.raises(DataError, match="target must be"):
        load_data(f"csv:{path}", target="ordinal")


# ------------------------------------------------------------------------------ end to end


def test_run_regression_end_to_end_on_minilm(tmp_path, capsys):
    """probekit run --task regression on 300 VADER tokens with the bundled MiniLM: metrics,
    report, and per-layer R² equal to scikit-learn's Ridge on the same cache and split."""
    import json

    from probekit.cache import FeatureCache
    from probekit.cli import main

    out = tmp_path / "runs"
    rc = main(
        [
            "run",
            "--model",
            "bundled:minilm-l6",
            "--data",
            "bundled:vader-valence-scores",
            "--task",
            "regression",
            "--limit",
            "300",
            "--probes",
            "linear,laya",
            "--pooling",
            "mean",
            "--probe-params",
            '{"linear": {"alpha": 100.0}, "laya": {"epochs": 4}}',
            "--bootstrap",
            "50",
            "--figures",
            "html",
            "--out",
            str(out),
            "--name",
            "reg",
        ]
    )
    assert rc == 0
    run_dir = out / "reg"
    assert "R2" in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "regression" and set(metrics["heads"]) == {"linear", "laya"}
    cache = FeatureCache.open(run_dir / "cache")
    split = json.loads((run_dir / "split.json").read_text())
    tr, te = np.asarray(split["train"]), np.asarray(split["test"])
    targets = json.loads((run_dir / "cache" / "targets.json").read_text())["targets"]
    y = np.asarray(targets)[np.asarray(cache.index)]
    X = cache.load(pooling=cache.poolings).numpy()  # (N, L, D)
    rows = metrics["heads"]["linear"]["per_layer"]
    assert len(rows) == X.shape[1]
    for layer, row in enumerate(rows):
        ref = make_pipeline(StandardScaler(), Ridge(alpha=100.0)).fit(X[tr, layer], y[tr])
        assert abs(row["r2"] - r2_score(y[te], ref.predict(X[te, layer]))) < 0.005
        lo, hi = row["r2_ci"]
        assert lo <= row["r2"] <= hi
    assert max(r["r2"] for r in rows) > 0.3  # MiniLM encodes valence
    csv_text = (run_dir / "metrics.csv").read_text()
    assert csv_text.startswith("head,layer,r2,r2_lo,r2_hi,spearman")
    report = (run_dir / "report.html").read_text()
    assert "predicted vs true" in report and "Spearman" in report
    assert (run_dir / "figures" / "scatter.html").is_file()
    assert (run_dir / "figures" / "weights-laya.html").is_file()


def test_cli_extract_fit_attribute_report_regression(tiny_bert_dir, tmp_path, capsys):
    """The step-by-step CLI with --task regression on a CSV with a numeric column."""
    import json

    from probekit.cli import main

    words = ["good", "great", "nice", "bad", "awful", "sad", "fine", "calm", "grim", "vile"]
    rows = [f"{w} {i},{(j % 5) - 2 + 0.1 * i}" for i in range(4) for j, w in enumerate(words)]
    path = tmp_path / "scores.csv"
    path.write_text("text,score\n" + "\n".join(rows) + "\n")
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "extract",
                "--model",
                f"hf:{tiny_bert_dir}",
                "--data",
                f"csv:{path}",
                "--task",
                "regression",
                "--out",
                str(cache),
            ]
        )
        == 0
    )
    saved = json.loads((cache / "targets.json").read_text())
    assert saved["name"] == "score" and len(saved["targets"]) == 40
    # a classification fit of a regression-only cache still works on its labels: one class
    assert (
        main(["fit", "--cache", str(cache), "--probes", "linear", "--out", str(tmp_path / "c")])
        == 2
    )
    capsys.readouterr()
    out = tmp_path / "fit"
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache),
                "--probes",
                "linear,scalar-mix",
                "--task",
                "regression",
                "--out",
                str(out),
                "--bootstrap",
                "20",
            ]
        )
        == 0
    )
    assert "R2" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target_name"] == "score" and len(metrics["heads"]["linear"]["per_layer"]) == 4
    assert main(["attribute", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    assert "Spearman" in (out / "report.html").read_text()
    # a cache without targets: one clear line
    (cache / "targets.json").unlink()
    code = main(
        ["fit", "--cache", str(cache), "--task", "regression", "--out", str(tmp_path / "g")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no regression targets" in err[0]


def test_captum_feature_ablation_explains_the_predicted_value():
    from probekit import captum_attribution

    x, y = _task(n=120, n_layers=3, dim=6, seed=8)
    reg = ProbeRegressor(head="concat", epochs=3, random_state=0).fit(x, y)
    attr = captum_attribution(reg, x[:10], method="feature_ablation", baseline="zero")
    base = reg.predict(x[:10])
    for layer in range(3):
        xa = x[:10].copy()
        xa[:, layer] = 0
        np.testing.assert_allclose(
            attr[:, layer], base - reg.predict(xa), rtol=1e-4, atol=1e-4 * y.std()
        )
    with pytest.raises(ValueError, match="output index"):
        captum_attribution(reg, x[:10], target="true", y=y[:10])
