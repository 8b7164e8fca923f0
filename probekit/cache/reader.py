"""Reading a finished feature cache: :class:`FeatureCache`, with every byte checked on first use.

Shards are read with plain file reads in about 1 MiB chunks, each hashed (XXH3-128) and copied
into the result while it is still in the CPU cache (see :mod:`probekit.cache.integrity`): opening
checks the manifest, ``texts.json`` and every shard's ``.json``, header, labels and index; a
feature block is checked the first time this object reads it, so reading one layer reads and
hashes only that layer's bytes. :meth:`FeatureCache.verify` checks each shard's whole-file sha256. ``verify=False`` skips the
shard digests (an explicit opt-out); a mismatch raises :class:`CacheError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import CacheError
from ..models.layers import resolve_indices
from .integrity import TEXTS_DIGEST, ShardFile, parse_manifest, parse_shard_meta, sha256_hex
from .layout import _DTYPES, FORMAT_VERSION, _validate_identity, shard_bounds, shard_paths
from .poolings import recorded_poolings

__all__ = ["FeatureCache", "unflatten_poolings"]


class FeatureCache:
    """A finished feature cache, read lazily; behaves like a dict of ``(N, D)`` tensors.

    Keys are ``"<layer>.<pooling>"`` (``"layers.3.cls"``), layer-major. ``len(cache)`` is the
    number of samples ``N``.

    Attributes:
        path: the cache folder.
        manifest: the parsed ``manifest.json``.
        layer_names: recorded layers, in order (``L`` names).
        dims: ``L`` feature widths.
        poolings: recorded poolings.
        labels: ``(N,)`` int64 class indices.
        label_names: class names.
        index: ``(N,)`` int64 sample positions in the source dataset (in a unit cache: the
            input each row comes from).
        unit: what a row is: ``"sample"`` (one input), ``"word"`` or ``"token"``.
        component: what of each block the cache holds: ``"resid"`` (the residual stream), ``"attn"``
            or ``"mlp"`` (the term the block's attention / MLP adds to it).
        positions: ``(N,)`` int64: the word (or token) index of each row within its input;
            in a sample cache the same as ``index``.
        texts: the input strings for text data (one per input), else ``None``.
        fingerprint: the manifest's sha256 identity.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        shards: list[tuple[Path, int, int]],
        files: list[ShardFile],
        labels: np.ndarray,
        index: np.ndarray,
        texts: list[str] | None,
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self.manifest = manifest
        self._shards = shards  # (file, start, n)
        self._files = files  # the same shards, as checked readers
        self.labels = labels
        self.index = index
        self.positions = index
        self.unit: str = str(manifest.get("unit", "sample"))
        self.component: str = str(manifest.get("component", "resid"))
        self.texts = texts
        self.layer_names: list[str] = [e["name"] for e in manifest["layers"]]
        self.dims: list[int] = [int(e["dim"]) for e in manifest["layers"]]
        self.poolings: list[str] = list(manifest["poolings"])
        dataset = manifest.get("dataset") or {}
        self.label_names: list[str] = [str(x) for x in dataset.get("label_names") or []]
        self.fingerprint: str = manifest["fingerprint"]

    #: Start, resume or reuse a cache: the same as :meth:`CacheWriter.create` (attached by the
    #: package, so that reading does not import writing).
    create: ClassVar[Callable[..., Any]]

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> FeatureCache:
        """Open a finished cache, checking what it reads.

        Reads the manifest (its digest is always checked), ``texts.json``, and every shard's
        ``.json``, header, labels and index (a few bytes per sample), hashing them as they are
        read. Feature blocks are checked when first read (:meth:`load`, :meth:`batches`,
        ``cache[key]``); :meth:`verify` checks every byte now.

        Args:
            path: the cache folder.
            verify: check shard digests (default). ``False`` is an explicit opt-out that trusts
                the shard bytes (shapes and sizes are still checked).

        Raises:
            CacheError: missing folder or manifest, a corrupt manifest, texts or shard (named),
                or an unfinished cache.
        """
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise CacheError(f"no feature cache at {path} (manifest.json not found)")
        try:
            raw = mpath.read_bytes()
        except OSError as e:
            raise CacheError(f"cannot read {mpath}: {e}") from e
        manifest = parse_manifest(raw, path)
        try:
            _validate_identity(manifest)
            n, shard_size, n_shards = (
                int(manifest[k]) for k in ("n_samples", "shard_size", "n_shards")
            )
            manifest["fingerprint"]  # noqa: B018 - presence check
        except (ValueError, KeyError, TypeError, AttributeError, CacheError) as e:
            raise CacheError(f"corrupt manifest.json in {path}: {e}") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{path} has cache format {manifest.get('format_version')!r}; this "
                f"probekit reads format {FORMAT_VERSION} (re-extract into a new folder)"
            )
        if not manifest.get("complete"):
            done = sum(shard_paths(path, i)[1].is_file() for i in range(n_shards))
            raise CacheError(
                f"the cache at {path} is incomplete ({done} of {n_shards} "
                "shards written); re-run the extraction to resume it"
            )
        keys = [f"{e['name']}.{p}" for e in manifest["layers"] for p in manifest["poolings"]]
        dims = {
            f"{e['name']}.{p}": e["dim"] for e in manifest["layers"] for p in manifest["poolings"]
        }
        unit = manifest.get("unit", "sample")
        columns = ["labels", "index"] + ([] if unit == "sample" else ["position"])
        shards, files, labels, index, position = [], [], [], [], []
        for i in range(n_shards):
            file, js = shard_paths(path, i)
            start, stop = shard_bounds(manifest, i)
            rows = stop - start
            if not file.is_file():
                raise CacheError(f"missing shard {file}; re-run the extraction to repair it")
            try:
                meta = parse_shard_meta(js.read_bytes(), js)
            except OSError as e:
                raise CacheError(f"missing shard metadata {js}: {e}") from e
            if meta.get("n") != rows or meta.get("start") != start:
                raise CacheError(f"corrupt shard metadata {js}: n/start do not match the manifest")
            shard = ShardFile(file, meta, verify=verify)
            lost = [k for k in keys + columns if k not in shard.entries]
            if lost:
                raise CacheError(f"corrupt shard {file}: missing tensors {lost[:5]}")
            for k in keys:
                if shard.shape(k) != (rows, dims[k]):
                    raise CacheError(
                        f"corrupt shard {file}: {k} has shape {shard.shape(k)}, "
                        f"expected {(rows, dims[k])}"
                    )
            got = {k: v.numpy().astype(np.int64) for k, v in shard.read(columns)}
            if any(v.shape != (rows,) for v in got.values()):
                raise CacheError(f"corrupt shard {file}: labels/index do not have {rows} rows")
            shards.append((file, start, rows))
            files.append(shard)
            labels.append(got["labels"])
            index.append(got["index"])
            position.append(got.get("position", got["index"]))
        texts = cls._read_texts(path, manifest, int(manifest.get("n_inputs", n)))
        cache = cls(path, manifest, shards, files, _concat(labels), _concat(index), texts)
        if unit != "sample":
            cache.positions = _concat(position)
        return cache

    @staticmethod
    def _read_texts(path: Path, manifest: dict[str, Any], n: int) -> list[str] | None:
        tpath = path / "texts.json"
        digest = manifest.get(TEXTS_DIGEST)
        if digest is None:
            return None
        try:
            raw = tpath.read_bytes()
        except OSError as e:
            raise CacheError(f"missing texts.json in {path}: {e}") from e
        if sha256_hex(raw) != digest:
            raise CacheError(f"corrupt texts.json in {path}: fails its sha256 check")
        texts = [str(t) for t in json.loads(raw)]
        if len(texts) != n:
            raise CacheError(f"texts.json in {path} has {len(texts)} entries for {n} inputs")
        return texts

    def verify(self) -> None:
        """Check every byte of every shard now (whole-file sha256 against its ``.json``).

        Raises:
            CacheError: naming the shards whose checksum fails or whose ``.json`` is missing.
        """
        bad = []
        for file, start, rows in self._shards:
            js = file.with_suffix(".json")
            try:
                meta = parse_shard_meta(js.read_bytes(), js)
                h = hashlib.sha256()
                with open(file, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                ok = meta["sha256"] == h.hexdigest() and meta["n"] == rows
                ok = ok and meta["start"] == start
            except (OSError, CacheError):
                ok = False
            if not ok:
                bad.append(file.name)
        if bad:
            raise CacheError(f"corrupt cache {self.path}: checksum fails for shards {bad[:10]}")

    # -- units -------------------------------------------------------------------------

    @property
    def samples(self) -> np.ndarray:
        """``(N,)`` the input each row comes from (``index``); one row per input in a sample
        cache, every labelled word (or token) of it in a unit cache."""
        return self.index

    def row_text(self, row: int) -> str:
        """The text a row stands for: its input's text, or in a word cache its word (texts are
        the words joined by single spaces); a token or span row gives its input's text.

        Raises:
            ValueError: a cache without texts (image data).
        """
        if self.texts is None:
            raise ValueError(f"{self.path} stores no texts (image data)")
        text = self.texts[int(self.index[row])]
        if self.unit == "word":
            return text.split(" ")[int(self.positions[row])]
        return text

    def rows_of(self, sample: int) -> np.ndarray:
        """Row numbers of input ``sample``, in word (token) order: ``(n_units,)`` int64.

        Raises:
            IndexError: no row comes from ``sample``.
        """
        rows = np.flatnonzero(self.index == int(sample))
        if rows.size == 0:
            raise IndexError(f"no row of {self.path} comes from sample {sample}")
        return rows[np.argsort(self.positions[rows], kind="stable")]

    # -- dict-like ---------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Tensor names, layer-major: ``["layers.0.cls", "layers.0.mean", "layers.1.cls", ...]``."""
        return [f"{name}.{p}" for name in self.layer_names for p in self.poolings]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, key: str) -> torch.Tensor:
        """One recorded tensor, ``(N, D)``, in the stored dtype, on CPU."""
        if key not in self:
            raise KeyError(f"{key!r} not in cache; keys look like {self.keys()[:3]}")
        dim = self.dims[self.layer_names.index(key.rsplit(".", 1)[0])]
        out = torch.empty(len(self), dim, dtype=_DTYPES[self.manifest["dtype"]])
        for (_, start, rows), shard in zip(self._shards, self._files, strict=True):
            shard.read_into([(key, out[start : start + rows])])
        return out

    def __repr__(self) -> str:
        names = self.layer_names
        shown = f"{names[0]}..{names[-1]}" if len(names) > 2 else ", ".join(names)
        dims = str(self.dims[0]) if len(set(self.dims)) == 1 else str(self.dims)
        model = self.manifest.get("model")
        if isinstance(model, dict):
            model = model.get("id") or model.get("name")
        unit = "" if self.unit == "sample" else f"unit={self.unit}, "
        return (
            f"FeatureCache({unit}n={len(self)}, layers={len(names)} [{shown}], dims={dims}, "
            f"poolings=[{', '.join(self.poolings)}], model={model!r})"
        )

    # -- stacking ----------------------------------------------------------------------

    def select(
        self, layers: Any = None, pooling: str | Sequence[str] | None = None
    ) -> tuple[list[int], list[str]]:
        """Resolve a selection against this cache: ``(layer positions, pooling names)``.

        Args:
            layers: ``None`` (all), an int k (the last k), indices and/or names or globs.
            pooling: ``None`` (every recorded pooling), ``"cls"``, ``"cls+mean"``,
                ``"cls,mean"`` or a list of names; each must have been recorded.
        """
        return (
            resolve_indices(layers, len(self.layer_names), self.layer_names),
            _as_poolings(pooling, self.poolings),
        )

    def _selection(
        self, layers: Any, pooling: str | Sequence[str] | None
    ) -> tuple[list[int], list[str]]:
        return self.select(layers, pooling)

    def _padded(self, sel: list[int]) -> bool:
        return len({self.dims[j] for j in sel}) > 1

    def _read_rows(
        self,
        s: int,
        sel: list[int],
        pools: list[str],
        out: torch.Tensor,
        row0: int,
    ) -> None:
        """Copy one shard's selected blocks into ``out[row0:row0+n]`` (token ``l * P + p``)."""
        _, _, rows = self._shards[s]
        reader = self._files[s]
        items = []
        for t, (j, p) in enumerate((j, p) for j in sel for p in pools):
            items.append((f"{self.layer_names[j]}.{p}", out[row0 : row0 + rows, t, : self.dims[j]]))
        reader.read_into(items)

    def load(
        self,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        flat: bool = False,
    ) -> torch.Tensor:
        """Stack the chosen layers (and poolings) into one tensor.

        Layers and poolings are separate axes, so the result says its own layout: the probe
        estimators read ``P`` from a 4-D input (``ProbeClassifier().fit(cache.load(), y)`` fits
        one probe per layer, whatever the number of poolings).

        Args:
            layers: timm convention over the recorded layers: ``None`` all, int ``k`` the last
                ``k``, a list of indices (negatives from the end) or names (globs allowed).
            pooling: one recorded pooling, a list of them, or ``"cls+mean"``; default: every
                recorded pooling, in recorded order.
            device: where the result lives (default CPU); blocks are copied there one by one.
            dtype: result dtype.
            flat: return ``(N, L * P, D)`` (layer-major tokens: token ``l * P + p`` is layer
                ``l`` pooled with ``pooling[p]``) even when several poolings are selected.

        Returns:
            ``(N, L, D)`` when one pooling is selected, ``(N, L, P, D)`` when ``P > 1`` are
            (``x[:, l, p]`` is layer ``l`` pooled with ``pooling[p]``; ``x.flatten(1, 2)`` or
            ``flat=True`` gives ``(N, L * P, D)``). ``D`` is the widest selected layer;
            narrower layers are zero-padded on the right.

        Raises:
            ValueError, IndexError: a selection outside the recorded layers or poolings.
        """
        sel, pools = self._selection(layers, pooling)
        width = max(self.dims[j] for j in sel)
        out = _alloc(len(self), len(sel) * len(pools), width, dtype, device, self._padded(sel))
        for s, (_, start, _) in enumerate(self._shards):
            self._read_rows(s, sel, pools, out, start)
        return out if flat else unflatten_poolings(out, len(pools))

    def batches(
        self,
        batch_size: int,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        flat: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stream ``(X, y (b,))`` batches, holding about one shard in memory.

        ``X`` is laid out as :meth:`load`'s result: ``(b, L, D)`` for one pooling,
        ``(b, L, P, D)`` for several, ``(b, L * P, D)`` with ``flat``.

        Every sample appears exactly once per pass; batches have ``batch_size`` rows except the
        last. With ``shuffle``, shards are visited in a random order and rows are shuffled
        within each shard (a block shuffle, deterministic by ``seed``).

        Args:
            batch_size: rows per batch.
            layers: as in :meth:`load`.
            pooling: as in :meth:`load`.
            shuffle: block-shuffle the order.
            seed: seed for ``shuffle``.
            device: where the batches live (default CPU).
            dtype: dtype of ``X``; ``y`` is int64.
            flat: as in :meth:`load`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        sel, pools = self._selection(layers, pooling)
        width = max(self.dims[j] for j in sel)
        gen = torch.Generator().manual_seed(seed)
        order = (
            torch.randperm(len(self._shards), generator=gen).tolist()
            if shuffle
            else list(range(len(self._shards)))
        )
        dev = torch.device(device) if device is not None else torch.device("cpu")
        labels = torch.from_numpy(self.labels)
        buf_x: list[torch.Tensor] = []
        buf_y: list[torch.Tensor] = []
        buffered = 0
        p = 1 if flat else len(pools)
        for s in order:
            _, start, rows = self._shards[s]
            x = _alloc(rows, len(sel) * len(pools), width, dtype, None, self._padded(sel))
            self._read_rows(s, sel, pools, x, 0)
            y = labels[start : start + rows]
            if shuffle:
                perm = torch.randperm(rows, generator=gen)
                x, y = x[perm], y[perm]
            buf_x.append(x)
            buf_y.append(y)
            buffered += rows
            if buffered < batch_size:
                continue
            x_all = buf_x[0] if len(buf_x) == 1 else torch.cat(buf_x)
            y_all = buf_y[0] if len(buf_y) == 1 else torch.cat(buf_y)
            full = (buffered // batch_size) * batch_size
            for b in range(0, full, batch_size):
                xb = unflatten_poolings(x_all[b : b + batch_size], p)
                yield xb.to(dev), y_all[b : b + batch_size].to(dev)
            buf_x, buf_y, buffered = [x_all[full:]], [y_all[full:]], buffered - full
        if buffered:
            yield unflatten_poolings(torch.cat(buf_x), p).to(dev), torch.cat(buf_y).to(dev)


def unflatten_poolings(x: torch.Tensor, n_poolings: int) -> torch.Tensor:
    """``(N, L * P, D)`` layer-major tokens -> ``(N, L, P, D)`` (a view) when ``P > 1``; with
    one pooling ``(N, L, D)`` is returned as it is."""
    return x if n_poolings == 1 else x.unflatten(1, (x.shape[1] // n_poolings, n_poolings))


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _alloc(n: int, t: int, d: int, dtype: torch.dtype, device: Any, padded: bool) -> torch.Tensor:
    """``(n, t, d)`` output buffer: zeros when some layers are narrower (padding), else empty."""
    dev = torch.device(device) if device is not None else None
    return (torch.zeros if padded else torch.empty)(n, t, d, dtype=dtype, device=dev)


def _as_poolings(pooling: str | Sequence[str] | None, recorded: Sequence[str]) -> list[str]:
    """All recorded poolings for ``None``, else :func:`~probekit.cache.poolings.recorded_poolings`."""
    return list(recorded) if pooling is None else recorded_poolings(pooling, recorded)
