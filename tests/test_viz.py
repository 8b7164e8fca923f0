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

from probekit.analysis.attribution import ablation_sensitivity, layer_attribution
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


# ----------------------------------------------------------------- axis ticks from the data range


def _parse_tick(text: str) -> tuple[float, int]:
    """A tick label back to a fraction, and the decimals it was written with."""
    percent = text.endswith("%")
    body = text.rstrip("%")
    decimals = len(body.split(".")[1]) if "." in body else 0
    value = float(body) / (100 if percent else 1)
    return value, decimals + (2 if percent else 0)


@pytest.mark.parametrize("percent", [False, True])
def test_nice_ticks_are_distinct_and_true_on_small_ranges(percent: bool) -> None:
    from probekit.viz import nice_ticks

    rng = np.random.default_rng(0)
    for _ in range(400):
        scale = 10.0 ** rng.uniform(-5, 1)
        lo = rng.normal() * scale
        hi = lo + rng.uniform(0.01, 3) * scale
        vals, text, (r_lo, r_hi) = nice_ticks(lo, hi, percent=percent)
        assert len(set(text)) == len(text), (lo, hi, text)
        assert 2 <= len(vals) <= 6, (lo, hi, vals)
        assert r_lo <= lo and r_hi >= hi and r_lo <= vals[0] and vals[-1] <= r_hi
        for v, t in zip(vals, text):
            parsed, decimals = _parse_tick(t)
            # the label is the tick position written to the shown decimals: not a rounded neighbour
            assert abs(parsed - v) <= 0.5 * 10.0**-decimals + 1e-12, (v, t)
            assert abs(parsed - v) <= 1e-9 * max(1.0, abs(v)), (v, t)


def test_fixed_percent_format_would_duplicate_but_nice_ticks_do_not() -> None:
    """The reported case: accuracy drops of -1%..+2% in steps of 0.5 percentage point."""
    from probekit.viz import nice_ticks

    vals, text, _ = nice_ticks(-0.0075, 0.0125, percent=True)
    assert len({f"{v:.0%}" for v in vals}) < len(vals)  # what tickformat=".0%" showed
    assert len(set(text)) == len(text)
    assert text[vals.index(0.005)] == "0.5%"


def _shown_ticks(fig) -> dict[str, list[str]]:
    """Tick labels of every axis whose ticks the figure fixes (tickvals / ticktext)."""
    out = {}
    for key in fig.layout:
        if re.fullmatch(r"[xy]axis\d*", key):
            ax = fig.layout[key]
            assert ax.tickformat is None, f"{key} has a fixed tickformat {ax.tickformat!r}"
            if ax.tickvals is not None:
                assert ax.ticktext is not None and len(ax.ticktext) == len(ax.tickvals)
                out[key] = list(ax.ticktext)
    return out


@pytest.mark.parametrize("scale", [1e-4, 3e-3, 2e-2, 0.3])
def test_no_axis_shows_duplicate_tick_labels_on_small_ranges(scale: float) -> None:
    from probekit.analysis.attribution import AblationResult

    rng = np.random.default_rng(1)
    per_sample = rng.normal(scale, scale, size=(40, 4))
    acc_drop = np.array([2.0, 1.0, -0.5, 0.0]) * scale
    res = AblationResult(per_sample, acc_drop, 0.9, LAYERS, "mean")
    abl = AblationDisplay.from_result(res)
    ticks = _shown_ticks(abl.figure_)
    assert set(ticks) == {"yaxis", "yaxis2"}
    for labels in ticks.values():
        assert len(set(labels)) == len(labels), labels
    # every bar lies inside the axis range
    r_lo, r_hi = abl.figure_.layout.yaxis2.range
    assert r_lo <= acc_drop.min() and r_hi >= acc_drop.max()

    scores = 0.9 + np.array([0.0, 1.0, 2.0, 1.5]) * scale
    lo, hi = scores - scale, scores + scale
    acc = LayerAccuracyDisplay.from_arrays(LAYERS, scores, lo, hi, chance=0.9)
    for labels in _shown_ticks(acc.figure_).values():
        assert len(set(labels)) == len(labels), labels
    assert acc.figure_.layout.yaxis.range[1] >= hi.max()


@pytest.mark.skipif(
    find_chrome() is None, reason="no Chrome/Chromium for kaleido (apt-get install chromium)"
)
def test_rendered_svg_ticks_are_distinct(tmp_path) -> None:
    """The tick labels plotly actually draws (read from kaleido's SVG) are distinct."""
    from probekit.analysis.attribution import AblationResult

    scale = 2.5e-3
    res = AblationResult(
        np.random.default_rng(2).normal(scale, scale, (30, 4)),
        np.array([2.0, 1.0, -0.5, 0.0]) * scale,
        0.9,
        LAYERS,
        "mean",
    )
    path = export(AblationDisplay.from_result(res), tmp_path / "abl.svg")
    svg = path.read_text()
    for cls in ("ytick", "y2tick"):
        groups = re.findall(rf'<g class="{cls}">(.*?)</g>', svg)
        labels = [re.sub(r"<[^>]+>", "", g) for g in groups]
        labels = [t.replace("\u2212", "-") for t in labels if t]
        assert len(labels) >= 3 and len(set(labels)) == len(labels), (cls, labels)


# ------------------------------------------------------------- notebook output in every viewer


def _png_pixels(b64: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


@pytest.mark.skipif(
    find_chrome() is None, reason="no Chrome/Chromium for kaleido (apt-get install chromium)"
)
def test_display_bundle_has_interactive_json_and_a_png() -> None:
    import plotly.io as pio

    from probekit.viz import use_notebook_renderer

    disp = LayerAccuracyDisplay.from_arrays(LAYERS, [0.5, 0.7, 0.9, 0.8], width=400, height=300)
    bundle = disp._repr_mimebundle_()
    assert "text/html" not in bundle  # else nbconvert would prefer it over the PNG
    import base64

    y = bundle["application/vnd.plotly.v1+json"]["data"][-2]["y"]  # plotly's typed-array encoding
    y = np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]) if isinstance(y, dict) else y
    assert np.asarray(y) == pytest.approx([0.5, 0.7, 0.9, 0.8])
    pixels = _png_pixels(bundle["image/png"])
    assert pixels.shape[:2] == (300, 400)
    assert pixels.std() > 5  # drawn, not a blank page

    before = pio.renderers.default
    try:
        assert use_notebook_renderer() is True
        fig_bundle = disp.figure_._repr_mimebundle_()
        assert set(fig_bundle) >= {"application/vnd.plotly.v1+json", "image/png"}
    finally:
        pio.renderers.default = before


def test_bundle_without_chromium_inlines_plotlyjs_and_says_why(monkeypatch) -> None:
    notebook = importlib.import_module("probekit.viz.notebook")
    monkeypatch.setattr(export_module, "find_chrome", lambda: None)
    monkeypatch.setitem(notebook._state, "plotlyjs_sent", False)
    assert notebook.static_images_available() is False
    disp = LayerAccuracyDisplay.from_arrays(LAYERS, [0.5, 0.75, 0.875, 0.8])
    first = disp._repr_mimebundle_()
    second = disp._repr_mimebundle_()
    assert "image/png" not in first
    html = first["text/html"]
    assert "No Chrome/Chromium was found" in html
    import json

    import plotly.io as pio

    scores = json.loads(pio.to_json(disp.figure_))["data"][-2]["y"]  # plotly's encoded array
    assert re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*\[\{', html)  # a figure with traces
    assert scores["bdata"].replace("/", "\\u002f") in html  # plotly escapes "/" inside <script>
    assert len(html) > 1_000_000  # plotly.js itself is inlined once ...
    assert len(second["text/html"]) < 100_000  # ... and later figures reuse it
    assert "Plotly.newPlot" in second["text/html"]


# ------------------------------------------------------------------------------ paired bootstrap


def test_paired_bootstrap_matches_the_normal_approximation() -> None:
    from scipy.stats import norm

    from probekit.viz import paired_bootstrap

    rng = np.random.default_rng(0)
    n = 3000
    y = rng.integers(0, 2, n)
    a = np.where(rng.random(n) < 0.85, y, 1 - y)
    b = np.where(rng.random(n) < 0.5, a, np.where(rng.random(n) < 0.82, y, 1 - y))
    res = paired_bootstrap(y, a, b, n_resamples=4000, random_state=0)
    delta = (a == y).astype(float) - (b == y).astype(float)
    assert res.difference == pytest.approx(delta.mean(), abs=1e-12)
    assert res.accuracy_a == pytest.approx((a == y).mean())
    se = delta.std(ddof=0) / np.sqrt(n)
    lo, hi = res.ci
    assert lo == pytest.approx(delta.mean() - 1.96 * se, abs=0.15 * 1.96 * se)
    assert hi == pytest.approx(delta.mean() + 1.96 * se, abs=0.15 * 1.96 * se)
    assert res.frac_le_zero == pytest.approx(norm.cdf(-delta.mean() / se), abs=0.03)


def test_paired_bootstrap_verdicts_and_errors() -> None:
    from probekit.viz import paired_bootstrap

    y = np.arange(200) % 2
    same = paired_bootstrap(y, y, y)
    assert same.ci == (0.0, 0.0) and same.frac_le_zero == 1.0
    assert "cannot be told apart" in same.verdict("A", "B")
    worse = np.where(np.arange(200) < 60, 1 - y, y)
    assert paired_bootstrap(y, y, worse).verdict("A", "B").startswith("A beats B")
    assert paired_bootstrap(y, worse, y).verdict("A", "B").startswith("A is worse than B")
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(y, y[:10], y)
