"""Digests of every cache file, checked on the bytes as they are read (never a second pass).

What is protected, and how:

* ``manifest.json`` carries ``manifest_sha256``, the sha256 of its own canonical JSON without
  that key; the file must also be byte-for-byte the JSON the writer produces, so a flipped byte
  anywhere (values, keys, whitespace) is caught when the cache is opened.
* ``texts.json``: its sha256 is ``texts_sha256`` in the manifest.
* ``shards/NNNNNN.json`` (canonical compact JSON, checked byte-for-byte) holds, for its shard:
  ``sha256`` of the whole file (provenance; checked by :meth:`FeatureCache.verify` and by
  resume), ``header_xxh3`` (XXH3-128 of the safetensors header: its 8-byte length and JSON) and
  ``tensors_xxh3``: one XXH3-128 per tensor's bytes (every ``<layer>.<pooling>`` block,
  ``labels`` and ``index``). The header and the tensors tile the file, so every byte of a shard
  is covered, and reading one layer hashes only that layer's bytes.

The read path uses XXH3-128 (the ``xxhash`` package) rather than sha256: it detects accidental
damage (flipped bits, torn or truncated writes, a shard swapped with another) as surely, at
several GB/s instead of about 0.4 GB/s, which is what keeps checked reads close to unchecked
ones. It is not a defence against someone who forges a file on purpose; the whole-file sha256
in each shard's ``.json`` remains for that kind of provenance check (:meth:`FeatureCache.verify`).

:class:`ShardFile` reads a shard with plain file reads, in chunks of about 1 MiB, into a buffer
that is hashed and copied on while it is still in the CPU cache; each tensor is checked the
first time this object reads it, and a mismatch raises before the read returns.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import xxhash

from ..errors import CacheError
from .files import _canonical

MANIFEST_DIGEST = "manifest_sha256"
TEXTS_DIGEST = "texts_sha256"

_ST_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
}


_NP = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.float64: np.float64,
    torch.int64: np.int64,
}
#: (stored, destination) dtypes that numpy converts exactly as torch does (same or widening)
_EXACT_NUMPY = {(a, a) for a in _NP} | {
    (torch.float16, torch.float32),
    (torch.float16, torch.float64),
    (torch.float32, torch.float64),
}


#: Shard metadata keys of the read-path digests (XXH3-128 hex).
HEADER_DIGEST = "header_xxh3"
TENSOR_DIGESTS = "tensors_xxh3"
_CHUNK = 1 << 20  # bytes per read: big enough for few syscalls, small enough to stay in cache


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """sha256 hex of a buffer."""
    return hashlib.sha256(data).hexdigest()


def xxh3_hex(data: bytes | bytearray | memoryview) -> str:
    """XXH3-128 hex of a buffer (no copy: any object with the buffer protocol)."""
    return xxhash.xxh3_128_hexdigest(data)


# ----------------------------------------------------------------------------- manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest as written: indented JSON with its own digest as the last key."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    body[MANIFEST_DIGEST] = sha256_hex(_canonical(body))
    return (json.dumps(body, indent=2, allow_nan=False) + "\n").encode()


def parse_manifest(raw: bytes, where: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` bytes and check its digest and exact form.

    Raises:
        CacheError: naming ``where`` when the bytes are not what the writer wrote.
    """
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise CacheError(f"corrupt manifest.json in {where}: {e}") from e
    if not isinstance(manifest, dict):
        raise CacheError(f"corrupt manifest.json in {where}: not a JSON object")
    digest = manifest.get(MANIFEST_DIGEST)
    if not isinstance(digest, str):
        raise CacheError(
            f"corrupt manifest.json in {where}: no {MANIFEST_DIGEST} (written by an older "
            "probekit, or edited); re-extract into a new folder"
        )
    if manifest_bytes(manifest) != raw:
        raise CacheError(
            f"corrupt manifest.json in {where}: its content does not match its "
            f"{MANIFEST_DIGEST} (the file was altered)"
        )
    return manifest


# ----------------------------------------------------------------------------- shard metadata


def shard_meta_bytes(meta: dict[str, Any]) -> bytes:
    """A shard's ``.json`` as written: canonical compact JSON and a newline."""
    return _canonical(meta) + b"\n"


def parse_shard_meta(raw: bytes, where: Path) -> dict[str, Any]:
    """Parse a shard's ``.json``; it must be exactly what the writer wrote.

    Raises:
        CacheError: naming ``where``.
    """
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CacheError(f"corrupt shard metadata {where}: {e}") from e
    if not isinstance(meta, dict) or shard_meta_bytes(meta) != raw:
        raise CacheError(f"corrupt shard metadata {where}: not the JSON the writer wrote")
    tensors = meta.get(TENSOR_DIGESTS)
    if (
        not isinstance(meta.get("sha256"), str)
        or not isinstance(meta.get(HEADER_DIGEST), str)
        or not isinstance(tensors, dict)
        or not all(isinstance(v, str) for v in tensors.values())
    ):
        raise CacheError(f"corrupt shard metadata {where}: digests missing")
    return meta


def shard_digests(data: bytes) -> dict[str, Any]:
    """Digests of a serialised safetensors shard: whole-file sha256, header and tensor XXH3-128."""
    view = memoryview(data)
    hlen = int.from_bytes(data[:8], "little")
    base = 8 + hlen
    header = json.loads(data[8:base])
    tensors = {
        key: xxh3_hex(view[base + e["data_offsets"][0] : base + e["data_offsets"][1]])
        for key, e in header.items()
        if key != "__metadata__"
    }
    return {
        "sha256": sha256_hex(data),
        HEADER_DIGEST: xxh3_hex(view[:base]),
        TENSOR_DIGESTS: tensors,
    }


# ----------------------------------------------------------------------------- shard reader


def _read_exact(f: BinaryIO, buf: bytearray | memoryview, where: Path) -> None:
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise CacheError(f"corrupt shard {where}: truncated ({got} of {len(view)} bytes read)")
        got += n


class ShardFile:
    """One safetensors shard, read with digest checks.

    Opening reads (and, with ``verify``, checks) the header only. :meth:`read` (fresh tensors)
    and :meth:`read_into` (into caller's tensors) read with plain file reads, hash each tensor
    the first time this object reads it (XXH3-128 of the bytes just read, no copy for hashing),
    and raise :class:`CacheError` naming the file on any mismatch.

    Attributes:
        path: the shard file.
        entries: ``{key: (dtype, shape, begin, end)}`` byte ranges, absolute in the file.
    """

    def __init__(self, path: Path, meta: dict[str, Any], verify: bool = True) -> None:
        """Read and check the header of ``path`` against ``meta`` (its ``.json``)."""
        self.path = path
        self.verify = verify
        self._digests: dict[str, str] = meta[TENSOR_DIGESTS]
        self._checked: set[str] = set()
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                first = bytearray(8)
                _read_exact(f, first, path)
                hlen = int.from_bytes(first, "little")
                if hlen <= 0 or 8 + hlen > size:
                    raise CacheError(f"corrupt shard {path}: bad header length {hlen}")
                head = bytearray(hlen)
                _read_exact(f, head, path)
        except OSError as e:
            raise CacheError(f"cannot read shard {path}: {e}") from e
        if verify:
            h = xxhash.xxh3_128(first)
            h.update(head)
            if h.hexdigest() != meta[HEADER_DIGEST]:
                raise CacheError(
                    f"corrupt shard {path}: header fails its xxh3-128 check (the file no longer "
                    "matches the sha256 in its .json)"
                )
        try:
            header = json.loads(head)
            base = 8 + hlen
            self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
            for key, ent in header.items():
                if key == "__metadata__":
                    continue
                b, end = (int(x) for x in ent["data_offsets"])
                self.entries[key] = (
                    _ST_DTYPES[ent["dtype"]],
                    tuple(ent["shape"]),
                    base + b,
                    base + end,
                )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CacheError(f"corrupt shard {path}: unreadable header ({e})") from e
        self.size = size
        end = max((e[3] for e in self.entries.values()), default=8 + hlen)
        if end != size:
            raise CacheError(f"corrupt shard {path}: {size} bytes on disk, header describes {end}")
        if set(self.entries) != set(self._digests):
            raise CacheError(f"corrupt shard {path}: tensors do not match its .json")

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of tensor ``key``."""
        return self.entries[key][1]

    def _open(self) -> BinaryIO:
        try:
            f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - the callers close it
        except OSError as e:
            raise CacheError(f"cannot read shard {self.path}: {e}") from e
        if os.fstat(f.fileno()).st_size != self.size:
            f.close()
            raise CacheError(f"corrupt shard {self.path}: its size changed since it was opened")
        return f

    def _mismatch(self, key: str) -> CacheError:
        return CacheError(
            f"corrupt shard {self.path}: tensor {key!r} fails its xxh3-128 check (the file no "
            "longer matches the sha256 in its .json)"
        )

    def read(self, keys: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(key, tensor)`` for ``keys``, each checked before it is yielded.

        The file is opened once for all of them; each tensor is a fresh CPU tensor, read straight
        into its own storage (no intermediate buffer).
        """
        with self._open() as f:
            for key in keys:
                dtype, shape, begin, end = self.entries[key]
                out = torch.empty(shape, dtype=dtype)
                if end > begin:
                    view = memoryview(out.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
                    f.seek(begin)
                    _read_exact(f, view, self.path)
                    if self.verify and key not in self._checked:
                        if xxh3_hex(view) != self._digests[key]:
                            raise self._mismatch(key)
                        self._checked.add(key)
                yield key, out

    def read_into(self, items: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Copy each tensor ``key`` into ``dest`` (same shape; any dtype, strides or device).

        Reads about 1 MiB at a time into one reused buffer, hashes it (the first time this object
        reads ``key``) and copies it on while it is still in the CPU cache. A mismatch raises
        after the block is read, so a caller that lets the error propagate never returns it.

        Args:
            items: ``(key, dest)`` pairs; ``dest`` is ``(n, D)`` for a ``(n, D)`` tensor.
        """
        buf = bytearray(_CHUNK)
        with self._open() as f:
            for key, dest in items:
                dtype, shape, begin, end = self.entries[key]
                if tuple(dest.shape) != shape:
                    raise ValueError(f"{key}: destination {tuple(dest.shape)}, stored {shape}")
                if end == begin:
                    continue
                check = self.verify and key not in self._checked
                h = xxhash.xxh3_128() if check else None
                row_bytes = (end - begin) // shape[0]
                step = max(1, _CHUNK // row_bytes)
                # numpy copies into a CPU destination (exact conversions only): torch's copy_
                # into a strided view pays for its thread pool on every 1 MiB chunk
                np_dest = (
                    dest.numpy()
                    if dest.device.type == "cpu" and (dtype, dest.dtype) in _EXACT_NUMPY
                    else None
                )
                f.seek(begin)
                for r0 in range(0, shape[0], step):
                    r1 = min(shape[0], r0 + step)
                    view = memoryview(buf)[: (r1 - r0) * row_bytes]
                    _read_exact(f, view, self.path)
                    if h is not None:
                        h.update(view)
                    if np_dest is not None:
                        src = np.frombuffer(view, dtype=_NP[dtype]).reshape(r1 - r0, *shape[1:])
                        np_dest[r0:r1] = src
                        del src  # release the buffer export before the next read into it
                        continue
                    block = torch.frombuffer(view, dtype=dtype).view((r1 - r0, *shape[1:]))
                    dest[r0:r1].copy_(block)
                    del block  # release the buffer export before the next read into it
                if h is not None:
                    if h.hexdigest() != self._digests[key]:
                        raise self._mismatch(key)
                    self._checked.add(key)
