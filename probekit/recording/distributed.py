"""Several processes (``torchrun``) on one extraction: who this process is and how ranks agree.

:func:`probekit.extract` runs unchanged in one process. Launched by ``torchrun --nproc-per-node N``
(or called inside any ``torch.distributed`` job), every rank computes the shards ``i`` with
``i % world_size == rank`` and writes them into the one cache folder; rank 0 creates the cache
first and finalises it after the others are done. The process group is initialised here from the
environment when ``WORLD_SIZE > 1`` and nobody has done it yet (NCCL where CUDA is available,
gloo otherwise), and torn down again at the end of the extraction that started it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["Ranks", "join_ranks"]

T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place in a (possibly one-process) job.

    Attributes:
        rank: global rank (0 in one process).
        world_size: number of processes (1 in one process).
        local_rank: rank on this machine (``LOCAL_RANK``), which picks the CUDA device.
        owned: whether :func:`join_ranks` initialised the process group (then :meth:`close`
            destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """``device`` with this rank's CUDA index: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if self.distributed and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def agree(self, fn: Callable[[], T], on: int | None = 0) -> T | None:
        """Run ``fn`` on rank ``on`` (every rank with ``None``) and share whether it failed.

        Every rank gets the same outcome: when ``fn`` raised on any rank, every rank raises an
        exception of the same type with that message, so no rank is left waiting at a collective.
        Returns ``fn``'s result where it ran, else ``None``.
        """
        result: T | None = None
        error: BaseException | None = None
        if on is None or self.rank == on:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - handed to every rank below
                error = e
        if not self.distributed:
            if error is not None:
                raise error
            return result
        reports: list[Any] = [None] * self.world_size
        mine = None if error is None else (type(error), str(error))
        torch.distributed.all_gather_object(reports, mine)
        if error is not None:
            raise error
        for report in reports:
            if report is not None:
                kind, message = report
                try:
                    shared = kind(f"{message} (on another rank)")
                except Exception:  # noqa: BLE001 - a type that needs other arguments
                    shared = RuntimeError(f"{kind.__name__}: {message} (on another rank)")
                raise shared
        return result

    def close(self) -> None:
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False


def join_ranks(device: torch.device | None = None) -> Ranks:
    """This process's :class:`Ranks`, initialising ``torch.distributed`` from the environment when
    ``WORLD_SIZE > 1`` and no process group exists (NCCL for a CUDA ``device``, else gloo)."""
    if not torch.distributed.is_available():
        return Ranks()
    owned = False
    if not torch.distributed.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Ranks()
        cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
        owned = True
    return Ranks(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        owned=owned,
    )
