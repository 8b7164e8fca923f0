"""Layer attribution: head weights, ablation sensitivity, captum parity, agreement."""

from __future__ import annotations

import subprocess
import sys
from functools import cache

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from probekit.analysis import attribution as A
from probekit.analysis.attribution import (
    AblationResult,
    ablation_sensitivity,
    attribution_agreement,
    captum_attribution,
    layer_attribution,
    layer_map,
)
from probekit.estimator import ProbeClassifier

FUSION_HEADS = ["alf", "laya", "kcla", "aila-linear", "aila-attention", "scalar-mix"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is fastest, and avoids oversubscription on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _settings(head: str, epochs: int) -> dict:
    if head == "linear":
        return {"max_iter": 50}
    return {
        "epochs": epochs,
        "lr": 1e-2,
        "weight_decay": 1e-4,
        "batch_size": 64,
        "val_size": 0.0,
        "refit": False,
    }


def _data(
    n: int,
    n_layers: int,
    dim: int,
    k: int | None,
    tokens: int = 1,
    seed: int = 0,
    signal: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``X (N, L * P, D)`` Gaussian, label ``y (N,)`` in {0, 1}; layer ``k`` (all its tokens)
    carries the label in its first two features (every layer a little when ``k`` is None)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, n_layers * tokens, dim)).astype(np.float32)
    sign = (2 * y - 1)[:, None].astype(np.float32)
    if k is None:
        x[:, :, 0] += 0.5 * signal * sign
    else:
        x[:, k * tokens : (k + 1) * tokens, :2] += signal * sign[:, :, None]
    return x, y


@cache
def _fitted(head: str, tokens: int = 1) -> tuple[ProbeClassifier, np.ndarray, np.ndarray]:
    """A briefly trained classifier on a tiny problem every layer says a little about."""
    x, y = _data(48, 4, 6, None, tokens)
    clf = ProbeClassifier(
        head=head,
        tokens_per_layer=tokens,
        random_state=0,
        device="cpu",
        **_settings(head, epochs=2),
    )
    return clf.fit(x, y), x, y


def _reference_ablation(
    clf: ProbeClassifier, x: np.ndarray, y: np.ndarray, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Loop over layers, one full copy each: ``(N, L)`` probability drop, ``(L,)`` accuracy drop."""
    p = clf.tokens_per_layer_
    idx = np.searchsorted(clf.classes_, y)
    proba = clf.predict_proba(x)
    base = proba[np.arange(len(y)), idx]
    base_acc = (proba.argmax(1) == idx).mean()
    drops, acc = [], []
    for layer in range(clf.n_layers_):
        xa = x.copy()
        xa[:, layer * p : (layer + 1) * p] = fill[:, layer * p : (layer + 1) * p]
        pa = clf.predict_proba(xa)
        drops.append(base - pa[np.arange(len(y)), idx])
        acc.append(base_acc - (pa.argmax(1) == idx).mean())
    return np.stack(drops, 1), np.array(acc)


# --------------------------------------------------------------------------- ablation


@pytest.mark.parametrize(
    ("head", "tokens"),
    [
        ("linear", 1),
        ("concat", 1),
        ("laya", 1),
        ("alf", 1),
        ("kcla", 1),
        ("aila-attention", 1),
        ("linear", 2),
        ("alf", 2),
        ("laya", 2),
    ],
)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_captum_feature_ablation_matches_ablation_sensitivity(
    head: str, tokens: int, mode: str
) -> None:
    clf, x, y = _fitted(head, tokens)
    res = ablation_sensitivity(clf, x, y, mode=mode)
    assert isinstance(res, AblationResult)
    assert res.per_sample.shape == (len(x), 4)
    assert res.layer_names == clf.layer_names_ and res.mode == mode
    cap = captum_attribution(clf, x, y, method="feature_ablation", baseline=mode, target="true")
    np.testing.assert_allclose(cap, res.per_sample, atol=1e-5)
    # and both match a plain per-layer loop (all P tokens of the layer replaced)
    fill = np.zeros_like(x) if mode == "zero" else np.broadcast_to(clf.feature_mean_, x.shape)
    ref, ref_acc = _reference_ablation(clf, x, y, fill)
    np.testing.assert_allclose(res.per_sample, ref, atol=1e-5)
    np.testing.assert_allclose(res.accuracy_drop, ref_acc, atol=1e-6)
    assert res.base_accuracy == pytest.approx(clf.score(x, y))


def test_ablation_chunks_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    clf, x, y = _fitted("laya")
    full = ablation_sensitivity(clf, x, y, mode="shuffle", random_state=3)
    monkeypatch.setattr(A, "_MAX_ELEMENTS", 5 * 4 * 4 * 6)  # 5 samples per chunk
    chunked = ablation_sensitivity(clf, x, y, mode="shuffle", random_state=3)
    np.testing.assert_allclose(chunked.per_sample, full.per_sample, atol=1e-6)
    np.testing.assert_array_equal(chunked.accuracy_drop, full.accuracy_drop)
    cap = captum_attribution(clf, x, y, method="feature_ablation", baseline="zero", target="true")
    ig = captum_attribution(clf, x, y, baseline="zero", n_steps=8)
    monkeypatch.setattr(A, "_MAX_ELEMENTS", 10**9)
    cap_full = captum_attribution(
        clf, x, y, method="feature_ablation", baseline="zero", target="true"
    )
    np.testing.assert_allclose(cap, cap_full, atol=1e-6)
    np.testing.assert_allclose(
        ig, captum_attribution(clf, x, y, baseline="zero", n_steps=8), atol=1e-6
    )


def test_mean_mode_uses_the_stored_train_mean_unless_given() -> None:
    clf, x, y = _fitted("concat")
    x_new, y_new = _data(30, 4, 6, None, seed=5)
    x_new = x_new + 1.0  # its own mean differs from the training mean
    stored = ablation_sensitivity(clf, x_new, y_new, mode="mean")
    explicit = ablation_sensitivity(clf, x_new, y_new, mode="mean", baseline=clf.feature_mean_)
    np.testing.assert_allclose(stored.per_sample, explicit.per_sample, atol=1e-6)
    own = ablation_sensitivity(clf, x_new, y_new, mode="mean", baseline=x_new.mean(0))
    assert not np.allclose(own.per_sample, stored.per_sample)
    ref, _ = _reference_ablation(clf, x_new, y_new, np.broadcast_to(x_new.mean(0), x_new.shape))
    np.testing.assert_allclose(own.per_sample, ref, atol=1e-5)


def test_mean_mode_falls_back_to_the_mean_of_x() -> None:
    clf, x, y = _fitted("concat")
    clone = ProbeClassifier(head="concat")
    for name in (
        "model_",
        "classes_",
        "n_layers_",
        "tokens_per_layer_",
        "layer_names_",
        "dims_",
        "device_",
        "head",
    ):
        setattr(clone, name, getattr(clf, name))
    clone.as_tensor = clf.as_tensor  # type: ignore[method-assign]
    clone.model_ = _NoMean(clf.model_)
    res = ablation_sensitivity(clone, x, y, mode="mean")
    ref = ablation_sensitivity(clf, x, y, mode="mean", baseline=x.mean(0))
    np.testing.assert_allclose(res.per_sample, ref.per_sample, atol=1e-6)


class _NoMean(torch.nn.Module):
    """Wraps a model but hides its stored feature mean."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = [inner]  # not registered: its buffers stay hidden

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        return self.inner[0](x)


def test_shuffle_is_seeded_and_permutes_each_layer() -> None:
    clf, x, y = _fitted("kcla")
    a = ablation_sensitivity(clf, x, y, mode="shuffle", random_state=0)
    b = ablation_sensitivity(clf, x, y, mode="shuffle", random_state=0)
    c = ablation_sensitivity(clf, x, y, mode="shuffle", random_state=1)
    np.testing.assert_array_equal(a.per_sample, b.per_sample)
    assert not np.allclose(a.per_sample, c.per_sample)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(len(x)) for _ in range(clf.n_layers_)]
    idx = np.searchsorted(clf.classes_, y)
    base = clf.predict_proba(x)[np.arange(len(y)), idx]
    for layer, perm in enumerate(perms):
        xa = x.copy()
        xa[:, layer] = x[perm, layer]
        expect = base - clf.predict_proba(xa)[np.arange(len(y)), idx]
        np.testing.assert_allclose(a.per_sample[:, layer], expect, atol=1e-5)


def test_ablation_on_a_layer_list_and_string_labels() -> None:
    rng = np.random.default_rng(0)
    layers = [rng.normal(size=(40, d)).astype(np.float32) for d in (3, 5, 4)]
    y = np.where(layers[1][:, 0] > 0, "pos", "neg")
    clf = ProbeClassifier(
        head="concat", random_state=0, device="cpu", **_settings("concat", 3)
    ).fit(layers, y)
    res = ablation_sensitivity(clf, layers, y, mode="zero")
    assert res.per_sample.shape == (40, 3)
    assert int(np.argmax(res.mean_drop)) == 1
    with pytest.raises(ValueError, match="not one of clf.classes_"):
        ablation_sensitivity(clf, layers, np.full(40, "other"))


def test_ablation_argument_errors() -> None:
    clf, x, y = _fitted("laya")
    with pytest.raises(ValueError, match="mode must be"):
        ablation_sensitivity(clf, x, y, mode="noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only used with mode='mean'"):
        ablation_sensitivity(clf, x, y, mode="zero", baseline=np.zeros((4, 6)))
    with pytest.raises(ValueError, match="shape"):
        ablation_sensitivity(clf, x, y, mode="mean", baseline=np.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"y must have shape \(48,\)"):
        ablation_sensitivity(clf, x, y[:5])
    with pytest.raises(ValueError, match="not fitted"):
        ablation_sensitivity(ProbeClassifier(), x, y)


# --------------------------------------------------------------------------- head weights


def test_layer_attribution_is_the_heads_own_weights() -> None:
    clf, x, _ = _fitted("laya")
    w = layer_attribution(clf, x)
    assert w.shape == (48, 4)
    np.testing.assert_allclose(w, clf.layer_weights(x), atol=1e-6)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)


def test_layer_attribution_folds_tokens() -> None:
    clf, x, _ = _fitted("alf", 2)
    w = layer_attribution(clf, x)
    assert w.shape == (48, 4)
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("head", ["linear", "concat"])
def test_layer_attribution_without_weights_names_heads_that_have_them(head: str) -> None:
    clf, x, _ = _fitted(head)
    with pytest.raises(
        ValueError, match=rf"'{head}' gives no layer weights.*laya.*ablation_sensitivity"
    ):
        layer_attribution(clf, x)


def test_layer_map_of_aila() -> None:
    clf, x, _ = _fitted("aila-linear")
    m = layer_map(clf, x)
    assert m.shape == (48, 4, 4)
    np.testing.assert_allclose(m[:, -1], layer_attribution(clf, x), atol=1e-6)
    with pytest.raises(ValueError, match="no layer-to-layer map"):
        layer_map(_fitted("laya")[0], x)


# --------------------------------------------------------------------------- captum


@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_integrated_gradients_completeness(baseline: str) -> None:
    """IG attributions of a sample sum to f(x) - f(baseline) for the target class."""
    clf, x, y = _fitted("laya")
    ig = captum_attribution(clf, x[:10], y[:10], baseline=baseline, target="true", n_steps=256)
    assert ig.shape == (10, 4)
    b = np.zeros_like(x[:1]) if baseline == "zero" else clf.feature_mean_[None]
    idx = np.searchsorted(clf.classes_, y[:10])
    fx = clf.predict_proba(x[:10])[np.arange(10), idx]
    fb = clf.predict_proba(b)[0, idx]
    np.testing.assert_allclose(ig.sum(1), fx - fb, atol=2e-3)


def test_captum_target_defaults_to_the_predicted_class() -> None:
    clf, x, y = _fitted("kcla")
    pred = clf.predict(x)
    default = captum_attribution(clf, x, method="feature_ablation", baseline="zero")
    explicit = captum_attribution(clf, x, method="feature_ablation", baseline="zero", target=pred)
    np.testing.assert_allclose(default, explicit, atol=1e-7)
    with pytest.raises(ValueError, match="needs y"):
        captum_attribution(clf, x, target="true")
    with pytest.raises(ValueError, match="method must be"):
        captum_attribution(clf, x, method="saliency")  # type: ignore[arg-type]


def test_captum_on_device(device: str) -> None:
    x, y = _data(32, 3, 5, 1)
    clf = ProbeClassifier(head="laya", random_state=0, device=device, **_settings("laya", 2)).fit(
        x, y
    )
    res = ablation_sensitivity(clf, x, y, mode="mean")
    cap = captum_attribution(clf, x, y, method="feature_ablation", baseline="mean", target="true")
    np.testing.assert_allclose(cap, res.per_sample, atol=1e-5)


# --------------------------------------------------------------------------- agreement


def test_agreement_matches_scipy_spearmanr() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 7))
    b = a + rng.normal(size=(50, 7))
    a[:10] = np.round(a[:10])  # ties
    b[5:15, :3] = 0.0
    rho = attribution_agreement(a, b)
    expect = np.array([spearmanr(a[i], b[i]).statistic for i in range(50)])
    np.testing.assert_allclose(rho, expect, atol=1e-12)


def test_agreement_is_nan_for_constant_rows() -> None:
    a = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [3.0, 2.0, 1.0], [1.0, np.nan, 2.0]])
    b = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    rho = attribution_agreement(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[2] == pytest.approx(-1.0)
    assert np.isnan(rho[1]) and np.isnan(rho[3])
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        attribution_agreement(a, b[:, :2])


# --------------------------------------------------------------------------- the label in layer k


@pytest.mark.parametrize("head", FUSION_HEADS + ["linear", "concat"])
def test_only_layer_k_carries_the_label(head: str) -> None:
    """Weights (fusion heads) and ablation sensitivity (every head) peak at the informative layer."""
    k = 2
    x, y = _data(256, 4, 8, k, signal=2.0, seed=1)
    params = _settings(head, epochs=20)
    if head == "alf":  # ALF's recipe uses a larger lr; 0.1 is in its grid
        params["lr"] = 0.1
    clf = ProbeClassifier(head=head, random_state=0, device="cpu", **params).fit(x, y)
    assert clf.score(x, y) > 0.85
    if head in FUSION_HEADS:
        w = layer_attribution(clf, x).mean(0)
        assert int(np.argmax(w)) == k, (head, w)
    res = ablation_sensitivity(clf, x, y, mode="mean")
    assert int(np.argmax(res.mean_drop)) == k, (head, res.mean_drop)
    assert int(np.argmax(res.accuracy_drop)) == k, (head, res.accuracy_drop)
    assert res.mean_drop[k] > 0.1


def test_attribution_does_not_import_plotly() -> None:
    code = "import sys, probekit.analysis.attribution; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
