"""``check_probe``: the contract every registered head must pass (like sklearn's ``check_estimator``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ProbeHead, ProbeOutput

__all__ = ["check_probe"]

_NORMS = ("standardize", "l2", "none")


def _inputs(head: ProbeHead, batch: int, seed: int) -> Tensor:
    """Random features ``(B, T, D)``, zero-padded per token width and prepared as the head expects."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, head.n_tokens, head.max_dim, generator=g)
    x = x * head.feature_mask().float()
    if head.input_norm == "l2":
        x = F.normalize(x, dim=-1)
    return x


def _build(
    cls: type[ProbeHead], seed: int, params: Mapping[str, object], **kw: object
) -> ProbeHead:
    torch.manual_seed(seed)
    return cls(**kw, **params)  # type: ignore[arg-type]


def _check_output(name: str, out: ProbeOutput, b: int, n_layers: int, n_classes: int) -> None:
    assert isinstance(out, ProbeOutput), f"{name}: forward must return ProbeOutput, got {type(out)}"
    assert out.logits.shape == (b, n_classes), (
        f"{name}: logits {tuple(out.logits.shape)} != {(b, n_classes)}"
    )
    assert torch.isfinite(out.logits).all(), f"{name}: logits are not finite"
    if out.layer_logits is not None:
        want = (b, n_layers, n_classes)
        assert out.layer_logits.shape == want, (
            f"{name}: layer_logits {tuple(out.layer_logits.shape)} != {want}"
        )
    if out.layer_weights is not None:
        w = out.layer_weights
        assert w.shape == (b, n_layers), (
            f"{name}: layer_weights {tuple(w.shape)} != {(b, n_layers)}"
        )
        assert (w >= 0).all(), f"{name}: layer_weights has negative entries"
        err = (w.sum(-1) - 1).abs().max().item()
        assert err < 1e-4, f"{name}: layer_weights rows must sum to 1 (max error {err:.2e})"
    if out.layer_map is not None:
        m = out.layer_map
        want = (b, n_layers, n_layers)
        assert m.shape == want, f"{name}: layer_map {tuple(m.shape)} != {want}"
        assert (m >= 0).all(), f"{name}: layer_map has negative entries"
        sums = m.sum(-1)  # (B, L); a layer with no candidates (AILA Arch 2, layer 0) has none
        err = torch.where(sums == 0, sums, sums - 1).abs().max().item()
        assert err < 1e-4, (
            f"{name}: layer_map rows must sum to 1, or be all zero (max error {err:.2e})"
        )


def _loss(out: ProbeOutput, y: Tensor) -> Tensor:
    """The training loss: one cross-entropy per layer when the head gives layer_logits; with a
    single output (``n_classes=1``, regression) the squared error to ``y`` instead."""
    if out.logits.shape[-1] == 1:
        z = out.layer_logits if out.layer_logits is not None else out.logits[:, None]
        return (z[..., 0] - y.float()[:, None]).pow(2).mean(0).sum()
    if out.layer_logits is not None:
        return sum(
            F.cross_entropy(out.layer_logits[:, k], y) for k in range(out.layer_logits.shape[1])
        )  # type: ignore[return-value]
    return F.cross_entropy(out.logits, y)


def check_probe(
    name_or_cls: str | type[ProbeHead],
    *,
    n_layers: int = 4,
    dims: Sequence[int] = (8, 8, 12, 16),
    n_classes: int = 3,
    seed: int = 0,
    batch_size: int = 6,
    params: Mapping[str, object] | None = None,
) -> None:
    """Assert that a head honours the probe contract.

    Checks: output shapes; ``layer_weights`` (if any) non-negative with rows summing to 1;
    ``layer_map`` rows summing to 1 (or all zero, for a layer with no candidates); gradients
    reach every parameter (not None, finite, not all zero); the same seed builds an identical
    head; a batch of 1 in eval mode gives the same row as the full batch; repeated eval calls
    agree; a state dict round trip reproduces the outputs; layers of equal and of different
    widths; ``tokens_per_layer=2``.

    Args:
        name_or_cls: a registered name or a ``ProbeHead`` subclass.
        n_layers: L of the test input.
        dims: L layer widths (different, to exercise padding).
        n_classes: C (1: a single regression output, checked with a squared-error loss).
        seed: seed for weights and data.
        batch_size: B (>= 2: some heads use BatchNorm in training mode).
        params: head parameters passed to the constructor.

    Raises:
        AssertionError: with a message naming the head and the failed property.
    """
    from .registry import get_probe_class

    cls = get_probe_class(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
    name = getattr(cls, "__name__", str(cls))
    params = dict(params or {})
    assert issubclass(cls, ProbeHead), f"{name}: not a ProbeHead subclass"
    assert cls.input_norm in _NORMS, f"{name}: input_norm {cls.input_norm!r} not in {_NORMS}"
    b, y = batch_size, torch.arange(batch_size) % n_classes
    if n_classes == 1:  # regression targets
        y = torch.linspace(-1.0, 1.0, batch_size)

    for dims_, p in ((tuple(dims), 1), (max(dims), 1), (tuple(dims), 2)):
        kw = dict(n_layers=n_layers, dims=dims_, n_classes=n_classes, tokens_per_layer=p)
        tag = f"{name}(dims={dims_}, tokens_per_layer={p})"
        head, twin = _build(cls, seed, params, **kw), _build(cls, seed, params, **kw)
        x = _inputs(head, b, seed)

        # training mode: shapes, attribution, gradients, seed reproducibility
        head.train()
        twin.train()
        torch.manual_seed(seed)
        out = head(x)
        _check_output(tag, out, b, n_layers, n_classes)
        torch.manual_seed(seed)
        with torch.no_grad():
            assert torch.equal(twin(x).logits, out.logits), (
                f"{tag}: same seed gave different outputs"
            )
        _loss(out, y).backward()
        for pname, prm in head.named_parameters():
            assert prm.grad is not None, f"{tag}: no gradient reaches parameter {pname!r}"
            assert torch.isfinite(prm.grad).all(), f"{tag}: non-finite gradient in {pname!r}"
            assert prm.numel() == 0 or prm.grad.abs().sum() > 0, (
                f"{tag}: gradient of {pname!r} is all zero"
            )

        # eval mode: determinism, batch of 1, seed reproducibility, state dict round trip
        head.eval()
        with torch.no_grad():
            ref = head(x)
            _check_output(tag + " [eval]", ref, b, n_layers, n_classes)
            assert torch.equal(head(x).logits, ref.logits), (
                f"{tag}: eval forward is not deterministic"
            )
            one = head(x[:1])
            _check_output(tag + " [batch of 1]", one, 1, n_layers, n_classes)
            assert torch.allclose(one.logits, ref.logits[:1], atol=1e-5, rtol=1e-4), (
                f"{tag}: a batch of 1 in eval mode differs from the same row in a larger batch"
            )
            assert torch.equal(twin.eval()(x).logits, ref.logits), (
                f"{tag}: same seed gave different outputs"
            )
            other = _build(cls, seed + 1, params, **kw).eval()
            other.load_state_dict(head.state_dict())
            assert torch.equal(other(x).logits, ref.logits), (
                f"{tag}: state_dict round trip changed outputs"
            )
