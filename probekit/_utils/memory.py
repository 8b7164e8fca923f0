"""Memory sizes: parsing ``512MB`` / ``4GiB`` and the default budget of a fit (no torch import,
so run options can use it at start-up)."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from ..errors import ConfigError

__all__ = ["available_memory", "default_budget", "parse_size", "peak_rss", "reset_peak_rss", "rss"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(value: Any, name: str = "memory_budget") -> int:
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


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss() -> int:
    """This process's resident set now, in bytes (Linux; 0 where it cannot be read)."""
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


def peak_rss() -> int:
    """This process's peak resident set in bytes, since start or :func:`reset_peak_rss`.

    On Linux this is ``VmHWM``, the high-water mark of this process's own memory map.
    ``getrusage(RUSAGE_SELF).ru_maxrss`` is not: Linux carries it over ``execve``, so a child
    started from a large parent (a test runner, a benchmark driver) reports at least the
    parent's resident set at the fork. Elsewhere ``ru_maxrss`` is the only figure there is.
    """
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> bool:
    """Start :func:`peak_rss` again from the current resident set (Linux ``clear_refs``).

    Returns:
        Whether the kernel took the reset (False where ``/proc/self/clear_refs`` is missing).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
