"""``probekit compare``: the layer-similarity matrix of one cache, or of two, written to a folder.

::

    probekit compare CACHE_A [CACHE_B] --out DIR [--method cka|cka-debiased|rsa]

    DIR/similarity-<method>.csv            rows: CACHE_A's layers, columns: CACHE_B's layers
    DIR/similarity-<method>.safetensors    "similarity" (L_a, L_b) float64; layer names and
                                           the caches in the metadata (JSON)
    DIR/similarity-<method>.html (+ .png where a Chromium is found)   the heatmap

The values are :func:`probekit.similarity` of the two caches (``CACHE_A`` with itself when
``CACHE_B`` is not given); caches of different samples are refused.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["compare_caches", "read_similarity", "write_similarity"]


def write_similarity(
    matrix: Any,
    names_a: Sequence[str],
    names_b: Sequence[str],
    out: str | os.PathLike[str],
    method: str = "cka",
    *,
    label_a: str = "layer",
    label_b: str | None = None,
    meta: dict[str, Any] | None = None,
    images: bool = True,
    heatmap: bool = True,
) -> list[Path]:
    """Write a similarity matrix as CSV, safetensors and a heatmap (HTML, PNG if possible).

    Args:
        matrix: ``(L_a, L_b)`` values.
        names_a, names_b: the row and column layer names.
        out: the folder (created).
        method: the similarity method (file names and colour bar).
        label_a, label_b: the heatmap's axis titles.
        meta: more JSON-able facts for the safetensors metadata (the caches, ...).
        images: also write a PNG (skipped with a warning where no Chromium is found).
        heatmap: write the heatmap at all (``False``: only the CSV and safetensors).

    Returns:
        The paths written.
    """
    import torch
    from safetensors.torch import save_file

    m = np.asarray(matrix, dtype=np.float64)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"similarity-{method}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", *names_b])
        for name, row in zip(names_a, m, strict=True):
            w.writerow([name, *(repr(float(v)) for v in row)])
    info = {
        "method": method,
        "names_a": json.dumps(list(map(str, names_a))),
        "names_b": json.dumps(list(map(str, names_b))),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()},
    }
    save_file(
        {"similarity": torch.from_numpy(np.ascontiguousarray(m))},
        str(stem.with_suffix(".safetensors")),
        metadata=info,
    )
    written = [stem.with_suffix(".csv"), stem.with_suffix(".safetensors")]
    if not heatmap:
        return written
    from ..viz import ExportError, export, find_chrome
    from ..viz.science import SimilarityDisplay

    disp = SimilarityDisplay.from_arrays(
        m, names_a, names_b, method, label_a=label_a, label_b=label_b
    )
    written.append(export(disp, stem.with_suffix(".html")))
    if images:
        if find_chrome() is None:
            warnings.warn(
                "no Chrome/Chromium found: the heatmap is written as HTML only", stacklevel=2
            )
        else:
            try:
                written.append(export(disp, stem.with_suffix(".png"), scale=2))
            except ExportError as err:
                warnings.warn(str(err), stacklevel=2)
    return written


def read_similarity(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """``(matrix, names_a, names_b)`` from a ``similarity-*.safetensors`` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        matrix = f.get_tensor("similarity")
    return matrix, json.loads(meta["names_a"]), json.loads(meta["names_b"])


def compare_caches(
    cache_a: str | os.PathLike[str],
    cache_b: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    method: str = "cka",
    *,
    layers: Any = None,
    pooling: str | None = None,
    images: bool = True,
    **kwargs: Any,
) -> tuple[np.ndarray, list[Path]]:
    """Open one or two caches, compute :func:`probekit.similarity` and write it to ``out``.

    Args:
        cache_a: a cache folder.
        cache_b: a second cache folder on the same samples, or None (``cache_a``'s layers with
            each other).
        out: the output folder.
        method: ``"cka"``, ``"cka-debiased"`` or ``"rsa"``.
        layers, pooling: passed to :func:`probekit.similarity` (both caches).
        images: also write the heatmap as PNG where possible.
        **kwargs: more :func:`probekit.similarity` keywords (``distance``, ``max_samples`` ...).

    Returns:
        ``(matrix, paths written)``.

    Raises:
        ConfigError: a bad method (before any cache is read). CacheError: a folder that is not
            a finished cache. DataError: two caches of different samples.
    """
    from ..analysis.similarity import METHODS, similarity
    from ..cache import FeatureCache

    if method not in METHODS:
        raise ConfigError(f"unknown similarity method {method!r}; choose from {', '.join(METHODS)}")
    a = FeatureCache.open(cache_a)
    b = FeatureCache.open(cache_b) if cache_b is not None else None
    matrix, names_a, names_b = similarity(
        a, b, method, layers=layers, pooling=pooling, return_names=True, **kwargs
    )

    def model_of(c: Any) -> str:
        return str(c.manifest.get("model", {}).get("id", "cache"))

    label_a = f"{model_of(a)} layer"
    label_b = f"{model_of(b)} layer" if b is not None else label_a
    if b is not None and label_a == label_b:
        label_a, label_b = "cache A layer", "cache B layer"
    meta = {
        "cache_a": str(cache_a),
        "cache_b": str(cache_b if cache_b is not None else cache_a),
        "fingerprint_a": a.manifest.get("fingerprint", ""),
        "fingerprint_b": (b or a).manifest.get("fingerprint", ""),
    }
    paths = write_similarity(
        matrix,
        names_a,
        names_b,
        out,
        method,
        label_a=label_a,
        label_b=label_b,
        meta=meta,
        images=images,
    )
    return matrix, paths
