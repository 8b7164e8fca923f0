"""The pooling spelling of a cache read: ``"cls+mean"`` -> ``["cls", "mean"]``, checked against
what the cache recorded (which poolings exist is :mod:`probekit.recording.pooling`'s business)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import ConfigError

__all__ = ["recorded_poolings", "split_poolings"]


def split_poolings(pooling: str | Sequence[str], valid: Sequence[str]) -> list[str]:
    """``"cls+mean"``, ``"cls,mean"`` or ``["cls", "mean+last"]`` -> the names, in order, once each.

    Args:
        pooling: one name, names joined by ``+`` or ``,``, or a list of such strings.
        valid: the names to offer when ``pooling`` is empty (nothing else is checked here).

    Raises:
        ConfigError: ``pooling`` names nothing.
    """
    parts = [pooling] if isinstance(pooling, str) else list(pooling)
    names = [n.strip() for part in parts for n in re.split(r"[+,]", str(part)) if n.strip()]
    if not names:
        raise ConfigError(f"pooling is empty; choose from {', '.join(valid)}")
    return list(dict.fromkeys(names))


def recorded_poolings(pooling: str | Sequence[str], recorded: Sequence[str]) -> list[str]:
    """:func:`split_poolings`, each name checked against a cache's recorded poolings.

    Raises:
        ConfigError: an empty pooling, or one that was not recorded, naming the recorded ones.
    """
    names = split_poolings(pooling, recorded)
    for n in names:
        if n not in recorded:
            raise ConfigError(
                f"pooling {n!r} was not recorded; recorded poolings: {list(recorded)}"
            )
    return names
