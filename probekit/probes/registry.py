"""The head registry: ``register_probe`` (a class decorator), ``list_probes``, ``get_probe_class``
(the lookup the estimator uses), ``create_probe`` and ``head_params``.

It lives in its own module so that a head module imports it, never the package
:mod:`probekit.probes`: a new head is one new file with ``@register_probe("name")`` on its class
and one import line in ``probes/__init__.py`` (or a ``--plugins`` module, imported before a run).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TypeVar

from .base import ProbeHead

__all__ = ["create_probe", "get_probe_class", "head_params", "list_probes", "register_probe"]

_REGISTRY: dict[str, type[ProbeHead]] = {}
H = TypeVar("H", bound=type[ProbeHead])


def register_probe(name: str) -> Callable[[H], H]:
    """Class decorator that registers a head under ``name``.

    Args:
        name: the public name (``create_probe(name, ...)``).

    Raises:
        ValueError: ``name`` is already taken by another class.
        TypeError: the decorated object is not a ``ProbeHead`` subclass.
    """

    def decorator(cls: H) -> H:
        if not (isinstance(cls, type) and issubclass(cls, ProbeHead)):
            raise TypeError(f"@register_probe({name!r}) needs a ProbeHead subclass, got {cls!r}")
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"probe name {name!r} is already registered to {known.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_probes() -> list[str]:
    """Names of every registered head, sorted."""
    return sorted(_REGISTRY)


def get_probe_class(name: str) -> type[ProbeHead]:
    """The head class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown probe head {name!r}; known heads: {', '.join(list_probes())}"
        ) from None


def create_probe(
    name: str,
    *,
    n_layers: int,
    dims: int | Sequence[int],
    n_classes: int,
    tokens_per_layer: int = 1,
    **params: object,
) -> ProbeHead:
    """Build a registered head.

    Args:
        name: registered name, e.g. ``"alf"``.
        n_layers: L.
        dims: width of every layer (int or L ints); the input is zero-padded to ``max(dims)``.
        n_classes: C.
        tokens_per_layer: P tokens per layer (e.g. 2 for CLS + mean); the input has T = L * P.
        **params: the head's own keyword parameters (``tau=``, ``dropout=``, ...).

    Returns:
        The head, in training mode, initialised from torch's global RNG.

    Raises:
        ValueError: unknown name.
        TypeError: a parameter the head does not take (the message lists the ones it takes).
    """
    cls = get_probe_class(name)
    accepted = head_params(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise TypeError(
            f"probe head {name!r} got unknown parameter(s) {unknown}; "
            f"it takes: {', '.join(accepted) or 'none'}"
        )
    return cls(n_layers, dims, n_classes, tokens_per_layer, **params)


def head_params(cls: type[ProbeHead] | str) -> dict[str, object]:
    """The head-specific keyword parameters of a head and their defaults.

    Args:
        cls: a head class or a registered name.

    Returns:
        ``{param: default}``, without the common ``n_layers, dims, n_classes, tokens_per_layer``.
    """
    if isinstance(cls, str):
        cls = get_probe_class(cls)
    common = {"self", "n_layers", "dims", "n_classes", "tokens_per_layer"}
    sig = inspect.signature(cls.__init__)
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in common and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
