"""The cache layout: format version, stored dtypes, file names, and the identity's checks.

Layout (``format_version`` 3)::

    CACHE/manifest.json              identity (model, layers [{name, dim}], poolings, dtype,
                                     precision, preprocessing, dataset {name, fingerprint, n,
                                     label_names}), its sha256 ``fingerprint``, shard_size,
                                     n_samples, n_shards, probekit_version, complete,
                                     texts_sha256, ``threads`` (intra-op CPU threads of the
                                     forward passes; not in the fingerprint) and
                                     ``manifest_sha256`` (its own digest)
    CACHE/texts.json                 (text data only) the input strings, by sample position
    CACHE/shards/000000.safetensors  "<layer>.<pooling>" (n, D) per (layer, pooling),
                                     "labels" (n,) int64, "index" (n,) int64 (the sample each
                                     row comes from), and in a unit cache "position" (n,) int64
    CACHE/shards/000000.json         {"sha256" (whole file), "header_xxh3", "tensors_xxh3":
                                     {key: XXH3-128 hex}, "n", "start", "numerics": {"device",
                                     "precision", "threads"} (what computed it; absent in
                                     caches of older versions)}, written after the shard

A **unit cache** (``unit`` ``"word"`` or ``"token"`` in the identity) has one row per word or
sub-word token: a shard holds ``shard_size`` whole inputs, so its row count varies and the
manifest lists them (``shard_rows``; ``n_samples`` is the total of rows, ``n_inputs`` the number
of inputs). Without ``shard_rows`` every shard holds ``shard_size`` rows.

Format 3 checks reads with XXH3-128 per tensor (format 2 used sha256); older caches are refused
with a message to re-extract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CacheError

FORMAT_VERSION = 3
DEFAULT_SHARD_SIZE = 4096

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Keys the writer owns; everything else in the caller's manifest (except "info") is identity.
_DERIVED_KEYS = (
    "format_version",
    "fingerprint",
    "shard_size",
    "n_samples",
    "n_shards",
    "probekit_version",
    "complete",
    "manifest_sha256",
    "texts_sha256",
    "shard_rows",
    "n_inputs",
)
# stored, never compared: "info" free-form notes (timings, host); "threads" the intra-op CPU thread
# count every later writer of the cache computes with (so 1 process and N ranks agree bitwise)
_UNHASHED_KEYS = ("info", "threads")


def _validate_identity(manifest: dict[str, Any]) -> None:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise CacheError("manifest needs 'layers': a non-empty list of {'name': str, 'dim': int}")
    seen = set()
    for entry in layers:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or not isinstance(entry.get("dim"), int)
            or entry["dim"] <= 0
        ):
            raise CacheError(f"bad layer entry {entry!r}; expected {{'name': str, 'dim': int > 0}}")
        if entry["name"] in seen:
            raise CacheError(f"layer {entry['name']!r} listed twice")
        seen.add(entry["name"])
    pools = manifest.get("poolings")
    if (
        not isinstance(pools, list)
        or not pools
        or len(set(pools)) != len(pools)
        or not all(isinstance(p, str) and p and "." not in p for p in pools)
    ):
        raise CacheError(f"manifest needs 'poolings': distinct names without dots, got {pools!r}")
    if manifest.get("dtype") not in _DTYPES:
        raise CacheError(f"dtype must be one of {list(_DTYPES)}, got {manifest.get('dtype')!r}")
    for p in pools:
        for entry in layers:
            if f"{entry['name']}.{p}" in ("labels", "index", "position"):
                raise CacheError("'labels', 'index' and 'position' are reserved tensor names")


def shard_bounds(manifest: dict[str, Any], i: int) -> tuple[int, int]:
    """Rows ``(start, stop)`` of shard ``i``: fixed ``shard_size`` rows, or a unit cache's
    ``shard_rows``."""
    rows = manifest.get("shard_rows")
    if rows is not None:
        start = int(sum(rows[:i]))
        return start, start + int(rows[i])
    size, n = int(manifest["shard_size"]), int(manifest["n_samples"])
    return i * size, min((i + 1) * size, n)


def shard_paths(path: Path, i: int) -> tuple[Path, Path]:
    """``(shard file, its .json)`` of shard ``i`` in the cache at ``path``."""
    d = path / "shards"
    return d / f"{i:06d}.safetensors", d / f"{i:06d}.json"
