"""Pool one layer's output to one vector per sample, on the device, inside the hook.

Poolings (``POOLINGS``):

* ``cls``: the first (real) token, ``(B, T, D) -> (B, D)``.
* ``mean``: the mean over real tokens. Text: every token the attention mask keeps (as
  sentence-transformers does, ``[CLS]``/``[SEP]`` included). ViTs: the patch tokens, prefix
  tokens (class and register tokens) excluded. CNN maps ``(B, C, H, W)`` (or channels-last
  ``(B, H, W, C)`` where the layer says so): the spatial mean.
* ``last``: the last token the attention mask keeps (left or right padding), for decoder LMs.
* ``last-N`` (``last-2``): the token ``N`` places before that one (``last-0`` is ``last``); a
  window of at most ``N`` tokens gives its first token.
* ``cls+mean`` (or ``cls,mean``): shorthand for the two poolings ``cls`` and ``mean`` (ALF's
  tokens).
* ``tokens``: every token, ``(B, T, D)``; for small runs (text is padded to a fixed length).

With a prompt template (:mod:`~probekit.recording.prompts`) the mask these see is the read
window (the whole prompt, or the tokens of its ``{text}`` span) instead of the attention mask.

Each is a function behind a registry: ``register_pooling("max", fn)`` adds a pooling, where
``fn(hidden (B, T, D), mask (B, T) or None) -> (B, D)`` (``skip_prefix=True``: a ViT's prefix
tokens are cut from both first, as ``mean`` does). ``list_poolings()`` names them all; a cache
records the names it was built with, and its reads accept any recorded name.

A cached feature is named ``"{layer}.{pooling}"`` (``"layers.3.cls"``): :class:`FeatureKey`
builds and parses that name; :func:`expand_poolings` owns the pooling spelling.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ..cache.poolings import recorded_poolings, split_poolings
from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from ..models.loading import LoadedModel

__all__ = [
    "POOLINGS",
    "FeatureKey",
    "canonical_pooling",
    "expand_poolings",
    "list_poolings",
    "model_poolings",
    "pool",
    "register_pooling",
]

POOLINGS = ("cls", "mean", "last", "tokens")
"""The built-in poolings (:func:`list_poolings` adds the registered ones)."""

PoolFn = Callable[["Tensor", "Tensor | None"], "Tensor"]
_REGISTRY: dict[str, tuple[PoolFn, bool]] = {}
_LAST_N = re.compile(r"last-(\d+)")


def _lookup(name: str) -> tuple[PoolFn, bool] | None:
    """``(fn, skip_prefix)`` of a registered pooling or of ``last-N``; ``None`` when unknown."""
    known = _REGISTRY.get(name)
    if known is not None:
        return known
    match = _LAST_N.fullmatch(name)
    return (_last_n(int(match.group(1))), False) if match else None


def canonical_pooling(name: str) -> str:
    """A pooling's canonical spelling: ``last-0`` -> ``last``, ``last-02`` -> ``last-2``."""
    match = _LAST_N.fullmatch(name)
    if match is None or name in _REGISTRY:
        return name
    n = int(match.group(1))
    return "last" if n == 0 else f"last-{n}"


def register_pooling(name: str, fn: PoolFn, *, skip_prefix: bool = False) -> PoolFn:
    """Register ``fn`` as the pooling ``name``; returns ``fn``.

    Args:
        name: the pooling's name (letters, digits, ``_`` or ``-``; no ``.``, ``+`` or ``,``).
        fn: ``(hidden (B, T, D), mask (B, T) 1 = real token, or None) -> (B, D)``.
        skip_prefix: cut a ViT's prefix tokens (class, registers) from ``hidden`` and ``mask``
            before calling ``fn``.

    Raises:
        ConfigError: a malformed name, or one registered to another function.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"a pooling name is letters, digits, '_' or '-'; got {name!r}")
    known = _REGISTRY.get(name)
    if known is not None and known[0].__qualname__ != fn.__qualname__:
        raise ConfigError(f"pooling {name!r} is already registered to {known[0].__qualname__}")
    _REGISTRY[name] = (fn, skip_prefix)
    return fn


def list_poolings() -> list[str]:
    """Every pooling name, the built-ins first."""
    return list(_REGISTRY)


def expand_poolings(
    pooling: str | Sequence[str], recorded: Sequence[str] | None = None
) -> list[str]:
    """``"cls+mean"`` or ``"cls,mean"`` -> ``["cls", "mean"]``; checks every name (``last-N``
    for any ``N`` is a name; ``last-0`` is spelled ``last``).

    Args:
        pooling: one name, names joined by ``+`` or ``,``, or a list of such strings.
        recorded: when given (a cache's poolings), every name must be one of these.

    Raises:
        ConfigError: an empty, unknown or (with ``recorded``) unrecorded pooling, naming the
            valid ones.
    """
    known = list_poolings()
    names = list(dict.fromkeys(canonical_pooling(n) for n in split_poolings(pooling, known)))
    if recorded is not None:
        return recorded_poolings(names, recorded)
    for n in names:
        if _lookup(n) is None:
            raise ConfigError(
                f"unknown pooling {n!r}; choose from {', '.join(known)}, last-N (N tokens "
                "before the last), or join them: cls+mean"
            )
    return names


def model_poolings(model: LoadedModel, pooling: str | Sequence[str] | None) -> list[str]:
    """The poolings to record from ``model``: ``pooling`` expanded, or the model's default.

    Checked against what the model has, before any forward pass: a feature map (CNNs, HF
    ConvNeXt) takes only ``mean`` and ``tokens``; an image transformer without a class token
    (Swin) has no ``cls``: its first token would be a patch.

    Raises:
        ConfigError: an unknown pooling, or one the model does not have.
    """
    names = expand_poolings(pooling or model.default_pooling)
    if model.arch == "cnn":
        bad = [p for p in names if p not in ("mean", "tokens")]
        if bad:
            raise ConfigError(
                f"pooling {bad[0]!r} does not apply to {model.spec}: its layers are feature "
                "maps; use mean or tokens"
            )
    elif model.kind == "image" and model.n_prefix_tokens == 0 and "cls" in names:
        raise ConfigError(
            f"{model.spec} has no class token (its first token is a patch); use pooling mean"
        )
    return names


@dataclass(frozen=True, order=True)
class FeatureKey:
    """The name of one cached feature: ``"{layer}.{pooling}"`` (``"layers.3.cls"``).

    Layer names may hold dots (``"blocks.1.norm2"``); the pooling is what follows the last one.

    Attributes:
        layer: the layer's name.
        pooling: one of :func:`list_poolings`.
    """

    layer: str
    pooling: str

    def __post_init__(self) -> None:
        if _lookup(self.pooling) is None:
            raise ConfigError(
                f"unknown pooling {self.pooling!r} in feature key; "
                f"choose from {', '.join(list_poolings())}"
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


def pool(
    hidden: Tensor,
    how: str,
    mask: Tensor | None = None,
    n_prefix: int = 0,
    channels_last: bool = False,
) -> Tensor:
    """Pool one layer's output.

    Args:
        hidden: ``(B, T, D)`` tokens, or a CNN feature map ``(B, C, H, W)`` (``(B, H, W, C)``
            with ``channels_last``).
        how: one of :func:`list_poolings`, or ``last-N``.
        mask: ``(B, T)`` attention mask (1 = real token), or None when every token is real;
            with a prompt template, the read window (1 = a token to read).
        n_prefix: prefix tokens (class, registers) that ``mean`` leaves out (ViTs).
        channels_last: a 4-D ``hidden`` is ``(B, H, W, C)`` (the layer's
            :attr:`~probekit.models.LayerSpec.channels_last`, known from the model).

    Returns:
        ``(B, D)``, or ``(B, T, D)`` for ``tokens``. Float32 sums for the mean, cast back.
    """
    found = _lookup(how)
    if found is None:
        raise ConfigError(f"unknown pooling {how!r}; choose from {', '.join(list_poolings())}")
    if hidden.ndim == 4:  # CNN map
        if channels_last:  # (B, H, W, C) -> (B, C, H, W), a view
            hidden = hidden.permute(0, 3, 1, 2)
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
    fn, skip_prefix = found
    if skip_prefix and n_prefix:
        hidden = hidden[:, n_prefix:]
        mask = None if mask is None else mask[:, n_prefix:]
    return fn(hidden, mask)


def _cls(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """The first token ``mask`` keeps (position 0 unless the batch is left-padded):
    ``(B, T, D), (B, T) -> (B, D)``."""
    if mask is None:
        return hidden[:, 0]
    import torch

    width = mask.shape[1]
    positions = torch.arange(width, device=mask.device)
    first = torch.where(mask.bool(), positions, width).amin(dim=1).clamp_max(width - 1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first.to(hidden.device)]


def _mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """The mean over the tokens ``mask`` keeps: ``(B, T, D), (B, T) -> (B, D)``."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _last(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """The last token ``mask`` keeps (left or right padding): ``(B, T, D) -> (B, D)``."""
    if mask is None:
        return hidden[:, -1]
    import torch

    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.bool() * positions).amax(dim=1)  # (B,) index of the last kept token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@lru_cache(maxsize=64)
def _last_n(n: int) -> PoolFn:
    """``last-N``: the token ``n`` places before the last one ``mask`` keeps, not before the
    first kept one: ``(B, T, D), (B, T) -> (B, D)``."""

    def last_n(hidden: Tensor, mask: Tensor | None) -> Tensor:
        import torch

        width = hidden.shape[1]
        if mask is None:
            return hidden[:, max(width - 1 - n, 0)]
        keep = mask.bool()
        positions = torch.arange(width, device=mask.device)
        last = (keep * positions).amax(dim=1)  # (B,)
        first = torch.where(keep, positions, width).amin(dim=1).clamp_max(last)  # (B,)
        at = torch.maximum(last - n, first)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), at.to(hidden.device)]

    last_n.__qualname__ = f"last_{n}"
    return last_n


def _tokens(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Every token: ``(B, T, D)`` unchanged."""
    return hidden


register_pooling("cls", _cls)
register_pooling("mean", _mean, skip_prefix=True)
register_pooling("last", _last)
register_pooling("tokens", _tokens)
