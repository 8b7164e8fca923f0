"""Pool one layer's output to one vector per sample, on the device, inside the hook.

Poolings (``POOLINGS``):

* ``cls``: the first token, ``(B, T, D) -> (B, D)``.
* ``mean``: the mean over real tokens. Text: every token the attention mask keeps (as
  sentence-transformers does, ``[CLS]``/``[SEP]`` included). ViTs: the patch tokens, prefix
  tokens (class and register tokens) excluded. CNN maps ``(B, C, H, W)``: the spatial mean.
* ``last``: the last token the attention mask keeps (left or right padding), for decoder LMs.
* ``cls+mean``: shorthand for the two poolings ``cls`` and ``mean`` (ALF's tokens).
* ``tokens``: every token, ``(B, T, D)``; for small runs (text is padded to a fixed length).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["POOLINGS", "expand_poolings", "pool"]

POOLINGS = ("cls", "mean", "last", "tokens")


def expand_poolings(pooling: str | Sequence[str]) -> list[str]:
    """``"cls+mean"`` -> ``["cls", "mean"]``; checks every name.

    Raises:
        ValueError: an unknown pooling, naming the known ones.
    """
    names = pooling.split("+") if isinstance(pooling, str) else [p for s in pooling for p in s.split("+")]
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        if n not in POOLINGS:
            raise ValueError(f"unknown pooling {n!r}; choose from {', '.join(POOLINGS)} or cls+mean")
    if not names:
        raise ValueError("pooling is empty")
    return list(dict.fromkeys(names))


def pool(hidden: Tensor, how: str, mask: Tensor | None = None, n_prefix: int = 0) -> Tensor:
    """Pool one layer's output.

    Args:
        hidden: ``(B, T, D)`` tokens, or ``(B, C, H, W)`` a CNN feature map.
        how: one of ``POOLINGS``.
        mask: ``(B, T)`` attention mask (1 = real token), or None when every token is real.
        n_prefix: prefix tokens (class, registers) that ``mean`` leaves out (ViTs).

    Returns:
        ``(B, D)``, or ``(B, T, D)`` for ``tokens``. Float32 sums for the mean, cast back.
    """
    if hidden.ndim == 4:  # CNN map (B, C, H, W)
        if how == "mean":
            return hidden.mean(dim=(2, 3))
        if how == "tokens":
            return hidden.flatten(2).transpose(1, 2)  # (B, H*W, C)
        raise ValueError(f"pooling {how!r} does not apply to a CNN feature map; use mean or tokens")
    if hidden.ndim == 2:  # already one vector per sample (a pooler or a head)
        return hidden
    if hidden.ndim != 3:
        raise ValueError(f"cannot pool a tensor of shape {tuple(hidden.shape)}")
    if how == "cls":
        return hidden[:, 0]
    if how == "tokens":
        return hidden
    if how == "mean":
        h = hidden[:, n_prefix:]
        if mask is None:
            return h.mean(dim=1)
        m = mask[:, n_prefix:].to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    if how == "last":
        if mask is None:
            return hidden[:, -1]
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.bool() * positions).amax(dim=1)  # (B,) index of the last kept token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; choose from {', '.join(POOLINGS)}")
