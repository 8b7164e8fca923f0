"""Writing a feature cache: :class:`CacheWriter` (atomic shards, resume, identity checks).

Every file is written to a temporary name in its own folder, fsynced and renamed into place, so a
crash never leaves a half file that looks whole; a shard counts as written only once its ``.json``
exists and its checksum matches. Shards are numbered globally (shard ``i`` holds samples
``i * shard_size`` to ``(i + 1) * shard_size``), so several processes can write disjoint shards of
one cache. Re-running with the same settings resumes (only missing or corrupt shards are written
again); a finished cache is reused; a cache made with other settings is refused with
:class:`CacheMismatchError` and left untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as st_save

from ..errors import CacheError, CacheMismatchError
from . import files
from .files import TMP_MARK, _canonical, _first_difference, _probekit_version, _short
from .integrity import (
    TEXTS_DIGEST,
    manifest_bytes,
    parse_manifest,
    parse_shard_meta,
    sha256_hex,
    shard_digests,
    shard_meta_bytes,
)
from .layout import (
    _DERIVED_KEYS,
    _DTYPES,
    _UNHASHED_KEYS,
    DEFAULT_SHARD_SIZE,
    FORMAT_VERSION,
    _validate_identity,
    shard_bounds,
    shard_paths,
)
from .reader import FeatureCache

__all__ = ["CacheWriter", "DEFAULT_SHARD_SIZE", "FORMAT_VERSION"]


def _check_rows(
    shard_rows: Sequence[int] | None, n_samples: int, ident: dict[str, Any]
) -> tuple[list[int] | None, int]:
    """A unit cache's rows per shard, checked, and its number of inputs (else ``n_samples``)."""
    if shard_rows is None:
        return None, n_samples
    rows = [int(r) for r in shard_rows]
    if sum(rows) != n_samples or min(rows, default=-1) < 0:
        raise CacheError(f"shard_rows {rows[:5]}... must be >= 0 and add up to {n_samples}")
    return rows, int((ident.get("dataset") or {}).get("n", n_samples))


class CacheWriter:
    """Writes (or resumes writing) one cache; several writers may fill disjoint shards.

    Create it with :meth:`create`. Attributes: ``path``, ``manifest`` (as on disk),
    ``fingerprint``, ``n_samples``, ``shard_size``, ``n_shards``, ``keys`` (the tensor names
    every shard holds, layer-major), ``complete``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        """Use :meth:`create`."""
        self.path = path
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.n_samples: int = manifest["n_samples"]
        self.shard_size: int = manifest["shard_size"]
        self.n_shards: int = manifest["n_shards"]
        self.dims = {e["name"]: e["dim"] for e in manifest["layers"]}
        self.keys = [f"{e['name']}.{p}" for e in manifest["layers"] for p in manifest["poolings"]]
        self._dtype = _DTYPES[manifest["dtype"]]

    @property
    def complete(self) -> bool:
        """Whether the manifest on disk says the cache is finished."""
        return bool(self.manifest.get("complete"))

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        manifest: dict[str, Any],
        n_samples: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        texts: Sequence[str] | None = None,
        shard_rows: Sequence[int] | None = None,
    ) -> CacheWriter:
        """Start a cache at ``path``, or resume/reuse the one there if it has the same identity.

        Args:
            path: the cache folder (created if missing).
            manifest: the identity of the features, JSON-serialisable: ``layers``
                ``[{"name": str, "dim": int}, ...]`` (in recorded order), ``poolings``
                ``["cls", ...]``, ``dtype`` (``"float32"`` default, ``"float16"``,
                ``"bfloat16"``; a ``torch.dtype`` is accepted), and usually ``model``,
                ``precision``, ``preprocessing``, ``dataset`` ``{name, fingerprint, n,
                label_names}``. All of it except an optional free-form ``info`` entry and
                ``threads`` (the intra-op thread count to compute with) goes into the
                fingerprint; an existing cache keeps its own ``info`` and ``threads``.
            n_samples: number of samples (rows) the cache will hold.
            shard_size: samples per shard; an existing cache keeps its own shard size.
            texts: the input strings by sample position (text data), saved as ``texts.json``.
            shard_rows: a unit cache's rows per shard (each shard holds ``shard_size`` whole
                inputs; ``n_samples`` is then the total of rows and ``texts`` has one entry per
                input). Derived from the identity, so not part of the fingerprint.

        Returns:
            A writer. ``missing_shards()`` lists what is left to write (nothing for a finished
            cache, whose ``complete`` is True).

        Raises:
            CacheMismatchError: ``path`` holds a cache with another fingerprint (the message
                names the first field that differs); nothing is touched.
            CacheError: ``path`` is a non-empty folder that is not a cache, its manifest is
                corrupt, or the arguments are invalid.
        """
        path = Path(path)
        ident = cls._identity(manifest, n_samples)
        fingerprint = hashlib.sha256(_canonical(ident)).hexdigest()
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise CacheError(f"shard_size must be a positive int, got {shard_size!r}")
        shard_rows, n_inputs = _check_rows(shard_rows, int(n_samples), ident)
        if texts is not None and len(texts) != n_inputs:
            raise CacheError(f"texts has {len(texts)} entries for {n_inputs} inputs")
        if path.exists() and not path.is_dir():
            raise CacheError(f"{path} exists and is not a folder")
        mpath = path / "manifest.json"
        if mpath.exists():
            existing = _read_manifest(path, hint="; delete the folder or use another path")
            old_fp = existing.get("fingerprint") if isinstance(existing, dict) else None
            if old_fp != fingerprint:
                raise CacheMismatchError(cls._mismatch_message(path, existing, ident))
            writer = cls(path, existing)
            tpath = path / "texts.json"
            if texts is not None and (
                not tpath.is_file() or sha256_hex(tpath.read_bytes()) != existing.get(TEXTS_DIGEST)
            ):  # missing or damaged: the same identity means the same texts, so write them again
                files._atomic_write(tpath, _texts_bytes(texts))
            (path / "shards").mkdir(exist_ok=True)
            return writer
        if path.is_dir():
            foreign = [
                p.name
                for p in path.iterdir()
                # manifest.json may appear here if another process created the cache meanwhile
                if p.name not in ("shards", "texts.json", "manifest.json")
                and TMP_MARK not in p.name
            ]
            if foreign:
                raise CacheError(
                    f"{path} is not empty and is not a probekit cache "
                    f"(found {sorted(foreign)[:5]}); use an empty or new folder"
                )
        order = ["model", "layers", "poolings", "dtype", "precision", "preprocessing", "dataset"]
        full: dict[str, Any] = {"format_version": FORMAT_VERSION}
        full.update({k: ident[k] for k in order if k in ident})
        full.update({k: v for k, v in ident.items() if k not in full})
        for key in _UNHASHED_KEYS:
            if key in manifest:
                full[key] = json.loads(_canonical(manifest[key]))
        full.update(
            fingerprint=fingerprint,
            shard_size=shard_size,
            n_samples=int(n_samples),
            n_shards=-(-int(n_samples) // shard_size) if shard_rows is None else len(shard_rows),
            probekit_version=_probekit_version(),
            complete=False,
        )
        if shard_rows is not None:
            full.update(shard_rows=shard_rows, n_inputs=n_inputs)
        path.mkdir(parents=True, exist_ok=True)
        (path / "shards").mkdir(exist_ok=True)
        if texts is not None:
            data = _texts_bytes(texts)
            files._atomic_write(path / "texts.json", data)
            full[TEXTS_DIGEST] = sha256_hex(data)
        # Written last: its presence means "this folder is this cache". Two processes starting
        # together write the same content; the rename makes either result whole.
        files._atomic_write(mpath, manifest_bytes(full))
        existing = _read_manifest(path, hint="; delete the folder or use another path")
        if existing.get("fingerprint") != fingerprint:  # lost a race against other settings
            raise CacheMismatchError(cls._mismatch_message(path, existing, ident))
        return cls(path, existing)

    @staticmethod
    def _identity(manifest: dict[str, Any], n_samples: int) -> dict[str, Any]:
        if not isinstance(manifest, dict):
            raise CacheError(f"manifest must be a dict, got {type(manifest).__name__}")
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or n_samples < 1
        ):
            raise CacheError(
                f"n_samples must be a positive int, got {n_samples!r} (an empty cache is refused)"
            )
        ident = {
            k: v for k, v in manifest.items() if k not in _UNHASHED_KEYS and k not in _DERIVED_KEYS
        }
        dtype = ident.get("dtype", "float32")
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        ident["dtype"] = dtype
        try:
            ident = json.loads(_canonical(ident))
        except (TypeError, ValueError) as e:
            raise CacheError(f"manifest must be JSON-serialisable: {e}") from e
        _validate_identity(ident)
        ident["format_version"] = FORMAT_VERSION
        ident["n_samples"] = int(n_samples)
        return ident

    @staticmethod
    def _mismatch_message(path: Path, existing: Any, ident: dict[str, Any]) -> str:
        if not isinstance(existing, dict):
            return f"{path} holds a manifest.json that is not a probekit manifest"
        old = {
            k: v
            for k, v in existing.items()
            if k not in _UNHASHED_KEYS and (k not in _DERIVED_KEYS or k in ident)
        }
        priority = [
            "model",
            "layers",
            "poolings",
            "dtype",
            "precision",
            "preprocessing",
            "dataset",
            "n_samples",
            "format_version",
        ]
        fields = priority + sorted((set(old) | set(ident)) - set(priority), key=str)
        diffs = [
            d
            for k in fields
            if (d := _first_difference({k: old.get(k, "<absent>")}, {k: ident.get(k, "<absent>")}))
            is not None
        ]
        if not diffs:
            return (
                f"the cache at {path} was made with other settings (its fingerprint "
                f"differs); use another path or delete that cache"
            )
        field, was, now = diffs[0]
        more = (
            f" (and {len(diffs) - 1} more: {', '.join(d[0] for d in diffs[1:4])})"
            if len(diffs) > 1
            else ""
        )
        return (
            f"the cache at {path} was made with other settings: {field} is {_short(was)} "
            f"there but {_short(now)} here{more}; use another path or delete that cache"
        )

    def shard_range(self, i: int) -> tuple[int, int]:
        """Sample positions ``(start, stop)`` that shard ``i`` holds."""
        if not 0 <= i < self.n_shards:
            raise IndexError(f"shard {i} out of range (0..{self.n_shards - 1})")
        return shard_bounds(self.manifest, i)

    def _shard_paths(self, i: int) -> tuple[Path, Path]:
        return shard_paths(self.path, i)

    def shard_ok(self, i: int, verify: bool = True) -> bool:
        """Whether shard ``i`` is fully written (its ``.json`` exists, is intact and, with
        ``verify``, the shard's sha256 matches it)."""
        st, js = self._shard_paths(i)
        if not (st.is_file() and js.is_file()):
            return False
        try:
            meta = parse_shard_meta(js.read_bytes(), js)
        except (OSError, CacheError):
            return False
        start, stop = self.shard_range(i)
        if meta.get("n") != stop - start or meta.get("start") != start:
            return False
        return not verify or meta["sha256"] == _sha256_file(st)

    def missing_shards(self, verify: bool = True) -> list[int]:
        """Shard ids still to write: no ``.json``, or (``verify``) a checksum that fails."""
        return [i for i in range(self.n_shards) if not self.shard_ok(i, verify=verify)]

    def write_shard(
        self,
        i: int,
        tensors: dict[str, torch.Tensor | np.ndarray],
        labels: torch.Tensor | np.ndarray | Sequence[int],
        index: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        position: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        numerics: dict[str, Any] | None = None,
    ) -> str:
        """Write shard ``i`` atomically: temp file, fsync, rename; then its ``.json``.

        Safe to call from a background thread (one call per shard id at a time). Rewriting a
        shard of a finished cache (a repair) marks it unfinished until :meth:`finalize`.

        Args:
            i: shard id; it holds samples ``shard_range(i)``, ``n = stop - start`` rows.
            tensors: one ``(n, dim)`` tensor per key in ``self.keys`` (``"<layer>.<pooling>"``),
                on any device; cast to the manifest dtype.
            labels: ``(n,)`` class indices.
            index: ``(n,)`` sample positions in the dataset; default ``arange(start, stop)``.
                In a unit cache: the sample each row comes from.
            position: ``(n,)`` a unit cache's word or token index of each row in its sample
                (required there, refused elsewhere).
            numerics: how the shard was computed (JSON, e.g. ``{"device": "cpu", "precision":
                "bf16", "threads": 4}``), stored in its ``.json``; :meth:`shard_numerics`
                reads it back.

        Returns:
            The shard's sha256 hex.

        Raises:
            CacheError: a missing/extra key or a wrong shape.
        """
        start, stop = self.shard_range(i)
        n = stop - start
        extra = sorted(set(tensors) - set(self.keys))
        missing = [k for k in self.keys if k not in tensors]
        if extra or missing:
            raise CacheError(
                f"shard {i}: missing tensors {missing[:5]}, unexpected {extra[:5]}; "
                f"expected {self.keys[:4]}{'...' if len(self.keys) > 4 else ''}"
            )
        out: dict[str, torch.Tensor] = {}
        for key in self.keys:
            t = torch.as_tensor(tensors[key]).detach()
            dim = self.dims[key.rsplit(".", 1)[0]]
            if tuple(t.shape) != (n, dim):
                raise CacheError(
                    f"shard {i}: {key} has shape {tuple(t.shape)}, expected ({n}, {dim})"
                )
            out[key] = t.to(device="cpu", dtype=self._dtype).contiguous()
        columns: list[tuple[str, Any]] = [
            ("labels", labels),
            ("index", torch.arange(start, stop) if index is None else index),
        ]
        if (position is None) != (self.manifest.get("unit", "sample") == "sample"):
            raise CacheError(f"shard {i}: a unit cache's shards, and only they, take position")
        if position is not None:
            columns.append(("position", position))
        for name, value in columns:
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
            t = t.detach().to(device="cpu", dtype=torch.int64).reshape(-1).contiguous()
            if t.shape[0] != n:
                raise CacheError(f"shard {i}: {name} has {t.shape[0]} entries, expected {n}")
            out[name] = t
        # one metadata entry: safetensors writes several in hash-map order, which varies between
        # processes, and a shard must come out byte-for-byte the same every time
        info = {"format": "probekit", "fingerprint": self.fingerprint, "shard": i, "start": start}
        data = st_save(out, metadata={"probekit": _canonical(info).decode()})
        meta = dict(shard_digests(data), n=n, start=start)
        if numerics is not None:
            meta["numerics"] = json.loads(_canonical(numerics))
        st, js = self._shard_paths(i)
        if self.complete:  # repairing a finished cache: it is unfinished until finalize() again
            self.manifest = dict(self.manifest, complete=False)
            files._atomic_write(self.path / "manifest.json", manifest_bytes(self.manifest))
        js.unlink(missing_ok=True)
        try:
            files._atomic_write(st, data)
            files.kill_point("shard-renamed")
            files._atomic_write(js, shard_meta_bytes(meta))
        except OSError as e:
            # the temporary file is gone; a shard without its .json counts as missing
            js.unlink(missing_ok=True)
            raise CacheError(
                f"cannot write shard {st}: {e.strerror or e}; free space (or fix the folder) "
                "and re-run to resume"
            ) from e
        return str(meta["sha256"])

    def shard_numerics(self) -> dict[int, dict[str, Any] | None]:
        """``{shard id: its recorded numerics}`` for every written shard (``None``: written by a
        version that did not record them)."""
        out: dict[int, dict[str, Any] | None] = {}
        for i in range(self.n_shards):
            js = self._shard_paths(i)[1]
            try:
                meta = parse_shard_meta(js.read_bytes(), js)
            except (OSError, CacheError):
                continue
            numerics = meta.get("numerics")
            out[i] = numerics if isinstance(numerics, dict) else None
        return out

    def finalize(self) -> FeatureCache:
        """Check every shard (presence and checksum), mark the manifest complete, open it.

        Call it once, after every writer is done (with several processes: one rank, after a
        barrier). Leftover temporary files (from crashed writers) are removed.

        Raises:
            CacheError: some shards are missing or corrupt (their ids are listed).
        """
        missing = self.missing_shards(verify=True)
        if missing:
            raise CacheError(
                f"cannot finalize {self.path}: {len(missing)} of {self.n_shards} "
                f"shards missing or corrupt: {missing[:10]}"
            )
        if not self.complete:
            manifest = dict(self.manifest, complete=True)
            files.kill_point("finalize")
            files._atomic_write(self.path / "manifest.json", manifest_bytes(manifest))
            self.manifest = parse_manifest(manifest_bytes(manifest), self.path)
        for folder in (self.path, self.path / "shards"):
            for p in folder.iterdir():
                if TMP_MARK in p.name and p.is_file():
                    p.unlink(missing_ok=True)
        return FeatureCache.open(self.path)


def _texts_bytes(texts: Sequence[str]) -> bytes:
    return (json.dumps([str(t) for t in texts], indent=2, allow_nan=False) + "\n").encode()


def _read_manifest(path: Path, hint: str = "") -> Any:
    """The checked manifest of the cache at ``path``."""
    mpath = path / "manifest.json"
    try:
        raw = mpath.read_bytes()
    except OSError as e:
        raise CacheError(f"cannot read {mpath}: {e}{hint}") from e
    try:
        return parse_manifest(raw, path)
    except CacheError as e:
        raise CacheError(f"{e}{hint}") from e


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
