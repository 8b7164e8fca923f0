"""Process-wide runtime settings and hardware detection (internal; imports no torch at import).

**Allocator.** A forward pass allocates and frees activation tensors of tens to hundreds of MB
per layer. glibc's malloc serves blocks above its ``mmap`` threshold (128 KiB, adapting up to
32 MiB) with fresh ``mmap`` calls and returns freed heap tops above its trim threshold to the
kernel, so every batch asks the kernel again for the same memory, and the kernel zero-fills it
one 4 KiB page fault at a time. On a CPU this can take more time than the arithmetic (the
bundled EfficientNet on 224 px MNIST digits spent most of its time in the kernel).
:func:`tune_allocator`, called once by ``import probekit``, raises both thresholds with
``mallopt`` so freed activation memory stays in the process and is reused by the next batch.
The cost: the process keeps its peak heap until exit (or until :func:`release_memory`).

It does nothing on other C libraries (musl, macOS, Windows) and is skipped when the environment
variable ``PROBEKIT_MALLOC=default`` is set (then glibc's own settings, or ``GLIBC_TUNABLES``,
apply).

**Precision.** :func:`resolve_precision` turns ``"auto"`` into ``"bf16"`` where the device
computes bfloat16 natively (CUDA with bf16 support; CPUs with AVX512-BF16 or AMX) and into
``"fp32"`` elsewhere; :func:`bf16_is_native` is the test behind it.

**Threads.** A CPU kernel may split its reductions by the intra-op thread count (oneDNN's and
MKL's blockings depend on it), so the same forward pass on 1 and on 16 threads need not give the
same bits. :func:`intra_op_threads` runs a block with a given count (``torch.set_num_threads``)
and restores the one before; an extraction uses it to compute every shard of a cache with the
count its manifest recorded.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "tune_allocator",
    "release_memory",
    "allocator_state",
    "bf16_is_native",
    "resolve_precision",
    "intra_op_threads",
    "usable_cores",
    "MALLOC_ENV",
]

MALLOC_ENV = "PROBEKIT_MALLOC"
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap (a batch's largest activation is well below); freed
# memory goes back to the kernel only when more than 2 GiB sits free at the heap top (mallopt
# takes an int, so this is about its largest value).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1

_STATE: dict[str, Any] = {"tuned": False, "reason": "not attempted"}


def _glibc() -> Any | None:
    """The process's glibc, or None on any other C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    _STATE["glibc"] = version().decode()
    return libc


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (see the module docstring).

    Returns:
        Whether the thresholds were set; :func:`allocator_state` says why not.
    """
    if _STATE["tuned"]:
        return True
    if os.environ.get(MALLOC_ENV, "").strip().lower() in ("default", "off", "0", "no"):
        _STATE["reason"] = f"{MALLOC_ENV}={os.environ[MALLOC_ENV]}"
        return False
    libc = _glibc()
    if libc is None:
        _STATE["reason"] = "not glibc"
        return False
    ok = (
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD)) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD)) == 1
    )
    _STATE.update(tuned=ok, reason="mallopt" if ok else "mallopt refused")
    return ok


def release_memory() -> bool:
    """Give the heap's free memory back to the kernel now (glibc ``malloc_trim(0)``)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def allocator_state() -> dict[str, Any]:
    """``{"tuned": bool, "reason": str, "glibc": version}`` (for benchmarks and bug reports)."""
    return dict(_STATE)


# ----------------------------------------------------------------------------- precision


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.cache
def bf16_is_native(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` computes bfloat16 matmuls in hardware.

    CUDA: ``torch.cuda.is_bf16_supported()`` (compute capability 8.0 and later). CPU: the
    ``avx512_bf16`` or ``amx_bf16`` flag in ``/proc/cpuinfo`` on Linux; elsewhere (no flags to
    read) PyTorch's oneDNN check ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` where it
    exists. Any other device: False.
    """
    import torch

    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    flags = _cpu_flags()
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def resolve_precision(precision: str, device_type: str) -> str:
    """``"auto"`` -> ``"bf16"`` or ``"fp32"`` for ``device_type``; warns on slow forced bf16."""
    if precision == "auto":
        return "bf16" if bf16_is_native(device_type) else "fp32"
    if precision == "bf16" and device_type == "cpu" and not bf16_is_native("cpu"):
        warnings.warn(
            "precision='bf16' on a CPU without native bfloat16 (AVX512-BF16 or AMX) is "
            "emulated and several times slower than fp32; use precision='auto' or 'fp32'",
            stacklevel=3,
        )
    return precision


# ----------------------------------------------------------------------------- threads


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (``None``: as they are); restore them after.

    Yields the count in effect, which is ``n`` unless torch refused it (a build without a
    parallel backend runs one thread whatever it is told).
    """
    import torch

    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


tune_allocator()  # once per process, at ``import probekit`` (which imports this module first)
