"""Pool one layer's output to one vector per sample, on the device, inside the hook.

Poolings (``POOLINGS``):

* ``cls``: the first token, ``(B, T, D) -> (B, D)``.
* ``mean``: the mean over real tokens. Text: every token the attention mask keeps (as
  sentence-transformers does, ``[CLS]``/``[SEP]`` included). ViTs: the patch tokens, prefix
  tokens (class and register tokens) excluded. CNN maps ``(B, C, H, W)``: the spatial mean.
* ``last``: the last token the attention mask keeps (left or right padding), for decoder LMs.
* ``cls+mean`` (or ``cls,mean``): shorthand for the two poolings ``cls`` and ``mean`` (ALF's
  tokens).
* ``tokens``: every token, ``(B, T, D)``; for small runs (text is padded to a fixed length).

A cached feature is named ``"{layer}.{pooling}"`` (``"layers.3.cls"``): :class:`FeatureKey`
builds and parses that name; :func:`expand_poolings` owns the pooling spelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..cache.poolings import recorded_poolings, split_poolings
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

__all__ = ["POOLINGS", "FeatureKey", "expand_poolings", "pool"]

POOLINGS = ("cls", "mean", "last", "tokens")


def expand_poolings(
    pooling: str | Sequence[str], recorded: Sequence[str] | None = None
) -> list[str]:
    """``"cls+mean"`` or ``"cls,mean"`` -> ``["cls", "mean"]``; checks every name.

    Args:
        pooling: one name, names joined by ``+`` or ``,``, or a list of such strings.
        recorded: when given (a cache's poolings), every name must be one of these.

    Raises:
        ConfigError: an empty, unknown or (with ``recorded``) unrecorded pooling, naming the
            valid ones.
    """
    if recorded is not None:
        return recorded_poolings(pooling, recorded)
    names = split_poolings(pooling, POOLINGS)
    for n in names:
        if n not in POOLINGS:
            raise ConfigError(
                f"unknown pooling {n!r}; choose from {', '.join(POOLINGS)}, or join them: cls+mean"
            )
    return names


@dataclass(frozen=True, order=True)
class FeatureKey:
    """The name of one cached feature: ``"{layer}.{pooling}"`` (``"layers.3.cls"``).

    Layer names may hold dots (``"blocks.1.norm2"``); the pooling is what follows the last one.

    Attributes:
        layer: the layer's name.
        pooling: one of :data:`POOLINGS`.
    """

    layer: str
    pooling: str

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"unknown pooling {self.pooling!r} in feature key; choose from {', '.join(POOLINGS)}"
            )
        if not self.layer:
            raise ConfigError("a feature key needs a layer name")

    def __str__(self) -> str:
        return f"{self.layer}.{self.pooling}"

    @classmethod
    def parse(cls, key: str) -> FeatureKey:
        """``"layers.3.cls"`` -> ``FeatureKey("layers.3", "cls")``; ConfigError when malformed."""
        layer, dot, pooling = str(key).rpartition(".")
        if not dot:
            raise ConfigError(f"feature key {key!r} is not 'LAYER.POOLING'")
        return cls(layer, pooling)

    @classmethod
    def all(cls, layers: Sequence[str], poolings: Sequence[str]) -> list[str]:
        """Every key, layer-major: ``[f"{l}.{p}" for l in layers for p in poolings]``."""
        return [str(cls(layer, p)) for layer in layers for p in poolings]


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
        raise ConfigError(
            f"pooling {how!r} does not apply to a CNN feature map; use mean or tokens"
        )
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
        import torch

        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.bool() * positions).amax(dim=1)  # (B,) index of the last kept token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"unknown pooling {how!r}; choose from {', '.join(POOLINGS)}")
