"""Layer similarity: streaming linear CKA (biased and debiased HSIC) against direct O(N^2)
Gram-matrix implementations, its invariances, RSA against scipy, and the same-samples check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group, spearmanr

from probekit import CacheWriter, ConfigError, DataError, similarity


def _hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.full((n, n), 1.0 / n)
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written directly on Gram matrices."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    one = np.ones(n)
    return float(
        np.trace(K @ L)
        + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ K @ L @ one)
    ) / (n * (n - 3))


def _naive_cka(xs: list[np.ndarray], ys: list[np.ndarray], hsic) -> np.ndarray:
    out = np.zeros((len(xs), len(ys)))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            K, L = x @ x.T, y @ y.T
            out[i, j] = hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))
    return out


def _layers(n: int = 60, seed: int = 0) -> np.ndarray:
    """(n, 5, 8) layers with graded dependence and an offset far from zero."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 5, 8))
    x[:, 0] = rng.normal(size=(n, 8))
    for layer in range(1, 5):
        x[:, layer] = np.tanh(x[:, layer - 1] @ rng.normal(size=(8, 8))) + 0.5 * rng.normal(
            size=(n, 8)
        )
    return x + 5.0


@pytest.mark.parametrize(
    ("method", "hsic"), [("cka", _hsic_biased), ("cka-debiased", _hsic_unbiased)]
)
@pytest.mark.parametrize("batch_size", [7, 4096])
def test_cka_matches_direct_gram_implementation(method, hsic, batch_size):
    x = _layers()
    ref = _naive_cka(list(x.transpose(1, 0, 2)), list(x.transpose(1, 0, 2)), hsic)
    ours = similarity(x, method=method, batch_size=batch_size)
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    assert np.ptp(ref) > 0.3  # the layers are not all alike: the comparison has teeth


@pytest.mark.parametrize(
    ("method", "hsic"), [("cka", _hsic_biased), ("cka-debiased", _hsic_unbiased)]
)
def test_cka_across_inputs_with_different_widths_and_memory_split(method, hsic):
    """Two inputs of different widths; a tiny memory budget forces one pass per layer pair."""
    x = _layers(seed=1)
    rng = np.random.default_rng(2)
    ys = [x[:, 2, :5] @ rng.normal(size=(5, 3)), rng.normal(size=(60, 11)), x[:, 4] ** 2]
    ref = _naive_cka(list(x.transpose(1, 0, 2)), ys, hsic)
    whole = similarity(x, ys, method=method, batch_size=16)
    split = similarity(x, ys, method=method, batch_size=16, memory_budget=8 * 8 * 8)
    np.testing.assert_allclose(whole, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(split, ref, atol=1e-6, rtol=0)
    assert whole.shape == (5, 3)


@pytest.mark.parametrize(
    ("method", "hsic"), [("cka", _hsic_biased), ("cka-debiased", _hsic_unbiased)]
)
def test_cka_of_one_input_split_into_layer_groups(method, hsic):
    """One input, a budget of two layers per group: diagonal group pairs accumulate only their
    upper block triangle, off-diagonal pairs the whole block; every cell must match."""
    x = _layers(seed=3)
    ref = _naive_cka(list(x.transpose(1, 0, 2)), list(x.transpose(1, 0, 2)), hsic)
    split = similarity(
        x, method=method, batch_size=16, memory_budget=16 * 16 * 8
    )  # [0,1],[2,3],[4]
    np.testing.assert_allclose(split, ref, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(split, split.T)
    assert np.ptp(ref) > 0.3


@pytest.mark.parametrize("method", ["cka", "cka-debiased"])
def test_cka_of_a_layer_with_itself_is_one(method):
    s = similarity(_layers(), method=method, batch_size=13)
    np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-10)


@pytest.mark.parametrize("method", ["cka", "cka-debiased"])
def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling(method):
    x = _layers(n=80, seed=3)
    q = ortho_group.rvs(8, random_state=0)
    moved = np.stack([x[:, k] @ q * 7.5 for k in range(5)], 1)
    base = similarity(x, method=method)
    np.testing.assert_allclose(similarity(x, moved, method=method), base, atol=1e-9)
    np.testing.assert_allclose(np.diag(similarity(x, moved, method=method)), 1.0, atol=1e-9)
    # not invariant to a non-isotropic scaling: the test can tell the difference
    skew = np.stack([x[:, k] * np.linspace(0.1, 10, 8) for k in range(5)], 1)
    assert np.abs(similarity(x, skew, method=method) - base).max() > 0.05


@pytest.mark.parametrize("distance", ["cosine", "correlation"])
def test_rsa_matches_scipy(distance):
    x = _layers(n=40, seed=4) - 5.0
    ours = similarity(x, method="rsa", distance=distance)
    rdms = [pdist(x[:, k], metric=distance) for k in range(5)]
    ref = np.array([[spearmanr(a, b)[0] for b in rdms] for a in rdms])
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_rsa_subsamples_with_a_seed():
    x = _layers(n=120, seed=5)
    a = similarity(x, method="rsa", max_samples=50, seed=0)
    b = similarity(x, method="rsa", max_samples=50, seed=0)
    c = similarity(x, method="rsa", max_samples=50, seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6
    idx = np.sort(np.random.default_rng(0).choice(120, 50, replace=False))
    rdms = [pdist(x[idx, k], metric="cosine") for k in range(5)]
    ref = np.array([[spearmanr(u, v)[0] for v in rdms] for u in rdms])
    np.testing.assert_allclose(a, ref, atol=1e-6)


def _cache(path, feats, labels: np.ndarray, dataset: str, fingerprint: str):
    """A cache written through the public writer: ``feats`` ``(N, L, D)`` as pooling "mean",
    or a dict ``{pooling: (N, L, D)}``."""
    feats = feats if isinstance(feats, dict) else {"mean": feats}
    n, n_layers, d = next(iter(feats.values())).shape
    manifest = {
        "layers": [{"name": f"layers.{k}", "dim": d} for k in range(n_layers)],
        "poolings": list(feats),
        "dtype": "float32",
        "dataset": {"name": dataset, "fingerprint": fingerprint, "n": n},
    }
    writer = CacheWriter.create(path, manifest, n_samples=n, shard_size=25)
    for i in writer.missing_shards():
        lo, hi = writer.shard_range(i)
        tensors = {f"layers.{k}.{p}": torch.from_numpy(f[lo:hi, k]).float()
                   for p, f in feats.items() for k in range(n_layers)}  # fmt: skip
        writer.write_shard(i, tensors, torch.from_numpy(labels[lo:hi]))
    return writer.finalize()


def test_caches_stream_like_arrays_and_other_datasets_are_refused(tmp_path):
    x = _layers(n=60, seed=6).astype(np.float32)
    rng = np.random.default_rng(0)
    y = rng.normal(size=(60, 3, 6)).astype(np.float32)
    labels = np.arange(60) % 2
    a = _cache(tmp_path / "a", x, labels, "words", "f" * 64)
    b = _cache(tmp_path / "b", y, labels, "words", "f" * 64)
    other = _cache(tmp_path / "c", y, labels, "images", "e" * 64)
    for method in ("cka", "cka-debiased", "rsa"):
        np.testing.assert_allclose(
            similarity(a, b, method=method, batch_size=16),
            similarity(x.astype(np.float64), y.astype(np.float64), method=method),
            atol=1e-6,
        )
    sub, names_a, names_b = similarity(a, b, layers=[0, -1], layers_b=[1], return_names=True)
    np.testing.assert_allclose(
        sub, similarity(x.astype(np.float64)[:, [0, 4]], y.astype(np.float64)[:, [1]]), atol=1e-6
    )
    assert (names_a, names_b) == (["layers.0", "layers.4"], ["layers.1"])
    with pytest.raises(DataError, match="different datasets"):
        similarity(a, other)
    shuffled = _cache(tmp_path / "d", y, labels[::-1].copy(), "words", "f" * 64)
    with pytest.raises(DataError, match="different samples"):
        similarity(a, shuffled)
    with pytest.raises(DataError, match="same samples"):
        similarity(x, y[:50])


def test_several_poolings_are_compared_as_their_concatenation(tmp_path):
    rng = np.random.default_rng(7)
    cls_ = rng.normal(size=(50, 3, 4)).astype(np.float32)
    mean = (cls_ + 0.5 * rng.normal(size=(50, 3, 4))).astype(np.float32)
    cache = _cache(tmp_path / "p", {"cls": cls_, "mean": mean}, np.arange(50) % 2, "w", "a" * 64)
    both = [np.concatenate([cls_[:, k], mean[:, k]], 1).astype(np.float64) for k in range(3)]
    ref = _naive_cka(both, both, _hsic_biased)
    np.testing.assert_allclose(similarity(cache, pooling="cls+mean"), ref, atol=1e-6)
    only_cls = _naive_cka(list(cls_.transpose(1, 0, 2).astype(np.float64)),
                          list(cls_.transpose(1, 0, 2).astype(np.float64)), _hsic_biased)  # fmt: skip
    np.testing.assert_allclose(similarity(cache), only_cls, atol=1e-6)  # default: "cls"
    with pytest.raises(ConfigError, match="recorded poolings"):
        similarity(cache, pooling="max")


@pytest.mark.parametrize("method", ["cka", "cka-debiased"])
def test_cka_on_the_device_matches_the_reference(device, method):
    x = _layers(n=50, seed=8)
    hsic = _hsic_biased if method == "cka" else _hsic_unbiased
    ref = _naive_cka(list(x.transpose(1, 0, 2)), list(x.transpose(1, 0, 2)), hsic)
    np.testing.assert_allclose(similarity(x, method=method, device=device), ref, atol=1e-6)


def test_bad_options_are_config_errors():
    x = _layers(n=20)
    with pytest.raises(ConfigError, match="cka-debiased"):
        similarity(x, method="cca")
    with pytest.raises(ConfigError, match="correlation"):
        similarity(x, method="rsa", distance="euclid")
    with pytest.raises(ConfigError, match="batch_size"):
        similarity(x, batch_size=0)
    with pytest.raises(DataError, match="at least 4"):
        similarity(x[:3], method="cka-debiased")


def test_a_constant_layer_is_marked_undefined_in_the_heatmap_not_left_blank():
    from probekit.viz.science import SimilarityDisplay

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 4))
    x[:, 0] = 1.5  # e.g. a [CLS] embedding before any block: the same vector for every input
    m = similarity(x, method="cka")
    assert np.isnan(m[0]).all() and np.isnan(m[:, 0]).all() and not np.isnan(m[1:, 1:]).any()
    fig = SimilarityDisplay.from_arrays(m, ["layers.0", "layers.1", "layers.2"]).figure_
    grey = fig.data[1]
    assert np.array_equal(~np.isnan(np.asarray(grey.z, dtype=float)), np.isnan(m))
    assert np.array_equal(np.asarray(grey.text) == "n/a", np.isnan(m))
    assert grey.texttemplate == "%{text}" and "undefined" in grey.hovertemplate
    notes = [a.text for a in fig.layout.annotations]
    assert notes == ["n/a: undefined, layers.0 constant over every sample"]
    assert len(SimilarityDisplay.from_arrays(m[1:, 1:], ["a", "b"]).figure_.data) == 1
