"""The on-disk feature cache: pooled layer features in safetensors shards plus a JSON manifest.

Layout (``format_version`` 1)::

    CACHE/manifest.json              identity (model, layers [{name, dim}], poolings, dtype,
                                     precision, preprocessing, dataset {name, fingerprint, n,
                                     label_names}), its sha256 ``fingerprint``, shard_size,
                                     n_samples, n_shards, probekit_version, complete
    CACHE/texts.json                 (text data only) the input strings, by sample position
    CACHE/shards/000000.safetensors  "<layer>.<pooling>" (n, D) per (layer, pooling),
                                     "labels" (n,) int64, "index" (n,) int64
    CACHE/shards/000000.json         {"sha256": ..., "n": ..., "start": ...}, written after the shard

Writing (:class:`CacheWriter`): every file is written to a temporary name in its own folder,
fsynced and renamed into place, so a crash never leaves a half file that looks whole; a shard
counts as written only once its ``.json`` exists and its checksum matches. Shards are numbered
globally (shard ``i`` holds samples ``i * shard_size`` to ``(i + 1) * shard_size``), so several
processes can write disjoint shards of one cache. Re-running with the same settings resumes
(only missing or corrupt shards are written again); a finished cache is reused; a cache made with
other settings is refused with :class:`CacheMismatchError` and left untouched.

Reading (:class:`FeatureCache`): shards are opened with ``safetensors.safe_open`` (memory-mapped),
so reading one layer touches only that layer's bytes.

Example:
    >>> writer = CacheWriter.create(path, manifest, n_samples=len(data))  # doctest: +SKIP
    >>> for i in writer.missing_shards():                                  # doctest: +SKIP
    ...     start, stop = writer.shard_range(i)
    ...     writer.write_shard(i, {"layers.0.cls": x0, ...}, labels[start:stop])
    >>> cache = writer.finalize()                                          # doctest: +SKIP
    >>> X = cache.load(layers=-1, pooling="cls")                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from .errors import CacheError, CacheMismatchError
from .layers import resolve_indices
from .pooling import expand_poolings

__all__ = ["CacheError", "CacheMismatchError", "CacheWriter", "FeatureCache", "FORMAT_VERSION"]

FORMAT_VERSION = 1
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
)
_UNHASHED_KEYS = ("info",)  # free-form notes (timings, host): stored, never compared
_TMP_MARK = ".tmp-"


# ----------------------------------------------------------------------------- file helpers


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, (Path, torch.dtype)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _canonical(obj: Any) -> bytes:
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        default=_json_default,
    ).encode()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a unique temporary file in the same folder, fsync, rename."""
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _probekit_version() -> str:
    mod = sys.modules.get("probekit")
    version = getattr(mod, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import version as _v

        return _v("probekit")
    except Exception:  # noqa: BLE001 - not installed: still write a cache
        return "unknown"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """Dotted path and values of the first difference between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                return sub, old.get(k, "<absent>"), new.get(k, "<absent>")
            d = _first_difference(old[k], new[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for j, (a, b) in enumerate(zip(old, new, strict=True)):
            d = _first_difference(a, b, f"{prefix}[{j}]")
            if d is not None:
                return d
        return None
    return None if old == new else (prefix or "<manifest>", old, new)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _alloc(n: int, t: int, d: int, dtype: torch.dtype, device: Any, padded: bool) -> torch.Tensor:
    """``(n, t, d)`` output buffer: zeros when some layers are narrower (padding), else empty."""
    dev = torch.device(device) if device is not None else None
    return (torch.zeros if padded else torch.empty)(n, t, d, dtype=dtype, device=dev)


def _as_poolings(pooling: str | Sequence[str] | None, recorded: Sequence[str]) -> list[str]:
    """All recorded poolings for ``None``, else :func:`~probekit.pooling.expand_poolings`."""
    return list(recorded) if pooling is None else expand_poolings(pooling, recorded=recorded)


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
            if f"{entry['name']}.{p}" in ("labels", "index"):
                raise CacheError("'labels' and 'index' are reserved tensor names")


# ----------------------------------------------------------------------------- writer


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
    ) -> CacheWriter:
        """Start a cache at ``path``, or resume/reuse the one there if it has the same identity.

        Args:
            path: the cache folder (created if missing).
            manifest: the identity of the features, JSON-serialisable: ``layers``
                ``[{"name": str, "dim": int}, ...]`` (in recorded order), ``poolings``
                ``["cls", ...]``, ``dtype`` (``"float32"`` default, ``"float16"``,
                ``"bfloat16"``; a ``torch.dtype`` is accepted), and usually ``model``,
                ``precision``, ``preprocessing``, ``dataset`` ``{name, fingerprint, n,
                label_names}``. All of it except an optional free-form ``info`` entry goes into
                the fingerprint.
            n_samples: number of samples (rows) the cache will hold.
            shard_size: samples per shard; an existing cache keeps its own shard size.
            texts: the input strings by sample position (text data), saved as ``texts.json``.

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
        if texts is not None and len(texts) != n_samples:
            raise CacheError(f"texts has {len(texts)} entries for {n_samples} samples")
        if path.exists() and not path.is_dir():
            raise CacheError(f"{path} exists and is not a folder")
        mpath = path / "manifest.json"
        if mpath.exists():
            try:
                existing = _read_json(mpath)
            except (OSError, ValueError) as e:
                raise CacheError(
                    f"{path} has a corrupt manifest.json ({e}); delete the folder "
                    "or use another path"
                ) from e
            old_fp = existing.get("fingerprint") if isinstance(existing, dict) else None
            if old_fp != fingerprint:
                raise CacheMismatchError(cls._mismatch_message(path, existing, ident))
            writer = cls(path, existing)
            if texts is not None and not (path / "texts.json").exists():
                _write_json(path / "texts.json", list(texts))
            (path / "shards").mkdir(exist_ok=True)
            return writer
        if path.is_dir():
            foreign = [
                p.name
                for p in path.iterdir()
                # manifest.json may appear here if another process created the cache meanwhile
                if p.name not in ("shards", "texts.json", "manifest.json")
                and _TMP_MARK not in p.name
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
        if "info" in manifest:
            full["info"] = json.loads(_canonical(manifest["info"]))
        full.update(
            fingerprint=fingerprint,
            shard_size=shard_size,
            n_samples=int(n_samples),
            n_shards=-(-int(n_samples) // shard_size),
            probekit_version=_probekit_version(),
            complete=False,
        )
        path.mkdir(parents=True, exist_ok=True)
        (path / "shards").mkdir(exist_ok=True)
        if texts is not None:
            _write_json(path / "texts.json", [str(t) for t in texts])
        # Written last: its presence means "this folder is this cache". Two processes starting
        # together write the same content; the rename makes either result whole.
        _write_json(mpath, full)
        existing = _read_json(mpath)
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
            or n_samples < 0
        ):
            raise CacheError(f"n_samples must be a non-negative int, got {n_samples!r}")
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
        start = i * self.shard_size
        return start, min(start + self.shard_size, self.n_samples)

    def _shard_paths(self, i: int) -> tuple[Path, Path]:
        d = self.path / "shards"
        return d / f"{i:06d}.safetensors", d / f"{i:06d}.json"

    def shard_ok(self, i: int, verify: bool = True) -> bool:
        """Whether shard ``i`` is fully written (its ``.json`` exists and, with ``verify``, the
        shard's sha256 matches it)."""
        st, js = self._shard_paths(i)
        if not (st.is_file() and js.is_file()):
            return False
        try:
            meta = _read_json(js)
        except (OSError, ValueError):
            return False
        start, stop = self.shard_range(i)
        if (
            not isinstance(meta, dict)
            or meta.get("n") != stop - start
            or meta.get("start") != start
        ):
            return False
        return not verify or meta.get("sha256") == _sha256_file(st)

    def missing_shards(self, verify: bool = True) -> list[int]:
        """Shard ids still to write: no ``.json``, or (``verify``) a checksum that fails."""
        return [i for i in range(self.n_shards) if not self.shard_ok(i, verify=verify)]

    def write_shard(
        self,
        i: int,
        tensors: dict[str, torch.Tensor | np.ndarray],
        labels: torch.Tensor | np.ndarray | Sequence[int],
        index: torch.Tensor | np.ndarray | Sequence[int] | None = None,
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
        for name, value in (
            ("labels", labels),
            ("index", torch.arange(start, stop) if index is None else index),
        ):
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
            t = t.detach().to(device="cpu", dtype=torch.int64).reshape(-1).contiguous()
            if t.shape[0] != n:
                raise CacheError(f"shard {i}: {name} has {t.shape[0]} entries, expected {n}")
            out[name] = t
        data = st_save(
            out,
            metadata={
                "format": "probekit",
                "fingerprint": self.fingerprint,
                "shard": str(i),
                "start": str(start),
            },
        )
        sha = hashlib.sha256(data).hexdigest()
        st, js = self._shard_paths(i)
        if self.complete:  # repairing a finished cache: it is unfinished until finalize() again
            self.manifest = dict(self.manifest, complete=False)
            _write_json(self.path / "manifest.json", self.manifest)
        js.unlink(missing_ok=True)
        _atomic_write(st, data)
        _write_json(js, {"sha256": sha, "n": n, "start": start})
        return sha

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
            _write_json(self.path / "manifest.json", manifest)
            self.manifest = manifest
        for folder in (self.path, self.path / "shards"):
            for p in folder.iterdir():
                if _TMP_MARK in p.name and p.is_file():
                    p.unlink(missing_ok=True)
        return FeatureCache.open(self.path)


# ----------------------------------------------------------------------------- reader


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
        index: ``(N,)`` int64 sample positions in the source dataset.
        texts: the ``N`` input strings for text data, else ``None``.
        fingerprint: the manifest's sha256 identity.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        shards: list[tuple[Path, int, int]],
        labels: np.ndarray,
        index: np.ndarray,
        texts: list[str] | None,
    ) -> None:
        """Use :meth:`open`."""
        self.path = path
        self.manifest = manifest
        self._shards = shards  # (file, start, n)
        self.labels = labels
        self.index = index
        self.texts = texts
        self.layer_names: list[str] = [e["name"] for e in manifest["layers"]]
        self.dims: list[int] = [int(e["dim"]) for e in manifest["layers"]]
        self.poolings: list[str] = list(manifest["poolings"])
        dataset = manifest.get("dataset") or {}
        self.label_names: list[str] = [str(x) for x in dataset.get("label_names") or []]
        self.fingerprint: str = manifest["fingerprint"]

    @staticmethod
    def create(
        path: str | os.PathLike[str],
        manifest: dict[str, Any],
        n_samples: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        texts: Sequence[str] | None = None,
    ) -> CacheWriter:
        """Start, resume or reuse a cache: the same as :meth:`CacheWriter.create`."""
        return CacheWriter.create(path, manifest, n_samples, shard_size=shard_size, texts=texts)

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = False) -> FeatureCache:
        """Open a finished cache.

        Reads the manifest, every shard's header, labels and index (a few bytes per sample).
        Shard checksums are checked only with ``verify=True`` or :meth:`verify` (hashing reads
        every byte); truncated shards and wrong shapes are caught here anyway.

        Raises:
            CacheError: missing folder or manifest, corrupt manifest or shard, or an unfinished
                cache.
        """
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise CacheError(f"no feature cache at {path} (manifest.json not found)")
        try:
            manifest = _read_json(mpath)
            _validate_identity(manifest)
            n, shard_size, n_shards = (
                int(manifest[k]) for k in ("n_samples", "shard_size", "n_shards")
            )
            manifest["fingerprint"]  # noqa: B018 - presence check
        except (OSError, ValueError, KeyError, TypeError, AttributeError, CacheError) as e:
            raise CacheError(f"corrupt manifest.json in {path}: {e}") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{path} has cache format {manifest.get('format_version')!r}; this "
                f"probekit reads format {FORMAT_VERSION}"
            )
        if not manifest.get("complete"):
            writer = CacheWriter(path, manifest)
            left = len(writer.missing_shards(verify=False))
            raise CacheError(
                f"the cache at {path} is incomplete ({n_shards - left} of {n_shards} "
                "shards written); re-run the extraction to resume it"
            )
        keys = [f"{e['name']}.{p}" for e in manifest["layers"] for p in manifest["poolings"]]
        dims = {
            f"{e['name']}.{p}": e["dim"] for e in manifest["layers"] for p in manifest["poolings"]
        }
        shards, labels, index = [], [], []
        for i in range(n_shards):
            file = path / "shards" / f"{i:06d}.safetensors"
            start = i * shard_size
            rows = min(shard_size, n - start)
            try:
                with safe_open(file, framework="pt") as f:
                    have = set(f.keys())
                    lost = [k for k in keys + ["labels", "index"] if k not in have]
                    if lost:
                        raise CacheError(f"missing tensors {lost[:5]}")
                    for k in keys:
                        shape = tuple(f.get_slice(k).get_shape())
                        if shape != (rows, dims[k]):
                            raise CacheError(f"{k} has shape {shape}, expected {(rows, dims[k])}")
                    lab = f.get_tensor("labels").numpy().astype(np.int64)
                    idx = f.get_tensor("index").numpy().astype(np.int64)
            except CacheError as e:
                raise CacheError(f"corrupt shard {file}: {e}") from e
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise CacheError(f"cannot read shard {file}: {e}") from e
            if lab.shape != (rows,) or idx.shape != (rows,):
                raise CacheError(f"corrupt shard {file}: labels/index do not have {rows} rows")
            shards.append((file, start, rows))
            labels.append(lab)
            index.append(idx)
        texts = None
        if (path / "texts.json").is_file():
            try:
                texts = [str(t) for t in _read_json(path / "texts.json")]
            except (OSError, ValueError) as e:
                raise CacheError(f"corrupt texts.json in {path}: {e}") from e
            if len(texts) != n:
                raise CacheError(f"texts.json in {path} has {len(texts)} entries for {n} samples")
        cache = cls(path, manifest, shards, _concat(labels), _concat(index), texts)
        if verify:
            cache.verify()
        return cache

    def verify(self) -> None:
        """Check every shard's sha256 against its ``.json``.

        Raises:
            CacheError: naming the shards whose checksum fails or whose ``.json`` is missing.
        """
        bad = []
        for file, start, rows in self._shards:
            try:
                meta = _read_json(file.with_suffix(".json"))
                ok = (
                    meta.get("sha256") == _sha256_file(file)
                    and meta.get("n") == rows
                    and meta.get("start") == start
                )
            except (OSError, ValueError, AttributeError):
                ok = False
            if not ok:
                bad.append(file.name)
        if bad:
            raise CacheError(f"corrupt cache {self.path}: checksum fails for shards {bad[:10]}")

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
        for file, start, rows in self._shards:
            with safe_open(file, framework="pt") as f:
                out[start : start + rows] = f.get_tensor(key)
        return out

    def __repr__(self) -> str:
        names = self.layer_names
        shown = f"{names[0]}..{names[-1]}" if len(names) > 2 else ", ".join(names)
        dims = str(self.dims[0]) if len(set(self.dims)) == 1 else str(self.dims)
        model = self.manifest.get("model")
        if isinstance(model, dict):
            model = model.get("id") or model.get("name")
        return (
            f"FeatureCache(n={len(self)}, layers={len(names)} [{shown}], dims={dims}, "
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

    def _selection(self, layers: Any, pooling: str | Sequence[str]) -> tuple[list[int], list[str]]:
        return self.select(layers, pooling)

    def _padded(self, sel: list[int]) -> bool:
        return len({self.dims[j] for j in sel}) > 1

    def _read_rows(
        self,
        shard: tuple[Path, int, int],
        sel: list[int],
        pools: list[str],
        out: torch.Tensor,
        row0: int,
    ) -> None:
        """Copy one shard's selected blocks into ``out[row0:row0+n]`` (token ``l * P + p``)."""
        file, _, rows = shard
        with safe_open(file, framework="pt") as f:
            for li, j in enumerate(sel):
                d = self.dims[j]
                for pi, p in enumerate(pools):
                    block = f.get_tensor(f"{self.layer_names[j]}.{p}")
                    out[row0 : row0 + rows, li * len(pools) + pi, :d].copy_(block)

    def load(
        self,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Stack the chosen layers and poolings into one tensor.

        Args:
            layers: timm convention over the recorded layers: ``None`` all, int ``k`` the last
                ``k``, a list of indices (negatives from the end) or names (globs allowed).
            pooling: one recorded pooling, a list of them, or ``"cls+mean"``; default: every
                recorded pooling, in recorded order.
            device: where the result lives (default CPU); blocks are copied there one by one.
            dtype: result dtype.

        Returns:
            ``(N, T, D)`` with ``T = L * P`` tokens, layer-major (token ``l * P + p`` is layer
            ``l`` pooled with ``pooling[p]``), ``D`` the widest selected layer; narrower layers
            are zero-padded on the right.

        Raises:
            ValueError, IndexError: a selection outside the recorded layers or poolings.
        """
        sel, pools = self._selection(layers, pooling)
        width = max(self.dims[j] for j in sel)
        out = _alloc(len(self), len(sel) * len(pools), width, dtype, device, self._padded(sel))
        for shard in self._shards:
            self._read_rows(shard, sel, pools, out, shard[1])
        return out

    def batches(
        self,
        batch_size: int,
        layers: Any = None,
        pooling: str | Sequence[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Stream ``(X (b, T, D), y (b,))`` batches, holding about one shard in memory.

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
        for s in order:
            shard = self._shards[s]
            _, start, rows = shard
            x = _alloc(rows, len(sel) * len(pools), width, dtype, None, self._padded(sel))
            self._read_rows(shard, sel, pools, x, 0)
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
                yield x_all[b : b + batch_size].to(dev), y_all[b : b + batch_size].to(dev)
            buf_x, buf_y, buffered = [x_all[full:]], [y_all[full:]], buffered - full
        if buffered:
            yield torch.cat(buf_x).to(dev), torch.cat(buf_y).to(dev)
