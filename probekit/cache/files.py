"""Small file helpers of the cache: canonical JSON, atomic writes, and identity diffs."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

TMP_MARK = ".tmp-"


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
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            kill_point("mid-write")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        kill_point("before-rename")
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


def kill_point(where: str) -> None:
    """Test hook, inert unless ``PROBEKIT_TEST_KILL_AT`` names ``where``: SIGKILL this process.

    ``PROBEKIT_TEST_KILL_AT="shard-write:3"`` kills at the 3rd time ``where`` is reached; the
    fault-injection tests use it to stop an extraction at chosen points. Costs one dict lookup.
    With several processes, ``PROBEKIT_TEST_KILL_RANK=r`` limits it to the process whose ``RANK``
    is ``r``.
    """
    spec = os.environ.get("PROBEKIT_TEST_KILL_AT")
    if not spec:
        return
    only = os.environ.get("PROBEKIT_TEST_KILL_RANK")
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    name, _, nth = spec.partition(":")
    if name != where:
        return
    _KILL_COUNTS[where] = _KILL_COUNTS.get(where, 0) + 1
    if _KILL_COUNTS[where] >= int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_KILL_COUNTS: dict[str, int] = {}
