"""A run's attribution arrays read lazily: what the report draws, in bounded memory.

``probekit attribute`` writes per-sample arrays -- ``(N, L)`` layer weights and ablation drops,
``(N, L, L)`` layer maps -- that on a 100k-sample run outgrow what a report should hold.
:class:`AttributionFile` opens ``attribution/<head>.safetensors`` with
:func:`safetensors.safe_open` and reads row ranges (the file is opened per range, so its mapped
pages are handed back after each); :func:`summarize_head` streams over row chunks for the
class-mean layer weights, the ablation mean and spread, the layer-map mean, and the rows of a
per-sample heatmap. A heatmap shows at most :data:`HEATMAP_MAX_SAMPLES` rows: all of them up to
the cap, else a seeded class-stratified subsample in the original order
(:func:`stratified_subsample`). When the arrays fit one chunk, every number is computed as numpy
computes it on the whole array, so a small run's figures are exactly those of the whole arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CHUNK_BYTES",
    "HEATMAP_MAX_SAMPLES",
    "AttributionFile",
    "HeadSummary",
    "stratified_subsample",
    "summarize_head",
]

HEATMAP_MAX_SAMPLES = 2000
"""Most rows (test samples) a per-sample heatmap of the report draws."""
CHUNK_BYTES = 4 * 2**20
"""Largest chunk (as float64) the report reads from an attribution file at a time."""
_DTYPES = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "BOOL": "bool",
}


class AttributionFile:
    """One head's ``attribution/<head>.safetensors``, read on demand.

    ``key in f``, :attr:`shapes` and :attr:`dtypes` come from the header; ``f[key]`` reads one whole tensor (meant
    for the ``(N,)`` and ``(L,)`` ones: predictions, targets, accuracy drops); :meth:`chunks`
    reads row ranges of several ``(N, ...)`` tensors together.

    Args:
        path: the safetensors file.
    """

    def __init__(self, path: str | Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        with safe_open(str(self.path), framework="numpy") as f:
            self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            self.dtypes = {k: np.dtype(_DTYPES[f.get_slice(k).get_dtype()]) for k in f.keys()}

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __getitem__(self, key: str) -> np.ndarray:
        from safetensors import safe_open

        if key not in self.shapes:
            raise KeyError(key)
        with safe_open(str(self.path), framework="numpy") as f:
            return f.get_tensor(key)

    def chunks(
        self, keys: Sequence[str], chunk_bytes: int = CHUNK_BYTES
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(start, {key: rows start:stop as float64})`` over the rows of ``keys``.

        A chunk holds as many rows as fit ``chunk_bytes`` in float64 (at least one).
        """
        from safetensors import safe_open

        if not keys:
            return
        n = self.shapes[keys[0]][0]
        row = sum(8 * math.prod(self.shapes[k][1:]) for k in keys)
        step = max(1, chunk_bytes // max(row, 1))
        for start in range(0, n, step):
            stop = min(n, start + step)
            with safe_open(str(self.path), framework="numpy") as f:
                out = {k: np.asarray(f.get_slice(k)[start:stop], dtype=np.float64) for k in keys}
            yield start, out


def stratified_subsample(labels: Sequence[int] | np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """At most ``k`` indices into ``labels``, in increasing order, each class kept in proportion.

    Up to ``k`` labels: every index. Above: class ``c`` of ``n_c`` samples gets ``k n_c / N``
    rounded down, and the ``k`` still missing go to the largest remainders (ties: the first
    class), so every class's count is within 1 of proportional; its samples are drawn without
    replacement by a generator seeded with ``seed``.

    Args:
        labels: ``(N,)`` class labels (for a regression, any constant: a plain random subsample).
        k: the most indices returned.
        seed: seed of the draw.

    Returns:
        ``(min(k, N),)`` sorted int64 indices.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n <= k:
        return np.arange(n, dtype=np.int64)
    _, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes)
    quota = counts * k // n
    rest = counts * k - quota * n  # remainders, scaled by n
    extra = np.argsort(-rest, kind="stable")[: k - int(quota.sum())]
    quota[extra] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(codes == c), size=int(q), replace=False)
        for c, q in enumerate(quota)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


@dataclass
class HeadSummary:
    """What the report draws of one head, from :func:`summarize_head`.

    Attributes:
        n: number of test samples.
        shown: ``(k,)`` indices of the rows a per-sample heatmap draws (all when ``k = n``).
        weights_shown: ``(k, L)`` layer weights of those rows, or None.
        class_means: ``(C, L)`` mean layer weight of each class of ``classes``, over all ``n``
            samples, or None.
        classes: ``(C,)`` the classes present, sorted.
        counts: ``(C,)`` samples per class.
        ablation_mean: ``(L,)`` mean ablation drop over all samples.
        ablation_std: ``(L,)`` its standard deviation (``ddof=1``; zeros when ``n = 1``).
        layer_map: ``(L, L)`` mean layer map (NaNs skipped, as :func:`numpy.nanmean`), or None.
    """

    n: int
    shown: np.ndarray
    weights_shown: np.ndarray | None
    class_means: np.ndarray | None
    classes: np.ndarray
    counts: np.ndarray
    ablation_mean: np.ndarray
    ablation_std: np.ndarray
    layer_map: np.ndarray | None


def summarize_head(
    f: AttributionFile, labels: np.ndarray, shown: np.ndarray, chunk_bytes: int = CHUNK_BYTES
) -> HeadSummary:
    """Stream one head's file once (twice over ``ablation`` for its spread).

    Args:
        f: the head's file (``ablation`` (N, L); ``layer_weights`` (N, L) and ``layer_map``
            (N, L, L) when present).
        labels: ``(N,)`` the test labels (class means) or any constant (regression).
        shown: sorted row indices of the per-sample heatmap (:func:`stratified_subsample`).
        chunk_bytes: largest chunk read at a time (float64).

    Returns:
        A :class:`HeadSummary`; memory besides one chunk is ``O(N)`` (labels) plus the shown rows.
    """
    keys = [k for k in ("ablation", "layer_weights", "layer_map") if k in f]
    n, n_layers = f.shapes["ablation"]
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.bincount(codes, minlength=len(classes))
    weights = "layer_weights" in f
    sums = np.zeros((len(classes), f.shapes["layer_weights"][1])) if weights else None
    parts: list[np.ndarray] = []
    abl_sum = np.zeros(n_layers)
    map_sum = map_count = None
    if "layer_map" in f:
        map_sum = np.zeros(f.shapes["layer_map"][1:])
        map_count = np.zeros(f.shapes["layer_map"][1:], dtype=np.intp)
    for start, c in f.chunks(keys, chunk_bytes):
        b = len(c["ablation"])
        abl_sum += c["ablation"].sum(0)
        if sums is not None:
            np.add.at(sums, codes[start : start + b], c["layer_weights"])
            lo, hi = np.searchsorted(shown, [start, start + b])
            parts.append(c["layer_weights"][shown[lo:hi] - start])
        if map_sum is not None:
            m = c["layer_map"]
            nan = np.isnan(m)
            m[nan] = 0.0
            map_sum += m.sum(0)
            map_count += (~nan).sum(0, dtype=np.intp)
    mean = abl_sum / n
    sq = np.zeros(n_layers)
    if n > 1:
        for _, c in f.chunks(["ablation"], chunk_bytes):
            d = c["ablation"] - mean
            sq += (d * d).sum(0)
    layer_map = None
    if map_sum is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            layer_map = map_sum / map_count
    return HeadSummary(
        n=n,
        shown=shown,
        weights_shown=np.concatenate(parts) if weights else None,
        class_means=sums / counts[:, None] if sums is not None else None,
        classes=classes,
        counts=counts,
        ablation_mean=mean,
        ablation_std=np.sqrt(sq / (n - 1)) if n > 1 else np.zeros(n_layers),
        layer_map=layer_map,
    )
