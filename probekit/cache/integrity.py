"""Digests of every cache file, checked on the bytes as they are read (never a second pass).

What is protected, and how:

* ``manifest.json`` carries ``manifest_sha256``, the sha256 of its own canonical JSON without
  that key; the file must also be byte-for-byte the JSON the writer produces, so a flipped byte
  anywhere (values, keys, whitespace) is caught when the cache is opened.
* ``texts.json``: its sha256 is ``texts_sha256`` in the manifest.
* ``shards/NNNNNN.json`` (canonical compact JSON, checked byte-for-byte) holds, for its shard:
  ``sha256`` of the whole file (used by :meth:`FeatureCache.verify` and by resume),
  ``header_sha256`` of the safetensors header (its 8-byte length and JSON), and ``tensors``:
  one sha256 per tensor's bytes (every ``<layer>.<pooling>`` block, ``labels`` and ``index``).
  The header and the tensors tile the file, so every byte of a shard is covered, and reading one
  layer hashes only that layer's bytes.

:class:`ShardFile` reads a shard with plain file reads into a buffer, hashes the buffer, and only
then hands the bytes to torch; each tensor is checked the first time this object reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

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


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """sha256 hex of a buffer."""
    return hashlib.sha256(data).hexdigest()


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
    tensors = meta.get("tensors")
    if (
        not isinstance(meta.get("sha256"), str)
        or not isinstance(meta.get("header_sha256"), str)
        or not isinstance(tensors, dict)
        or not all(isinstance(v, str) for v in tensors.values())
    ):
        raise CacheError(f"corrupt shard metadata {where}: digests missing")
    return meta


def shard_digests(data: bytes) -> dict[str, Any]:
    """Digests of a serialised safetensors shard: whole file, header, and each tensor."""
    view = memoryview(data)
    hlen = int.from_bytes(data[:8], "little")
    base = 8 + hlen
    header = json.loads(data[8:base])
    tensors = {
        key: sha256_hex(view[base + e["data_offsets"][0] : base + e["data_offsets"][1]])
        for key, e in header.items()
        if key != "__metadata__"
    }
    return {
        "sha256": sha256_hex(data),
        "header_sha256": sha256_hex(view[:base]),
        "tensors": tensors,
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

    Opening reads (and, with ``verify``, checks) the header only. :meth:`read` reads tensors with
    plain reads into a fresh buffer, hashes each the first time this object reads it, and
    raises :class:`CacheError` naming the file on any mismatch.

    Attributes:
        path: the shard file.
        entries: ``{key: (dtype, shape, begin, end)}`` byte ranges, absolute in the file.
    """

    def __init__(self, path: Path, meta: dict[str, Any], verify: bool = True) -> None:
        """Read and check the header of ``path`` against ``meta`` (its ``.json``)."""
        self.path = path
        self.verify = verify
        self._digests: dict[str, str] = meta["tensors"]
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
        if verify and sha256_hex(bytes(first) + bytes(head)) != meta["header_sha256"]:
            raise CacheError(f"corrupt shard {path}: header fails its sha256 check")
        try:
            header = json.loads(head)
            base = 8 + hlen
            self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
            for key, ent in header.items():
                if key == "__metadata__":
                    continue
                b, end = (int(x) for x in ent["data_offsets"])
                self.entries[key] = (
                    _ST_DTYPES[ent["dtype"]], tuple(ent["shape"]), base + b, base + end
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

    def read(self, keys: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(key, tensor)`` for ``keys``, each checked before it is yielded.

        The file is opened once for all of them; each tensor is a fresh CPU tensor.
        """
        try:
            f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed below, after yields
        except OSError as e:
            raise CacheError(f"cannot read shard {self.path}: {e}") from e
        with f:
            if os.fstat(f.fileno()).st_size != self.size:
                raise CacheError(f"corrupt shard {self.path}: its size changed since it was opened")
            for key in keys:
                dtype, shape, begin, end = self.entries[key]
                buf = bytearray(end - begin)
                f.seek(begin)
                _read_exact(f, buf, self.path)
                if self.verify and key not in self._checked:
                    if sha256_hex(buf) != self._digests[key]:
                        raise CacheError(
                            f"corrupt shard {self.path}: tensor {key!r} fails its sha256 check"
                        )
                    self._checked.add(key)
                if buf:
                    yield key, torch.frombuffer(buf, dtype=dtype).reshape(shape)
                else:
                    yield key, torch.empty(shape, dtype=dtype)
