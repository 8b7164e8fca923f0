"""Tests for probekit.train: metrics, the vectorised grid, BatchNorm under vmap, early stopping,
the stacked AdamW, streaming, and the per-layer L-BFGS solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from probekit.probes.base import ProbeHead, ProbeOutput
from probekit.train import (
    TrainConfig,
    accuracy,
    balanced_accuracy,
    class_weights,
    fit_linear_probes,
    stratified_split,
    train_grid,
    train_stream,
)
from probekit.train.stacked import _StackedAdam


class TinyHead(ProbeHead):
    """Mean over tokens -> Linear -> (BatchNorm) -> GELU -> Linear; optional per-layer logits."""

    input_norm = "standardize"

    def __init__(
        self,
        n_layers,
        dims,
        n_classes,
        tokens_per_layer=1,
        *,
        bn=False,
        dropout=0.0,
        per_layer=False,
    ):
        super().__init__(n_layers, dims, n_classes, tokens_per_layer)
        d = self.max_dim
        # no bias before BatchNorm: it would get ~0 gradients that Adam turns into float noise
        self.proj = nn.Linear(d, 16, bias=not bn)
        self.bn = nn.BatchNorm1d(16) if bn else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(16, n_classes)
        self.per_layer = nn.Linear(d, n_classes) if per_layer else None

    def forward(self, x):
        h = self.drop(torch.nn.functional.gelu(self.bn(self.proj(x.mean(1)))))
        logits = self.out(h)
        layer_logits = self.per_layer(x) if self.per_layer is not None else None  # (B, L, C)
        return ProbeOutput(logits=logits, layer_logits=layer_logits)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster (and much faster on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def blobs(n=240, n_layers=3, dim=8, n_classes=3, seed=0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    mu = torch.randn(n_classes, dim, generator=g)
    scale = torch.linspace(0.2, 1.5, n_layers).view(1, -1, 1)
    x = scale * mu[y][:, None, :] + noise * torch.randn(n, n_layers, dim, generator=g)
    return x, y


def builder(**fixed):
    def build(**variant):
        return TinyHead(3, 8, 3, **{**fixed, **variant})

    return build


def cfg(**kw):
    base = dict(epochs=4, batch_size=32, val_size=0.25, seed=0, refit=False, patience=None)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- metrics / helpers


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    assert accuracy(y, p) == pytest.approx((y == p).mean())
    assert balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y, p))
    # labels that are not 0..C-1, and a predicted class absent from y_true
    y2, p2 = np.array([5, 5, 9, 9, 9]), np.array([5, 7, 9, 9, 5])
    assert balanced_accuracy(y2, p2) == pytest.approx(balanced_accuracy_score(y2, p2))
    assert balanced_accuracy(torch.tensor(y), torch.tensor(p)) == pytest.approx(
        balanced_accuracy_score(y, p)
    )


def test_stratified_split_keeps_proportions():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20 + [3])
    tr, va = stratified_split(y, 0.2, seed=1)
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == y.size
    assert [int((y[va] == c).sum()) for c in range(4)] == [10, 6, 4, 0]
    tr2, va2 = stratified_split(y, 0.2, seed=1)
    assert np.array_equal(va, va2)


def test_class_weights_balanced():
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    w = class_weights(y, 4, "balanced")
    assert torch.allclose(w[:3], torch.tensor([6 / 9, 2.0, 1.0]))
    assert w[3] == 0  # absent class
    assert float(w[y].sum()) == pytest.approx(6.0)
    assert torch.equal(class_weights(y, 3, None), torch.ones(3))


@pytest.mark.parametrize("decoupled", [True, False])
def test_stacked_adam_matches_torch(decoupled):
    torch.manual_seed(0)
    p_ref = torch.randn(5, 3, requires_grad=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = cls([p_ref], lr=0.01, weight_decay=0.1)
    p = p_ref.detach().clone()[None].requires_grad_(True)  # (G=1, 5, 3)
    opt = _StackedAdam([p], torch.tensor([0.01]), torch.tensor([0.1]), decoupled)
    for step in range(5):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        p_ref.grad = g.clone()
        ref.step()
        p.grad = g[None].clone()
        opt.step(torch.tensor([0.01]))
    assert torch.allclose(p[0], p_ref, atol=1e-6)


def test_clip_grad_norm_per_config():
    p = torch.zeros(2, 4, requires_grad=True)
    p.grad = torch.tensor([[3.0, 4.0, 0, 0], [0.3, 0.4, 0, 0]])
    opt = _StackedAdam([p], torch.ones(2), torch.zeros(2), True)
    norms = opt.clip_grad_norm(1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5]))
    assert torch.allclose(p.grad.norm(dim=1), torch.tensor([1.0, 0.5]), atol=1e-5)


# --------------------------------------------------------------------------- the grid


def _assert_states_close(a, b, atol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k


@pytest.mark.parametrize("bn", [False, True])
def test_grid_equals_each_config_alone(bn):
    """A config trained inside the vectorised grid follows the same path as trained alone."""
    x, y = blobs()
    config = cfg(lr=[1e-2, 3e-3], weight_decay=[0.0, 0.1], jitter_p=0.5, vectorize="vmap")
    grid = train_grid(builder(bn=bn), x, y, 3, config)
    assert grid.scores.shape == (4,)
    assert grid.best_index == int(np.argmax(grid.scores))
    for g, c in enumerate(grid.configs):
        solo_cfg = cfg(lr=[c["lr"]], weight_decay=[c["weight_decay"]], jitter_p=0.5)
        solo = train_grid(builder(bn=bn), x, y, 3, solo_cfg)
        assert solo.scores[0] == pytest.approx(grid.scores[g], abs=1e-9)
        if g == grid.best_index:
            _assert_states_close(solo.state_dict, grid.state_dict)
            if bn:
                assert int(grid.state_dict["bn.num_batches_tracked"]) == 4 * 6
                assert not torch.allclose(grid.state_dict["bn.running_mean"], torch.zeros(16))


def test_grid_vmap_and_loop_agree_with_dropout_variants():
    x, y = blobs()
    variants = [{"dropout": 0.0}, {"dropout": 0.0, "bn": True}]
    a = train_grid(builder(), x, y, 3, cfg(lr=[1e-2, 1e-3], vectorize="vmap"), variants)
    b = train_grid(builder(), x, y, 3, cfg(lr=[1e-2, 1e-3], vectorize="loop"), variants)
    assert len(a.configs) == 4 and a.configs[2] == {
        "lr": 1e-2,
        "weight_decay": 1e-4,
        "dropout": 0.0,
        "bn": True,
    }
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-9)
    _assert_states_close(a.state_dict, b.state_dict)


def test_dropout_grid_runs():
    x, y = blobs()
    res = train_grid(builder(), x, y, 3, cfg(), [{"dropout": 0.0}, {"dropout": 0.3}])
    assert res.best_params["dropout"] in (0.0, 0.3)
    assert {r["dropout"] for r in res.history} == {0.0, 0.3}


def test_early_stopping_restores_best_weights():
    x, y = blobs(noise=2.5)
    config = cfg(lr=[0.3], weight_decay=[0.0], epochs=30, patience=3, schedule="constant")
    res = train_grid(builder(), x, y, 3, config)
    rows = [r for r in res.history if r["phase"] == "search"]
    best = max(r["val_balanced_accuracy"] for r in rows)
    assert res.scores[0] == pytest.approx(best)
    assert rows[res.best_epoch]["val_balanced_accuracy"] == pytest.approx(best)
    assert len(rows) < 30  # stopped early
    assert len(rows) - 1 - res.best_epoch == 3  # exactly `patience` epochs without improvement
    # the returned weights are the best epoch's: re-score them on the same split
    head = builder()()
    head.load_state_dict(res.state_dict)
    head.eval()
    _, va = stratified_split(y.numpy(), 0.25, 0)
    with torch.no_grad():
        pred = head(x[va]).logits.argmax(-1)
    assert balanced_accuracy(y[va], pred) == pytest.approx(best)


def test_refit_trains_on_all_samples():
    x, y = blobs()
    res = train_grid(builder(), x, y, 3, cfg(lr=[1e-2, 1e-3], refit=True))
    phases = {r["phase"] for r in res.history}
    assert phases == {"search", "refit"}
    assert res.refit_epochs == 4
    # one config, refit, no patience: nothing to choose, no search
    res1 = train_grid(builder(), x, y, 3, cfg(refit=True))
    assert {r["phase"] for r in res1.history} == {"refit"} and res1.scores is None


def test_min_steps_and_min_batches():
    x, y = blobs(n=100)
    res = train_grid(
        builder(), x, y, 3, cfg(epochs=1, min_steps=50, batch_size=2048, min_batches=5, refit=True)
    )
    # 100 samples, batch shrunk to 20 -> 5 batches per epoch -> 10 epochs for 50 steps
    assert res.refit_epochs == 10


def test_layer_logits_heads_report_layer_scores():
    x, y = blobs()
    res = train_grid(builder(per_layer=True), x, y, 3, cfg(epochs=6, lr=[1e-2]))
    assert res.layer_scores.shape == (3,)
    assert res.layer_scores[2] > res.layer_scores[0]  # the last layer has the strongest signal


class NoVmapHead(TinyHead):
    def forward(self, x):
        if float(self.out.weight.detach().abs().sum()) < 0:  # .item() of a parameter: no vmap
            raise AssertionError
        return super().forward(x)


def test_falls_back_to_loop_when_vmap_fails():
    x, y = blobs()
    with pytest.warns(RuntimeWarning, match="vmap"):
        res = train_grid(lambda **v: NoVmapHead(3, 8, 3, **v), x, y, 3, cfg(lr=[1e-2, 1e-3]))
    assert res.scores.shape == (2,)


def test_grid_is_reproducible():
    x, y = blobs()
    a = train_grid(builder(dropout=0.2), x, y, 3, cfg(lr=[1e-2, 1e-3], jitter_p=0.5))
    b = train_grid(builder(dropout=0.2), x, y, 3, cfg(lr=[1e-2, 1e-3], jitter_p=0.5))
    _assert_states_close(a.state_dict, b.state_dict, atol=0)


def test_train_stream():
    x, y = blobs()

    def batches():
        for i in range(0, len(x), 64):
            yield x[i : i + 64], y[i : i + 64]

    res = train_stream(builder(), batches, len(x), 3, np.bincount(y.numpy()), cfg(epochs=3))
    assert [r["epoch"] for r in res.history] == [0, 1, 2]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    head = builder()()
    head.load_state_dict(res.state_dict)


# --------------------------------------------------------------------------- linear probes


def _sklearn_layers(x, y, C=1.0, class_weight=None):
    return [
        LogisticRegression(C=C, class_weight=class_weight, max_iter=1000, tol=1e-8).fit(x[:, l], y)
        for l in range(x.shape[1])
    ]


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("class_weight", [None, "balanced"])
def test_fit_linear_probes_matches_sklearn_objective(n_classes, class_weight):
    g = torch.Generator().manual_seed(n_classes)
    n, n_layers, dim = 300, 3, 6
    y = torch.randint(0, n_classes, (n,), generator=g)
    y[:5] = torch.arange(5) % n_classes  # every class present
    x = (
        torch.randn(n, n_layers, dim, generator=g)
        + 0.7 * torch.randn(n_classes, 1, dim, generator=g)[y]
    )
    sol = fit_linear_probes(
        x.transpose(0, 1).contiguous(),
        y,
        n_classes,
        C=0.5,
        class_weight=class_weight,
        max_iter=500,
        tol=1e-7,
    )
    for l, ref in enumerate(_sklearn_layers(x.numpy(), y.numpy(), 0.5, class_weight)):
        proba = torch.softmax(x[:, l] @ sol.weight[l] + sol.bias[l], -1).numpy()
        np.testing.assert_allclose(proba, ref.predict_proba(x[:, l].numpy()), atol=5e-4)


def test_fit_linear_probes_warm_start_and_threads():
    x, y = blobs(n=200)
    xl = x.transpose(0, 1).contiguous()
    a = fit_linear_probes(xl, y, 3, n_jobs=1, max_iter=300, tol=1e-8)
    b = fit_linear_probes(xl, y, 3, n_jobs=2, max_iter=300, tol=1e-8)
    assert torch.allclose(a.weight, b.weight, atol=1e-5)
    c = fit_linear_probes(xl, y, 3, init=a, max_iter=300, tol=1e-8)
    assert c.n_iter.max() < a.n_iter.min()  # starts at the optimum
    assert torch.allclose(a.weight, c.weight, atol=1e-3)


# --------------------------------------------------------------------------- the real ALF head


def _alf_data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 3
    x = torch.randn(200, 4, 16, generator=g) + torch.randn(3, 1, 16, generator=g)[y]
    return torch.nn.functional.normalize(x, dim=-1), y


def _alf_build(**kw):
    from probekit.probes import create_probe

    return create_probe("alf", n_layers=4, dims=16, n_classes=3, **kw)


# Directions with an exactly zero true gradient (a bias before BatchNorm; LayerNorm biases that
# shift every key or value alike): Adam turns their float-noise gradients into a random walk,
# so they (and the running mean that follows them) differ at the rounding level between vmap
# and single runs, without changing the outputs in train mode.
_NULL_DIRECTIONS = {"norm_k.bias", "norm_v.bias", "w_o.bias", "bn.running_mean"}


@pytest.mark.parametrize("vectorize", ["vmap", "loop"])
def test_alf_batchnorm_grid_equals_each_config_alone(vectorize):
    x, y = _alf_data()
    base = dict(epochs=2, batch_size=32, val_size=0.2, seed=0, jitter_p=0.5)
    grid = train_grid(
        _alf_build,
        x,
        y,
        3,
        TrainConfig(lr=[1e-2, 1e-3], weight_decay=[1e-4, 1e-2], vectorize=vectorize, **base),
    )
    for g, c in enumerate(grid.configs):
        solo = train_grid(
            _alf_build, x, y, 3, TrainConfig(lr=[c["lr"]], weight_decay=[c["weight_decay"]], **base)
        )
        assert solo.scores[0] == pytest.approx(grid.scores[g], abs=1e-9)
        if g != grid.best_index:
            continue
        assert int(grid.state_dict["bn.num_batches_tracked"]) == 2 * 6  # 161 train samples / 32
        for k, v in solo.state_dict.items():
            if vectorize == "loop":  # the same kernels as alone: bitwise equal
                assert torch.equal(v, grid.state_dict[k]), k
            elif k not in _NULL_DIRECTIONS:
                assert torch.allclose(v.float(), grid.state_dict[k].float(), atol=1e-5), k
