"""Memory sizes: parsing ``512MB`` / ``4GiB`` and the default budget of a fit (no torch import,
so run options can use it at start-up)."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from .errors import ConfigError

__all__ = ["available_memory", "default_budget", "parse_size"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(value: Any, name: str = "max_memory") -> int:
    """Bytes from ``512MB``, ``4GiB``, ``1.5G``, ``2e9`` or an int (``MB`` = 10^6 and
    ``MiB`` = ``M`` = 2^20, as accelerate reads them).

    Raises:
        ConfigError: not a positive size.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a size like 512MB or 4GiB, got {value!r}")
    if isinstance(value, numbers.Real):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
        if m is None or m.group(2) not in _UNITS:
            raise ConfigError(
                f"{name} must be a size like 512MB, 4GiB or a number of bytes, got {value!r}"
            )
        number, unit = float(m.group(1)), m.group(2)
    size = int(number * _UNITS[unit])
    if not math.isfinite(number) or size < 1:
        raise ConfigError(f"{name} must be a positive size, got {value!r}")
    return size


def available_memory() -> int:
    """``MemAvailable`` from /proc/meminfo in bytes (8 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def default_budget() -> int:
    """The default memory budget of a fit: half the available RAM."""
    return available_memory() // 2
