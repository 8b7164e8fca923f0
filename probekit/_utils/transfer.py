"""Host <-> device copies: pinned (page-locked) host buffers and non-blocking copies when the
other side is a CUDA device, plain copies otherwise.

A copy from pageable memory to a GPU (or back) is synchronous and staged by the driver; from a
pinned buffer it is a DMA that overlaps with compute. torch's caching host allocator reuses
pinned blocks and keeps one alive until the copies queued on it are done, so a buffer from
:func:`host_empty` can be filled and sent every batch without a manual ring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["device_sync", "host_empty", "pinned_for", "to_device", "to_host", "to_host_all"]


def pinned_for(device: torch.device | str | None) -> bool:
    """Whether copies to or from ``device`` go through pinned host memory: CUDA devices only
    (pinning needs a CUDA driver; on a CPU-only machine it raises)."""
    return device is not None and torch.device(device).type == "cuda"


def host_empty(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device | str | None
) -> Tensor:
    """An uninitialised CPU tensor to fill and then send to ``device``: pinned for CUDA."""
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=pinned_for(device))


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` on ``device``; a CPU -> CUDA copy is non-blocking (pin ``x`` beforehand, e.g. with
    :func:`host_empty`, for it to overlap; from pageable memory it is synchronous anyway)."""
    return x.to(device, non_blocking=pinned_for(device) and x.device.type == "cpu")


def to_host(x: Tensor) -> Tensor:
    """Start copying ``x`` to the CPU: into a pinned buffer without waiting when ``x`` is on a
    CUDA device (call :func:`device_sync` before reading the result), else ``x`` itself."""
    if not pinned_for(x.device):
        return x
    out = host_empty(x.shape, x.dtype, x.device)
    out.copy_(x, non_blocking=True)
    return out


def device_sync(device: torch.device | str | None) -> None:
    """Wait for the copies queued on ``device``'s current stream (a no-op off CUDA)."""
    if pinned_for(device):
        torch.cuda.current_stream(torch.device(device)).synchronize()  # type: ignore[arg-type]


def to_host_all(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy every tensor to the CPU: CUDA ones into pinned buffers without blocking, then one
    wait per CUDA device involved (instead of one synchronous copy per tensor)."""
    out = {key: to_host(t) for key, t in tensors.items()}
    for device in {t.device for t in tensors.values() if pinned_for(t.device)}:
        device_sync(device)
    return out
