"""Display objects and figure export."""

from __future__ import annotations

import importlib
import os
import re
import sys
from functools import cache

import numpy as np
import pytest
import torch

from probekit.attribution import ablation_sensitivity, layer_attribution
from probekit.estimator import ProbeClassifier
from probekit.viz import (
    AblationDisplay,
    ClassProfileDisplay,
    ExportError,
    LayerAccuracyDisplay,
    LayerAttributionDisplay,
    LayerMapDisplay,
    export,
    find_chrome,
    wilson_interval,
)

export_module = importlib.import_module("probekit.viz.export")  # the module, not the function

LAYERS = ["emb", "layers.1", "layers.2", "layers.3"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest, and avoids oversubscription on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def _fitted(head: str) -> tuple[ProbeClassifier, np.ndarray, np.ndarray]:
    """A classifier on 60 samples of 4 layers where layer 2 carries the (string) label."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, 4, 6)).astype(np.float32)
    x[np.arange(60), 2, y] += 2.0
    labels = np.array(["cat", "dog", "eel"])[y]
    params = (
        {"max_iter": 50}
        if head == "linear"
        else {"epochs": 5, "lr": 1e-2, "batch_size": 32, "val_size": 0.0, "refit": False}
    )
    clf = ProbeClassifier(head=head, random_state=0, device="cpu", **params)
    return clf.fit(x, labels, layer_names=LAYERS), x, labels


def _values(n: int = 12, signed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    v = rng.random((n, 4))
    if signed:
        v -= 0.5
    return v, np.array([2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 2, 0][:n])


# --------------------------------------------------------------------------- heatmaps


def test_layer_attribution_heatmap_groups_samples_by_class() -> None:
    v, labels = _values()
    texts = [f"text <{i}> " + "x" * 200 for i in range(12)]
    disp = LayerAttributionDisplay.from_arrays(
        v,
        LAYERS,
        labels,
        label_names=["neg", "neu", "pos"],
        predictions=np.roll(labels, 1),
        sample_ids=np.arange(100, 112),
        texts=texts,
    )
    assert disp.plot() is disp
    heat = disp.figure_.data[0]
    assert heat.type == "heatmap" and list(heat.x) == LAYERS
    order = disp.order_
    np.testing.assert_array_equal(labels[order], np.sort(labels))
    np.testing.assert_array_equal(np.asarray(heat.z), v[order])
    # stable within a class
    assert list(order[labels[order] == 0]) == [1, 3, 6, 7, 11]
    # one separator between each pair of classes, class names (and counts) as ticks
    assert len(disp.figure_.layout.shapes) == 2
    assert list(disp.figure_.layout.yaxis.ticktext) == ["neg (n=5)", "neu (n=3)", "pos (n=4)"]
    # hover: id, label, prediction, escaped and truncated text
    cd = np.asarray(heat.customdata, dtype=object)
    assert cd.shape == (12, 4, 4)
    first = order[0]
    assert cd[0, 0, 0] == str(100 + first) and cd[0, 0, 1] == "neg"
    assert cd[0, 0, 2] == ["neg", "neu", "pos"][np.roll(labels, 1)[first]]
    assert "&lt;" in cd[0, 0, 3] and cd[0, 0, 3].endswith("…") and len(cd[0, 0, 3]) < 100
    assert "sample %{customdata[0]}" in heat.hovertemplate
    # non-negative values: sequential scale from 0
    assert heat.zmin == 0 and heat.zmid is None


def test_signed_values_get_a_diverging_scale_centred_at_zero() -> None:
    v, labels = _values(signed=True)
    heat = LayerAttributionDisplay.from_arrays(v, LAYERS, labels).figure_.data[0]
    assert heat.zmid == 0
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]


def test_layer_attribution_input_checks() -> None:
    v, labels = _values()
    with pytest.raises(ValueError, match="L = len"):
        LayerAttributionDisplay.from_arrays(v, LAYERS[:3], labels)
    with pytest.raises(ValueError, match="texts must have 12"):
        LayerAttributionDisplay.from_arrays(v, LAYERS, labels, texts=["a"])


def test_layer_attribution_from_estimator() -> None:
    clf, x, y = _fitted("laya")
    texts = [f"sample {i}" for i in range(60)]
    disp = LayerAttributionDisplay.from_estimator(clf, x, y, texts=texts)
    heat = disp.figure_.data[0]
    np.testing.assert_allclose(
        np.asarray(heat.z), layer_attribution(clf, x)[disp.order_], atol=1e-6
    )
    assert list(heat.x) == LAYERS
    assert list(disp.figure_.layout.yaxis.ticktext)[0].startswith("cat")
    # a head without weights falls back to ablation sensitivity
    lin, x, y = _fitted("linear")
    disp = LayerAttributionDisplay.from_estimator(lin, x, y, method="auto")
    res = ablation_sensitivity(lin, x, y, mode="mean")
    np.testing.assert_allclose(
        np.asarray(disp.figure_.data[0].z), res.per_sample[disp.order_], atol=1e-6
    )
    assert "drop" in disp.value_name


def test_class_profile_is_the_class_mean() -> None:
    v, labels = _values()
    disp = ClassProfileDisplay.from_arrays(v, LAYERS, labels, label_names={0: "a", 1: "b", 2: "c"})
    expect = np.stack([v[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(disp.class_means, expect)
    heat = disp.figure_.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), expect)
    assert list(heat.y) == ["a (n=5)", "b (n=3)", "c (n=4)"]
    assert heat.texttemplate == "%{z:.2f}"
    clf, x, y = _fitted("kcla")
    disp = ClassProfileDisplay.from_estimator(clf, x, y)
    assert np.asarray(disp.figure_.data[0].z).shape == (3, 4)


def test_layer_map_is_averaged_over_samples() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((5, 4, 4))
    disp = LayerMapDisplay.from_arrays(maps, LAYERS)
    np.testing.assert_allclose(np.asarray(disp.figure_.data[0].z), maps.mean(0))
    assert disp.figure_.layout.yaxis.autorange == "reversed"
    clf, x, _ = _fitted("aila-attention")
    disp = LayerMapDisplay.from_estimator(clf, x)
    z = np.asarray(disp.figure_.data[0].z)
    assert z.shape == (4, 4)
    np.testing.assert_allclose(z[-1], layer_attribution(clf, x).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(L, L\)"):
        LayerMapDisplay(maps[0, :3], LAYERS)


# --------------------------------------------------------------------------- curves


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(np.array([0.5, 0.0, 1.0]), 100)
    np.testing.assert_allclose(lo, [0.40383, 0.0, 0.96301], atol=1e-4)
    np.testing.assert_allclose(hi, [0.59617, 0.03699, 1.0], atol=1e-4)


def test_layer_accuracy_curve_with_band_and_chance() -> None:
    scores = np.array([0.5, 0.7, 0.9, 0.8])
    disp = LayerAccuracyDisplay.from_arrays(
        LAYERS, scores, scores - 0.05, scores + 0.05, chance=0.5
    )
    traces = disp.figure_.data
    upper, band, curve, best = traces
    np.testing.assert_allclose(upper.y, scores + 0.05)
    assert band.fill == "tonexty"
    np.testing.assert_allclose(band.y, scores - 0.05)
    np.testing.assert_allclose(curve.y, scores)
    assert list(best.x) == ["layers.2"]
    assert any(s.y0 == 0.5 for s in disp.figure_.layout.shapes)
    # no band
    disp = LayerAccuracyDisplay.from_arrays(LAYERS, scores)
    assert len(disp.figure_.data) == 2
    with pytest.raises(ValueError, match="both lower and upper"):
        LayerAccuracyDisplay(LAYERS, scores, lower=scores)
    # overlay a second curve on the same figure
    other = LayerAccuracyDisplay(LAYERS, scores - 0.1, name="other").plot(
        disp.figure_, color="#c05621"
    )
    assert other.figure_ is disp.figure_ and len(disp.figure_.data) == 4


def test_layer_accuracy_from_estimator() -> None:
    clf, x, y = _fitted("linear")
    disp = LayerAccuracyDisplay.from_estimator(clf)
    np.testing.assert_allclose(disp.scores, clf.layer_scores_)
    assert disp.lower is None and disp.chance == pytest.approx(1 / 3)
    disp = LayerAccuracyDisplay.from_estimator(clf, x, y)
    expect = (clf.predict_layers(x) == y[:, None]).mean(0)
    np.testing.assert_allclose(disp.scores, expect)
    assert np.all(disp.lower <= disp.scores) and np.all(disp.scores <= disp.upper)
    assert len(disp.figure_.data) == 4
    with pytest.raises(ValueError, match="per-layer logits"):
        LayerAccuracyDisplay.from_estimator(_fitted("laya")[0], x, y)


# --------------------------------------------------------------------------- ablation


def test_ablation_display() -> None:
    clf, x, y = _fitted("laya")
    res = ablation_sensitivity(clf, x, y, mode="zero")
    disp = AblationDisplay.from_result(res)
    drop, acc = disp.figure_.data
    np.testing.assert_allclose(drop.y, res.per_sample.mean(0), rtol=1e-5)
    np.testing.assert_allclose(drop.error_y.array, 1.959964 * res.sem_drop, rtol=1e-5)
    np.testing.assert_allclose(acc.y, res.accuracy_drop, rtol=1e-5)
    assert drop.marker.cmin == -drop.marker.cmax  # diverging, centred at 0
    assert "zero" in disp.figure_.layout.title.text
    disp = AblationDisplay.from_estimator(clf, x, y, mode="shuffle")
    assert list(disp.figure_.data[0].x) == LAYERS


# --------------------------------------------------------------------------- export


def test_html_export_embeds_plotly_js(tmp_path) -> None:
    v, labels = _values()
    disp = LayerAttributionDisplay.from_arrays(v, LAYERS, labels)
    path = export(disp, tmp_path / "sub" / "fig.html", width=500, height=300)
    text = path.read_text(encoding="utf-8")
    assert 'class="plotly-graph-div"' in text
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing loaded from a CDN
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js itself is inside
    assert "500px" in text


def test_unknown_suffix(tmp_path) -> None:
    v, labels = _values()
    fig = LayerAttributionDisplay.from_arrays(v, LAYERS, labels).figure_
    with pytest.raises(ExportError, match=r"\.html"):
        export(fig, tmp_path / "fig.bmp")
    with pytest.raises(TypeError, match="plotly Figure"):
        export(object(), tmp_path / "fig.html")


def test_static_export_without_chrome_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "find_chrome", lambda: None)
    v, labels = _values()
    fig = LayerAttributionDisplay.from_arrays(v, LAYERS, labels).figure_
    with pytest.raises(ExportError, match="apt-get install chromium") as info:
        export(fig, tmp_path / "fig.png")
    assert "kaleido" in str(info.value) and "BROWSER_PATH" in str(info.value)
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    with pytest.raises(ExportError, match="pip install kaleido"):
        export(fig, tmp_path / "fig.svg")


def test_find_chrome_honours_browser_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert find_chrome() is None


@pytest.mark.skipif(
    find_chrome() is None and not os.environ.get("CI"),
    reason="no Chrome/Chromium for kaleido (apt-get install chromium); under CI this fails",
)
def test_png_export_has_the_requested_size_and_is_not_blank(tmp_path) -> None:
    from PIL import Image

    if find_chrome() is None:
        pytest.fail("CI is set but there is no Chrome/Chromium: PNG export would go untested")

    clf, x, y = _fitted("laya")
    disp = AblationDisplay.from_estimator(clf, x, y, mode="mean")
    path = export(disp, tmp_path / "ablation.png", width=320, height=240, scale=2)
    with Image.open(path) as im:
        assert im.size == (640, 480)
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 0
