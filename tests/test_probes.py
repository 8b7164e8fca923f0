"""Probe heads: the shared contract (check_probe over the registry), the registry, and the math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from probekit.probes import (
    ProbeHead,
    ProbeOutput,
    check_probe,
    create_probe,
    get_probe_class,
    head_params,
    list_probes,
    register_probe,
)
from probekit.probes.alf import alf_head_dim
from probekit.probes.kcla import eca_kernel_size, head_scales

DIMS = (8, 8, 12, 16)


def padded(b: int, dims: tuple[int, ...], p: int = 1, seed: int = 0) -> torch.Tensor:
    """Random (B, L*P, max(dims)) features, zero-padded per layer."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, len(dims) * p, max(dims), generator=g)
    widths = torch.tensor([d for d in dims for _ in range(p)])
    return x * (torch.arange(max(dims)) < widths[:, None])


# ---------------------------------------------------------------- contract over the registry


def test_registry_has_every_head() -> None:
    expected = {
        "linear",
        "concat",
        "scalar-mix",
        "alf",
        "laya",
        "kcla",
        "aila-linear",
        "aila-attention",
        "diff-means",
    }
    assert expected <= set(list_probes())


@pytest.mark.parametrize("name", list_probes())
def test_check_probe(name: str) -> None:
    check_probe(name)


@pytest.mark.parametrize(
    "name", [n for n in list_probes() if "regression" in get_probe_class(n).tasks]
)
def test_check_probe_one_output(name: str) -> None:
    """C = 1: every head can be a regression head (one output, trained with squared error)."""
    check_probe(name, n_classes=1)


@pytest.mark.parametrize("name", [n for n in list_probes() if "dropout" in head_params(n)])
def test_check_probe_with_dropout(name: str) -> None:
    check_probe(name, params={"dropout": 0.3}, seed=1)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("laya", {"psi": "mlp", "tau": 0.5, "adapter_dim": 8, "hidden": 16}),
        ("alf", {"n_heads": 2, "attn_dropout": 0.1}),
        ("alf", {"n_heads": 32}),  # H > D: d_h falls back to 2
        ("kcla", {"dim": 32, "head_dim": 8}),
        ("aila-linear", {"dim": 16, "n_heads": 4}),
        ("aila-attention", {"dim": 16, "n_heads": 4}),
        ("aila-attention", {"dim": 16, "n_heads": 2, "tie_weights": True}),
        ("kcla", {"dim": 32, "head_dim": 8, "bn_attention": False}),
        ("diff-means", {"whiten": True, "shrinkage": 0.5}),
    ],
)
def test_check_probe_params(name: str, params: dict) -> None:
    check_probe(name, params=params)


def test_check_probe_catches_a_broken_head() -> None:
    class Broken(ProbeHead):
        def __init__(self, n_layers, dims, n_classes, tokens_per_layer=1):
            super().__init__(n_layers, dims, n_classes, tokens_per_layer)
            self.w = torch.nn.Parameter(torch.ones(n_layers))

        def forward(self, x):
            w = self.w.expand(x.shape[0], -1)  # not normalised
            return ProbeOutput(logits=x.sum(1)[:, :3] * self.w.sum(), layer_weights=w)

    with pytest.raises(AssertionError, match="sum to 1"):
        check_probe(Broken)


def test_check_probe_catches_a_broken_layer_map() -> None:
    class HalfMap(ProbeHead):
        """Row 0 empty (allowed: no candidates), other rows summing to 0.5 (not allowed)."""

        def __init__(self, n_layers, dims, n_classes, tokens_per_layer=1):
            super().__init__(n_layers, dims, n_classes, tokens_per_layer)
            self.lin = torch.nn.Linear(self.max_dim, n_classes)

        def forward(self, x):
            b, n = x.shape[0], self.n_layers
            m = torch.full((b, n, n), 0.5 / n)
            m[:, 0] = 0
            w = torch.full((b, n), 1 / n)
            return ProbeOutput(logits=self.lin(x.mean(1)), layer_weights=w, layer_map=m)

    with pytest.raises(AssertionError, match="layer_map rows must sum to 1, or be all zero"):
        check_probe(HalfMap)


# ---------------------------------------------------------------- registry


def test_unknown_name_lists_known_heads() -> None:
    with pytest.raises(ValueError, match="unknown probe head 'nope'.*alf.*linear"):
        create_probe("nope", n_layers=2, dims=4, n_classes=2)
    with pytest.raises(ValueError, match="known heads"):
        get_probe_class("nope")


def test_unknown_param_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="unknown parameter.*'taux'.*tau"):
        create_probe("laya", n_layers=2, dims=4, n_classes=2, taux=1.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one width per layer"):
        create_probe("linear", n_layers=3, dims=(4, 4), n_classes=2)
    with pytest.raises(ValueError, match="at least 1 output"):  # 1 output = regression
        create_probe("linear", n_layers=3, dims=4, n_classes=0)
    with pytest.raises(ValueError, match="psi"):
        create_probe("laya", n_layers=3, dims=4, n_classes=2, psi="relu")
    with pytest.raises(ValueError, match="multiple"):
        create_probe("kcla", n_layers=3, dims=4, n_classes=2, dim=30, head_dim=16)


def test_register_rejects_duplicates_and_non_heads() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_probe("linear")
        class Other(ProbeHead):
            pass

    with pytest.raises(TypeError, match="ProbeHead subclass"):
        register_probe("thing")(int)  # type: ignore[type-var]
    assert "thing" not in list_probes()


def test_head_params() -> None:
    assert head_params("laya") == {
        "adapter_dim": 96, "hidden": 192, "tau": 1.5, "psi": "identity", "dropout": 0.0
    }  # fmt: skip
    assert head_params("alf") == {
        "n_heads": None,
        "head_dim": None,
        "attn_dropout": 0.0,
        "dropout": 0.0,
    }
    assert head_params("kcla") == {
        "dim": 128, "head_dim": 16, "bn_attention": True, "dropout": 0.0
    }  # fmt: skip
    assert head_params("aila-attention") == {
        "dim": 64, "n_heads": 1, "tie_weights": False, "dropout": 0.0
    }  # fmt: skip
    for name in list_probes():  # every head trained by gradient steps takes a dropout
        assert ("dropout" in head_params(name)) != get_probe_class(name).closed_form, name
    assert head_params("diff-means") == {"whiten": False, "shrinkage": 0.1}


# ---------------------------------------------------------------- math, per head


def test_linear_is_per_layer_affine() -> None:
    torch.manual_seed(0)
    head = create_probe("linear", n_layers=4, dims=DIMS, n_classes=3)
    x = padded(5, DIMS)
    out = head(x)
    assert out.layer_weights is None and out.layer_logits is not None
    w, b = head.probes.weight, head.probes.bias
    for layer, d in enumerate(DIMS):
        ref = x[:, layer, :d] @ w[layer, :d] + b[layer]
        torch.testing.assert_close(out.layer_logits[:, layer], ref)
    torch.testing.assert_close(out.logits, out.layer_logits[:, -1])
    head.selected_layer.fill_(1)
    torch.testing.assert_close(head(x).logits, out.layer_logits[:, 1])
    assert "selected_layer" in head.state_dict()


def test_linear_tokens_are_concatenated_per_layer() -> None:
    torch.manual_seed(0)
    head = create_probe("linear", n_layers=4, dims=DIMS, n_classes=3, tokens_per_layer=2)
    x = padded(5, DIMS, p=2)
    out = head(x)
    w, b = head.probes.weight, head.probes.bias  # (L, 2*D, C)
    assert w.shape == (4, 2 * 16, 3)
    for layer in range(4):
        ref = x[:, 2 * layer : 2 * layer + 2].flatten(1) @ w[layer] + b[layer]
        torch.testing.assert_close(out.layer_logits[:, layer], ref)


@pytest.mark.parametrize(
    "name", ["linear", "concat", "laya", "kcla", "aila-linear", "aila-attention", "diff-means"]
)
def test_adapter_heads_ignore_padding(name: str) -> None:
    torch.manual_seed(0)
    head = create_probe(name, n_layers=4, dims=DIMS, n_classes=3).eval()
    x = padded(4, DIMS)
    noisy = x + 100 * (x == 0)  # garbage in the padded columns
    torch.testing.assert_close(head(noisy).logits, head(x).logits)


def test_concat_and_scalar_mix() -> None:
    torch.manual_seed(0)
    x = padded(5, DIMS)
    concat = create_probe("concat", n_layers=4, dims=DIMS, n_classes=3)
    ref = x.flatten(1) @ concat.probe.weight[0] + concat.probe.bias[0]
    torch.testing.assert_close(concat(x).logits, ref)

    mix = create_probe("scalar-mix", n_layers=4, dims=DIMS, n_classes=3)
    with torch.no_grad():
        mix.mix_logits.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
        mix.gamma.fill_(0.5)
    s = torch.softmax(torch.tensor([0.0, 1.0, -1.0, 2.0]), 0)
    h = 0.5 * sum(s[k] * x[:, k] for k in range(4))
    out = mix(x)
    torch.testing.assert_close(out.logits, mix.classifier(h))
    torch.testing.assert_close(out.layer_weights, s.expand(5, 4))


def test_alf_head_dim_rule() -> None:
    assert alf_head_dim(384, 26) == 28  # ViT-B/16 width 384 (S), 13 layers x (CLS, AP)
    assert alf_head_dim(768, 8) == 192
    assert alf_head_dim(16, 8) == 4
    assert alf_head_dim(16, 16) == 2
    assert alf_head_dim(8, 16) == 2  # reference would give 0 and fail
    head = create_probe("alf", n_layers=4, dims=DIMS, n_classes=3, tokens_per_layer=2)
    assert (head.n_heads, head.head_dim) == (8, 4)  # H = T = 8, d_h = 2 * (16 // 8)
    assert head.input_norm == "l2"


def test_alf_matches_reference_computation() -> None:
    torch.manual_seed(0)
    head = create_probe("alf", n_layers=4, dims=DIMS, n_classes=3, tokens_per_layer=2).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        head.bn.running_mean.uniform_(-0.1, 0.1)
        head.bn.running_var.uniform_(0.5, 2.0)
    x = F.normalize(padded(5, DIMS, p=2), dim=-1)
    out = head(x)
    heads, dh = head.n_heads, head.head_dim
    q = head.w_q(head.norm_q(head.query[0]))[0]  # (H*d_h,)
    k, v = head.w_k(head.norm_k(x)), head.w_v(head.norm_v(x))  # (B, T, H*d_h)
    parts, attn = [], []
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        a = torch.softmax((k[:, :, sl] @ q[sl]) / math.sqrt(dh), dim=-1)  # (B, T)
        parts.append((a[:, :, None] * v[:, :, sl]).sum(1))
        attn.append(a)
    o = head.w_o(torch.cat(parts, -1))
    torch.testing.assert_close(out.logits, head.classifier(head.bn(o)))
    token_w = torch.stack(attn).mean(0)  # (B, T)
    torch.testing.assert_close(out.layer_weights, token_w[:, 0::2] + token_w[:, 1::2])


def test_laya_matches_formula() -> None:
    torch.manual_seed(0)
    head = create_probe(
        "laya", n_layers=4, dims=DIMS, n_classes=3, adapter_dim=6, hidden=10, tau=2.0
    )
    x = padded(5, DIMS)
    z = torch.stack(
        [
            x[:, i, :d] @ head.adapters.weight[i, :d] + head.adapters.bias[i]
            for i, d in enumerate(DIMS)
        ],
        1,
    )
    alpha = torch.softmax(head.scorer(z.flatten(1)) / 2.0, -1)
    out = head(x)
    torch.testing.assert_close(out.layer_weights, alpha)
    torch.testing.assert_close(out.logits, head.classifier((alpha[..., None] * z).sum(1)))


@pytest.mark.parametrize("bn_attention", [True, False])
def test_kcla_running_sums_equal_direct_weighted_mean(bn_attention: bool) -> None:
    torch.manual_seed(0)
    head = create_probe(
        "kcla", n_layers=4, dims=DIMS, n_classes=3, dim=32, head_dim=8, bn_attention=bn_attention
    ).eval()
    if bn_attention:
        with torch.no_grad():  # non-trivial BatchNorm statistics and affine
            head.bn_attention.running_mean.uniform_(-0.2, 0.2)
            head.bn_attention.running_var.uniform_(0.5, 2.0)
            head.bn_attention.weight.uniform_(0.5, 1.5)
            head.bn_attention.bias.uniform_(-0.3, 0.3)
    else:
        assert head.bn_attention is None
    x = padded(5, DIMS)
    b, g, dg = 5, 4, 8
    xs = head.adapters(x)  # (B, L, d), all layers at once
    k = head.w_k(xs.reshape(-1, 1, 32)).view(b, 4, g, dg)  # (B, L, G, d_g)
    w = torch.exp(torch.clamp(k.norm(dim=-1) * head.head_scale, max=10))  # (B, L, G)
    y = (w[..., None] * xs.view(b, 4, g, dg)).sum(1) / (w.sum(1)[..., None] + 1e-3)  # (B, G, d_g)
    o = head.w_v(y.reshape(b, 32)).view(b, g, dg)
    q_last, k_last = head.w_q(xs[:, -1:].reshape(b, 1, 32)).view(b, g, dg), k[:, -1]
    a = (q_last * k_last).sum(-1) / k_last.norm(dim=-1)
    out_ref = (torch.sigmoid(head.head_gate(a))[..., None] * o).reshape(b, 32)
    if bn_attention:  # the reference's bn_attention + ReLU, written out
        bn = head.bn_attention
        out_ref = torch.relu(
            (out_ref - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        )
    out = head(x)
    torch.testing.assert_close(out.logits, head.classifier(out_ref))
    torch.testing.assert_close(out.layer_weights, (w / w.sum(1, keepdim=True)).mean(-1))


def test_kcla_constants() -> None:
    s = head_scales(8)
    torch.testing.assert_close(s[[0, -1]], torch.tensor([0.7, 1 / 0.7]))
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, ratios[0].expand(7))  # log-uniform spacing
    assert eca_kernel_size(128) == 5 and eca_kernel_size(64) == 3 and eca_kernel_size(256) == 5
    head = create_probe("kcla", n_layers=2, dims=8, n_classes=2)
    assert "head_scale" in dict(head.named_buffers()) and head.head_scale.shape == (8,)
    assert all(p is not head.head_scale for p in head.parameters())


def test_aila_linear_layer_map() -> None:
    torch.manual_seed(0)
    head = create_probe("aila-linear", n_layers=5, dims=(4, 6, 8, 8, 10), n_classes=3, n_heads=2)
    out = head(padded(3, (4, 6, 8, 8, 10)))
    m = out.layer_map
    assert m is not None and m.shape == (3, 5, 5)
    assert torch.equal(m, m.tril()), "layer_map must be zero above the diagonal"
    torch.testing.assert_close(m.sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(m[:, 0, 0], torch.ones(3))  # Arch 1: layer 0 has only itself
    torch.testing.assert_close(out.layer_weights, m[:, -1])


def test_aila_attention_layer_map_covers_earlier_layers_only() -> None:
    torch.manual_seed(0)
    head = create_probe("aila-attention", n_layers=5, dims=(4, 6, 8, 8, 10), n_classes=3, n_heads=2)
    out = head(padded(3, (4, 6, 8, 8, 10)))
    m = out.layer_map
    assert m is not None and m.shape == (3, 5, 5)
    assert torch.equal(m[:, 0], torch.zeros(3, 5)), "layer 0 has no earlier layer: no mass"
    assert torch.equal(m, m.tril(-1)), "row j must cover columns 0..j-1 only (no self)"
    assert (m[:, 1:].diagonal(dim1=1, dim2=2) > 0).all()  # the layer just before counts
    torch.testing.assert_close(m[:, 1:].sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(out.layer_weights, m[:, -1])


def _aila_attention_naive(
    head, x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """AILA Arch 2 (Eq. 4-5) with explicit per-pair keys and values, one layer at a time.

    ``w_q, w_k, w_v`` are ``(L, d, d)`` (row j used as ``x @ W[j]``) so that a tied head can be
    checked against the same loop with its single matrix repeated.
    """
    b, n, d, heads = x.shape[0], head.n_layers, head.dim, head.n_heads
    dk = d // heads
    ht = torch.stack(
        [
            x[:, j, : head.dims[j]] @ head.adapters.weight[j, : head.dims[j]]
            + head.adapters.bias[j]
            for j in range(n)
        ],
        1,
    )  # h~_j (B, L, d)
    hs, rows = [], []
    for j in range(n):
        a = torch.zeros(b, d)
        row = torch.zeros(b, n)
        if j > 0:
            q = (ht[:, j] @ w_q[j]).view(b, heads, dk)
            out_heads = []
            for h in range(heads):
                sl = slice(h * dk, (h + 1) * dk)
                scores = torch.stack(
                    [(q[:, h] * (hs[i] @ w_k[j])[:, sl]).sum(-1) / math.sqrt(dk) for i in range(j)],
                    -1,
                )  # (B, j)
                alpha = torch.softmax(scores, -1)
                out_heads.append(sum(alpha[:, i, None] * (hs[i] @ w_v[j])[:, sl] for i in range(j)))
                row[:, :j] += alpha / heads
            a = torch.cat(out_heads, -1)
        hs.append(F.layer_norm(torch.relu(ht[:, j] + a), (d,), head.norm.weight, head.norm.bias))
        rows.append(row)
    return hs[-1] @ head.classifier.weight.T + head.classifier.bias, torch.stack(rows, 1)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_aila_attention_matches_naive_per_layer_loop(n_heads: int) -> None:
    torch.manual_seed(0)
    head = create_probe(
        "aila-attention", n_layers=4, dims=DIMS, n_classes=3, dim=16, n_heads=n_heads
    )
    assert head.w_q.shape == head.w_k.shape == head.w_v.shape == (4, 16, 16)
    x = padded(3, DIMS)
    out = head(x)
    logits, layer_map = _aila_attention_naive(head, x, head.w_q, head.w_k, head.w_v)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.layer_map, layer_map, atol=1e-5, rtol=1e-5)


def test_aila_attention_tied_weights_match_naive_loop() -> None:
    torch.manual_seed(0)
    head = create_probe(
        "aila-attention", n_layers=4, dims=DIMS, n_classes=3, dim=16, n_heads=2, tie_weights=True
    )
    assert head.w_q.shape == (1, 16, 16)
    x = padded(3, DIMS)
    out = head(x)
    w = [p.expand(4, -1, -1) for p in (head.w_q, head.w_k, head.w_v)]
    logits, layer_map = _aila_attention_naive(head, x, *w)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.layer_map, layer_map, atol=1e-5, rtol=1e-5)


def test_aila_attention_layer_never_attends_to_itself() -> None:
    """h~_j enters a_j only through the query: with W_j^Q = 0, a_j ignores h~_j entirely."""
    torch.manual_seed(0)
    head = create_probe("aila-attention", n_layers=4, dims=DIMS, n_classes=3, dim=16, n_heads=2)
    with torch.no_grad():
        head.w_q.zero_()
    h_tilde = torch.randn(3, 4, 16, requires_grad=True)
    prev = torch.randn(3, 3, 16)
    ctx = head.prepare(h_tilde)
    a, row = head.mix(3, h_tilde[:, 3], prev, ctx)
    (grad,) = torch.autograd.grad(a.square().sum(), h_tilde, allow_unused=True)
    assert grad is None or torch.equal(grad, torch.zeros_like(grad))
    # uniform attention over the three earlier layers, their mean through W_3^V
    torch.testing.assert_close(a, prev.mean(1) @ head.w_v[3])
    torch.testing.assert_close(row, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]).expand(3, 4))
    a0, row0 = head.mix(0, h_tilde[:, 0], prev[:, :0], ctx)  # layer 0: a_0 = 0
    assert torch.equal(a0, torch.zeros(3, 16)) and torch.equal(row0, torch.zeros(3, 4))


def test_aila_attention_single_layer_has_no_cross_layer_term() -> None:
    torch.manual_seed(0)
    head = create_probe("aila-attention", n_layers=1, dims=8, n_classes=3, dim=16).eval()
    x = padded(4, (8,))
    h0 = head.adapters(x)[:, 0]  # h~_0
    out = head(x)
    torch.testing.assert_close(out.logits, head.classifier(head.norm(torch.relu(h0))))
    torch.testing.assert_close(out.layer_weights, torch.ones(4, 1))


def test_aila_attention_per_layer_weights_diverge_in_training() -> None:
    """Start every W_j^Q, W_j^K, W_j^V equal: a few steps must make them differ across j."""
    torch.manual_seed(0)
    head = create_probe("aila-attention", n_layers=4, dims=DIMS, n_classes=3, dim=16)
    with torch.no_grad():
        for w in (head.w_q, head.w_k, head.w_v):
            w.copy_(w[1].expand_as(w))
    x, y = padded(32, DIMS, seed=1), torch.arange(32) % 3
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(head(x).logits, y).backward()
        opt.step()
    for name in ("w_q", "w_k", "w_v"):
        w = getattr(head, name).detach()
        for i in range(1, 4):  # row 0 is never used (layer 0 attends to nothing)
            for j in range(i + 1, 4):
                gap = (w[i] - w[j]).abs().max().item()
                assert gap > 1e-3, f"{name}[{i}] and {name}[{j}] did not diverge ({gap:.1e})"
    tied = create_probe(
        "aila-attention", n_layers=4, dims=DIMS, n_classes=3, dim=16, tie_weights=True
    )
    assert tied.w_q.shape[0] == 1 and sum(p.numel() for p in tied.parameters()) < sum(
        p.numel() for p in head.parameters()
    )


def _aila_linear_naive(head, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct per-pair computation of AILA Arch 1 (slow, obvious)."""
    b, n, d, heads = x.shape[0], head.n_layers, head.dim, head.n_heads
    dk = d // heads
    ht = head.adapters(x)
    hs, rows = [], []
    for j in range(n):
        vs = [hs[i] @ head.pair_weight[j * (j - 1) // 2 + i] for i in range(j)] + [ht[:, j]]
        c = torch.stack(vs, 1)  # (B, j+1, d)
        s = (c.view(b, j + 1, heads, dk) * head.score[j]).sum(-1)  # (B, j+1, H)
        alpha = torch.softmax(s, 1).mean(-1)
        a = (alpha[..., None] * c).sum(1)
        hs.append(head.norm(torch.relu(ht[:, j] + a)))
        rows.append(F.pad(alpha, (0, n - j - 1)))
    return head.classifier(hs[-1]), torch.stack(rows, 1)


def test_aila_linear_matches_naive() -> None:
    torch.manual_seed(0)
    head = create_probe("aila-linear", n_layers=4, dims=DIMS, n_classes=3, dim=16, n_heads=2)
    x = padded(3, DIMS)
    out = head(x)
    logits, layer_map = _aila_linear_naive(head, x)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.layer_map, layer_map)


# ---------------------------------------------------------------- names


def test_every_registered_head_class_ends_in_head() -> None:
    import probekit.probes as probes

    for name in list_probes():
        cls = get_probe_class(name)
        assert cls.__name__.endswith("Head"), (name, cls.__name__)
        assert getattr(probes, cls.__name__) is cls and cls.__name__ in probes.__all__
