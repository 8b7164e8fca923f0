"""Text inputs: the model's real token limit, and a ``preprocess`` that truncates to it, counts
what it truncated and warns once."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["model_inputs", "position_limit", "text_preprocess"]

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(enc: Any, positions: bool) -> dict[str, Tensor]:
    """The model's inputs from a tokenizer's batch; with ``positions`` and left padding, also
    ``position_ids`` counted from each text's first real token (``cumsum(mask) - 1``), as
    generation does, so that a left-padded text sees the positions it has alone."""
    out = {k: v for k, v in enc.items() if k in INPUT_KEYS}
    mask = out.get("attention_mask")
    if positions and mask is not None and bool((mask[:, 0] == 0).any()):
        out["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
    return out


def position_limit(model: nn.Module, config: Any) -> int | None:
    """Longest token sequence the model's position table takes (``None``: no known limit).

    RoBERTa-style embeddings number positions from ``padding_idx + 1``, so their table of
    ``max_position_embeddings`` rows takes ``padding_idx + 1`` fewer tokens.
    """
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    pad = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return n - (pad + 1) if isinstance(pad, int) and pad >= 0 else n


def text_preprocess(
    tokenizer: Any, limit: int, spec: str, loaded: dict[str, Any], positions: bool = False
) -> tuple[Callable[[Sequence[Any]], dict[str, Tensor]], Callable[[Sequence[str]], int]]:
    """``preprocess`` (truncating to ``limit``, counting and warning once) and a counter;
    ``positions``: left-padded batches also get ``position_ids`` (see :func:`model_inputs`)."""

    def count_long(texts: Sequence[str]) -> int:
        n = 0
        for s in range(0, len(texts), 1024):
            enc = tokenizer([str(t) for t in texts[s : s + 1024]], truncation=False, verbose=False)
            n += sum(len(ids) > limit for ids in enc["input_ids"])
        return n

    def preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
        texts = [str(t) for t in items]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        if getattr(enc, "encodings", None):
            n_long = sum(bool(e.overflowing) for e in enc.encodings)
        else:  # a slow tokenizer: count without truncation
            n_long = count_long(texts)
        lm = loaded.get("model")
        if n_long and lm is not None:
            if lm.n_truncated == 0:
                warnings.warn(
                    f"{spec}: texts longer than the model's limit of {limit} tokens are "
                    "truncated to it (warned once; LoadedModel.n_truncated counts them)",
                    stacklevel=2,
                )
            lm.n_truncated += n_long
        return model_inputs(enc, positions)

    return preprocess, count_long
