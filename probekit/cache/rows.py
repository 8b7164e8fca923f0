"""Out-of-core access to a feature cache: a memory budget, rows gathered from the memory-mapped
shards (:class:`CacheRows`), a cache restricted to some samples (:func:`cache_subset`) and
one-pass feature statistics.

Shapes: ``N`` samples, ``T = L * P`` tokens (layer-major), ``D`` the widest selected layer.

The shards are safetensors files: an 8-byte header length, a JSON header with every tensor's
dtype, shape and byte range, then the raw row-major data. The cache's reader knows every
block's byte range and checks its digest the first time it reads it; :class:`CacheRows` has
the reader check each block it is about to use (one full read of that block, once per opened cache),
maps each shard once and copies the requested rows of each ``(n, D)`` block, visiting them in
file order (one slice for a run of consecutive rows, one numpy ``take`` otherwise, written with
numpy rather than torch's indexed assignment); after each block it tells the
kernel (``madvise(MADV_DONTNEED)``) that the block's mapped pages are no longer needed, so they
leave the process's resident set (they stay in the page cache; the kernel maps pages around
every touched row, so without this a random batch would map most of every shard it touches):
the memory a gather holds is the rows it returns plus one ``(n, D)`` block of one shard,
whatever the cache's size.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CacheError, ConfigError
from .reader import unflatten_poolings

__all__ = ["CacheRows", "CacheSubset", "cache_subset", "stream_stats"]

_NP_RAW = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


_PAGE = mmap.PAGESIZE


def _drop(mm: mmap.mmap, offset: int, length: int) -> None:
    """Take the pages of ``mm[offset:offset + length]`` out of the resident set."""
    if hasattr(mmap, "MADV_DONTNEED"):
        start = offset - offset % _PAGE
        mm.madvise(mmap.MADV_DONTNEED, start, min(offset + length, len(mm)) - start)


class CacheRows:
    """Rows of a cache selection, read from the memory-mapped shards on demand.

    Args:
        cache: a finished :class:`~probekit.cache.FeatureCache`, or a :class:`CacheSubset`.
        sel: selected layer positions (``L``).
        pools: selected pooling names (``P``).

    Attributes:
        n: number of samples (of the subset, for a :class:`CacheSubset`).
        n_tokens: ``T = L * P``.
        width: ``D``, the widest selected layer (narrower ones are zero-padded).
        row_bytes: bytes of one float32 row ``(T, D)``.
    """

    def __init__(self, cache: Any, sel: Sequence[int], pools: Sequence[str]) -> None:
        base = cache.cache if isinstance(cache, CacheSubset) else cache
        self.positions: np.ndarray | None = (
            cache.parent_rows if isinstance(cache, CacheSubset) else None
        )
        self.n = len(cache)
        self.sel, self.pools = list(sel), list(pools)
        self.dims = [int(base.dims[j]) for j in self.sel]
        self.keys = [[f"{base.layer_names[j]}.{p}" for p in self.pools] for j in self.sel]
        self.n_tokens = len(self.sel) * len(self.pools)
        self.width = max(self.dims)
        self.row_bytes = self.n_tokens * self.width * 4
        self._files = [Path(s[0]) for s in base._shards]
        self._readers = list(base._files)  # the cache's checked shard readers
        self._starts = np.asarray([s[1] for s in base._shards], dtype=np.int64)
        self._rows = [int(s[2]) for s in base._shards]
        self._layout: list[dict[str, tuple[int, torch.dtype]] | None] = [None] * len(self._files)
        self._maps: dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return self.n

    def _open(self, s: int) -> tuple[mmap.mmap, dict[str, tuple[int, torch.dtype]]]:
        layout = self._layout[s]
        if layout is None:
            reader = self._readers[s]
            keys = [k for ks in self.keys for k in ks]
            unchecked = [k for k in keys if reader.verify and k not in reader._checked]
            for _ in reader.read(unchecked):  # digest check of every block used, once
                pass
            layout = {}
            for key in keys:
                dtype, _, begin, _ = reader.entries[key]
                if dtype not in _NP_RAW:
                    raise CacheError(f"{self._files[s]}: {key} has dtype {dtype}")
                layout[key] = (begin, dtype)
            self._layout[s] = layout
        if s not in self._maps:
            with open(self._files[s], "rb") as f:
                self._maps[s] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[s], layout

    def close(self) -> None:
        """Unmap every shard."""
        maps, self._maps = self._maps, {}
        for mm in maps.values():
            mm.close()

    def gather(
        self,
        idx: Any,
        layers: Sequence[int] | None = None,
        out: Tensor | None = None,
    ) -> Tensor:
        """Raw float32 rows ``(b, L' * P, D)`` of the samples ``idx`` (positions in this
        selection, in any order), for the selected layers ``layers`` (positions in ``sel``;
        default all), token ``l * P + p``.

        Args:
            idx: ``(b,)`` sample positions (array, list, tensor or slice).
            layers: which of the selected layers.
            out: a float32 ``(b, L' * P, D)`` buffer to fill (e.g. pinned); default a new one.
        """
        if isinstance(idx, slice):
            idx = np.arange(self.n)[idx]
        idx = idx.cpu().numpy() if isinstance(idx, Tensor) else np.asarray(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"sample positions out of range 0..{self.n - 1}")
        absolute = self.positions[idx] if self.positions is not None else idx
        layers = list(range(len(self.sel))) if layers is None else list(layers)
        p = len(self.pools)
        shape = (idx.size, len(layers) * p, self.width)
        padded = any(self.dims[li] < self.width for li in layers)
        if out is None:
            out = (torch.zeros if padded else torch.empty)(shape, dtype=torch.float32)
        elif tuple(out.shape) != shape or out.dtype != torch.float32 or out.device.type != "cpu":
            raise ValueError(
                f"out is {out.dtype} {tuple(out.shape)} on {out.device}, expected float32 "
                f"{shape} on the CPU"
            )
        elif padded:
            out.zero_()
        if idx.size == 0:
            return out
        dest = out.numpy()  # numpy copies: no intra-op thread pool for these small strided copies
        # visit the samples in file order: shard by shard, rows ascending within a shard
        order = np.argsort(absolute, kind="stable")
        shard = np.searchsorted(self._starts, absolute[order], side="right") - 1
        firsts = np.flatnonzero(np.r_[True, np.diff(shard) != 0])
        for first, members in zip(firsts, np.split(order, firsts[1:]), strict=True):
            s = int(shard[first])
            local = absolute[members] - self._starts[s]
            l0, m0, k = int(local[0]), int(members[0]), members.size
            # consecutive samples (a chunk): plain slices on both sides, no fancy indexing
            run = bool((np.diff(local) == 1).all() and (np.diff(members) == 1).all())
            rows_at: Any = slice(l0, l0 + k) if run else local
            dest_at: Any = slice(m0, m0 + k) if run else members
            mm, layout = self._open(s)
            for t_l, li in enumerate(layers):
                d = self.dims[li]
                for pi, key in enumerate(self.keys[li]):
                    offset, dtype = layout[key]
                    raw = _NP_RAW[dtype]
                    block = np.frombuffer(
                        mm, dtype=raw, count=self._rows[s] * d, offset=offset
                    ).reshape(self._rows[s], d)
                    src = block[rows_at]
                    if dtype == torch.bfloat16:  # bfloat16 bits are float32's top half
                        src = (src.astype(np.uint32) << 16).view(np.float32)
                    dest[dest_at, t_l * p + pi, :d] = src
                    del block, src
                    _drop(mm, offset, self._rows[s] * d * np.dtype(raw).itemsize)
        return out

    def chunks(self, rows: int, layers: Sequence[int] | None = None) -> Iterator[Tensor]:
        """Consecutive ``(<= rows, L' * P, D)`` float32 chunks over every sample, in order."""
        for start in range(0, self.n, rows):
            yield self.gather(np.arange(start, min(start + rows, self.n)), layers)


class CacheSubset:
    """Some samples of a finished cache, read lazily; accepted wherever a cache is (e.g.
    ``ProbeClassifier.fit`` / ``predict``), so a train split need not be loaded.

    Use :func:`cache_subset`. Attributes as the cache's (``layer_names``, ``dims``,
    ``poolings``, ``manifest``, ``label_names``, ``unit``), with ``labels``, ``samples``,
    ``positions`` and ``len()`` those of the subset's rows; ``parent_rows`` ``(n,)`` are their
    row numbers in ``cache``.
    """

    def __init__(self, cache: Any, parent_rows: np.ndarray) -> None:
        self.cache = cache
        self.parent_rows = parent_rows
        self.layer_names = cache.layer_names
        self.dims = cache.dims
        self.poolings = cache.poolings
        self.manifest = cache.manifest
        self.label_names = cache.label_names
        self.unit = getattr(cache, "unit", "sample")
        self.labels = np.asarray(cache.labels)[parent_rows]
        self.samples = np.asarray(cache.index)[parent_rows]
        self.positions = np.asarray(getattr(cache, "positions", cache.index))[parent_rows]

    def __len__(self) -> int:
        return int(self.parent_rows.shape[0])

    def select(self, layers: Any = None, pooling: Any = None) -> tuple[list[int], list[str]]:
        """As :meth:`FeatureCache.select`."""
        return self.cache.select(layers, pooling)

    def load(
        self,
        layers: Any = None,
        pooling: Any = None,
        dtype: torch.dtype = torch.float32,
        *,
        flat: bool = False,
    ) -> Tensor:
        """The subset's samples as :meth:`FeatureCache.load` gives them: ``(n, L, D)`` for one
        pooling, ``(n, L, P, D)`` for several, ``(n, L * P, D)`` with ``flat``."""
        sel, pools = self.select(layers, pooling)
        rows = CacheRows(self, sel, pools)
        try:
            x = rows.gather(np.arange(len(self))).to(dtype)
        finally:
            rows.close()
        return x if flat else unflatten_poolings(x, len(pools))

    def __repr__(self) -> str:
        return f"CacheSubset(n={len(self)} of {self.cache!r})"


def cache_subset(cache: Any, positions: Any) -> CacheSubset:
    """The samples ``positions`` ``(n,)`` of ``cache`` (a :class:`CacheSubset`), nothing read.

    Raises:
        ConfigError: positions outside ``0..len(cache) - 1``.
    """
    base = cache.cache if isinstance(cache, CacheSubset) else cache
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    if isinstance(cache, CacheSubset):
        pos = cache.parent_rows[pos] if pos.size else pos
    if pos.size and (pos.min() < 0 or pos.max() >= len(base)):
        raise ConfigError(f"cache_subset: positions must be in 0..{len(base) - 1}")
    return CacheSubset(base, pos)


def stream_stats(rows: CacheRows, chunk: int) -> tuple[Tensor, Tensor, bool]:
    """Mean and population std ``(T, D)`` float64 in ONE pass over ``rows`` (per-chunk mean and
    squared deviations merged with Chan et al.'s pairwise update), and whether every value is
    finite.
    """
    n = 0
    mean = torch.zeros(rows.n_tokens, rows.width, dtype=torch.float64)
    m2 = torch.zeros_like(mean)
    finite = True
    for x in rows.chunks(chunk):
        if not bool(torch.isfinite(x.sum())):  # NaN and inf propagate into the sum
            finite = bool(torch.isfinite(x).all())  # only a float32 overflow of finite values
            if not finite:
                break
        xd = x.double()  # the chunk's one float64 temporary
        b = xd.shape[0]
        mb = xd.mean(0)
        m2b = xd.sub_(mb).square_().sum(0)
        delta = mb - mean
        total = n + b
        mean += delta * (b / total)
        m2 += m2b + delta.pow(2) * (n * b / total)
        n = total
    return mean, (m2 / max(n, 1)).sqrt(), finite
