"""The logit lens (nostalgebraist, 2020): read every layer of a causal LM through its own
unembedding.

For a decoder with ``L`` blocks, the recorded layers are the residual stream ``h_0`` (the
embeddings) to ``h_L``; the model's next-token logits are ``unembed(final_norm(h))`` of the last
block's output. ``h_L`` as recorded (``hidden_states[L]``, the final norm's output) is already
normed, so the lens reads layer ``l < L`` as ``unembed(final_norm(h_l))`` and the last layer as
``unembed(h_L)``, which are the model's own logits.

* :func:`lens_logits`: the lens's logits of one layer, ``(N, D) -> (N, V)`` (or over a few token
  ids only, ``(N, K)``).
* :func:`logit_lens`: the lens's logits over a few label tokens for every row and layer of a
  ``(N, L', D)`` array or a cache, computed in batches: ``(N, L', K)``, never ``(N, L', V)``.
* :func:`label_token_ids`: label words -> one token id each (a word that is not one token is a
  :class:`~probekit.errors.ConfigError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from ..errors import ConfigError
from ..models.lm_head import SoftcappedUnembedding

__all__ = [
    "RowsHead",
    "head_rows",
    "label_token_ids",
    "lens_logits",
    "logit_lens",
    "normed_layers",
    "parse_label_words",
    "require_unembedding",
]


def parse_label_words(value: Any) -> list[str]:
    """``" negative, positive"`` -> ``[" negative", " positive"]``: split on commas, spaces
    kept (a leading space is part of most tokenisers' word tokens); empty parts dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [w for w in value.split(",") if w.strip()]
    return [str(w) for w in value]


def require_unembedding(model: Any, what: str = "the logit lens") -> None:
    """Raise a :class:`ConfigError` unless ``model`` (a :class:`~probekit.LoadedModel`) has an
    unembedding and a final norm."""
    if getattr(model, "unembed", None) is None or getattr(model, "final_norm", None) is None:
        raise ConfigError(
            f"{what} needs a causal LM with its unembedding (lm_head); {model.spec} has none "
            "(bundled:gemma3-270m and hf: causal decoders with an LM head have one)"
        )


def label_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The one token id of each label word.

    Args:
        tokenizer: the model's tokenizer.
        words: the label words, exactly as they are tokenised (``" positive"`` with its space).

    Raises:
        ConfigError: a word that tokenises to no token or to several (naming it and its tokens),
            or two words with the same token.
    """
    ids: list[int] = []
    for word in words:
        tokens = list(tokenizer(word, add_special_tokens=False)["input_ids"])
        if len(tokens) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            raise ConfigError(
                f"label word {word!r} is {len(tokens)} tokens {pieces} of the model's tokenizer, "
                "not one; choose one-token words (a leading space often makes one)"
            )
        ids.append(int(tokens[0]))
    if len(set(ids)) < len(ids):
        raise ConfigError(f"label words {list(words)} share a token: {ids}")
    return ids


def normed_layers(model: Any, layer_names: Sequence[str]) -> list[bool]:
    """Per layer name of ``model``: whether it is recorded after the final norm (the output of
    ``model.final_norm``, e.g. ``hidden_states[L]``), so the lens reads it without the norm.

    Raises:
        ConfigError: a name that is not one of the model's layers.
    """
    specs = {s.name: s for s in model.layers}
    out = []
    for name in layer_names:
        spec = specs.get(name)
        if spec is None:
            raise ConfigError(f"layer {name!r} is not a layer of {model.spec}")
        module = model.model.get_submodule(spec.module)
        out.append(spec.io == "output" and module is model.final_norm)
    return out


class RowsHead(nn.Module):
    """Rows of a linear unembedding, stored in one dtype: ``(..., D) -> (..., K)`` float32
    logits (the input is cast to the weight's dtype: a bfloat16 copy makes a CPU matmul about
    three times faster where bf16 is native, without autocast re-casting the matrix on every
    call)."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, hidden: Tensor) -> Tensor:
        w: Tensor = self.weight  # type: ignore[assignment]
        b: Tensor | None = self.bias  # type: ignore[assignment]
        return F.linear(hidden.to(w.dtype), w, None if b is None else b.to(w.dtype)).float()


def head_rows(
    unembed: nn.Module, token_ids: Sequence[int] | None, dtype: torch.dtype | None = None
) -> nn.Module | None:
    """A :class:`RowsHead` over the rows ``token_ids`` of the unembedding matrix (``None``: every
    row), in ``dtype`` (default the matrix's), when the unembedding is linear (``nn.Linear``, a
    tied embedding; softcapped or not); ``None`` otherwise."""
    if isinstance(unembed, SoftcappedUnembedding):
        inner = head_rows(unembed.head, token_ids, dtype)
        return None if inner is None else SoftcappedUnembedding(inner, unembed.cap)
    weight = getattr(unembed, "weight", None)
    if weight is None and hasattr(unembed, "embedding"):  # TiedUnembedding
        weight = getattr(unembed.embedding, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        return None
    bias = getattr(unembed, "bias", None)
    if not isinstance(unembed, nn.Linear) and bias is not None:
        return None
    dtype = dtype or weight.dtype
    with torch.no_grad():
        if token_ids is None:
            w = weight.detach().to(dtype, copy=True)
            b = None if bias is None else bias.detach().clone()
        else:
            idx = torch.as_tensor(list(token_ids), device=weight.device)
            w = weight.detach()[idx].to(dtype)
            b = None if bias is None else bias.detach()[idx].clone()
    return RowsHead(w, b)


def lens_logits(
    model: Any,
    hidden: Tensor,
    normed: bool,
    token_ids: Sequence[int] | None = None,
    _head: nn.Module | None = None,
) -> Tensor:
    """The logit lens of one layer.

    Args:
        model: a :class:`~probekit.LoadedModel` with ``unembed`` and ``final_norm``.
        hidden: ``(N, D)`` (or ``(..., D)``) states of one layer.
        normed: the layer is already after the final norm (:func:`normed_layers`).
        token_ids: only the logits of these ``K`` tokens (default: the whole vocabulary).

    Returns:
        ``(N, V)`` logits, or ``(N, K)`` over ``token_ids``, in float32.
    """
    require_unembedding(model)
    param = next(model.final_norm.parameters(), None)
    ref = param if param is not None else hidden
    h = hidden.to(ref.device, ref.dtype)
    with torch.no_grad():
        if not normed:
            h = model.final_norm(h)
        head = (
            _head if _head is not None or token_ids is None else head_rows(model.unembed, token_ids)
        )
        if head is not None:
            return head(h).float()
        logits = model.unembed(h)
        if token_ids is not None:
            logits = logits[..., list(token_ids)]
        return logits.float()


def logit_lens(
    model: Any,
    features: Any,
    label_token_ids: Sequence[int],
    *,
    layer_names: Sequence[str] | None = None,
    pooling: str | None = None,
    batch_size: int = 1024,
) -> Tensor:
    """The logit lens's logits over the label tokens, for every row and layer.

    Args:
        model: a :class:`~probekit.LoadedModel` with an unembedding.
        features: ``(N, L', D)`` states (a tensor or array), or a
            :class:`~probekit.FeatureCache` or :class:`~probekit.CacheSubset` (read
            ``batch_size`` rows at a time).
        label_token_ids: the ``K`` token ids to score (:func:`label_token_ids`).
        layer_names: the ``L'`` model layers of ``features`` (default: the cache's, or the
            model's when ``L' == len(model.layers)``).
        pooling: the cache's pooling to read (default ``last`` if recorded, else the only one).
        batch_size: rows per batch; only ``(batch_size, V)`` logits exist at once (with a
            non-linear unembedding; a linear one computes the ``K`` logits only).

    Returns:
        ``(N, L', K)`` float32 logits; ``argmax(-1)`` is the lens's label prediction.
    """
    require_unembedding(model)
    cache = features if hasattr(features, "load") and hasattr(features, "layer_names") else None
    if cache is not None:
        layer_names = list(layer_names or cache.layer_names)
        if pooling is None:
            pooling = "last" if "last" in cache.poolings else cache.poolings[0]
        n = len(cache)
    else:
        if not torch.is_tensor(features):
            features = torch.as_tensor(np.asarray(features))
        n, n_layers = int(features.shape[0]), int(features.shape[1])
        if layer_names is None:
            if n_layers != len(model.layers):
                raise ConfigError(
                    f"features have {n_layers} layers, {model.spec} {len(model.layers)}: "
                    "name them with layer_names"
                )
            layer_names = [s.name for s in model.layers]
    normed = normed_layers(model, layer_names)
    head = head_rows(model.unembed, label_token_ids)
    out = torch.empty(n, len(layer_names), len(label_token_ids))
    if cache is not None:
        from ..cache import cache_subset

        names = list(layer_names)
        blocks: Any = (
            cache_subset(cache, np.arange(s, min(n, s + batch_size))).load(names, pooling)
            for s in range(0, n, batch_size)
        )
    else:
        blocks = (features[s : s + batch_size] for s in range(0, n, batch_size))
    start = 0
    for block in blocks:
        stop = start + int(block.shape[0])
        for j, is_normed in enumerate(normed):
            out[start:stop, j] = lens_logits(
                model, block[:, j].float(), is_normed, label_token_ids, _head=head
            ).cpu()
        start = stop
    return out
