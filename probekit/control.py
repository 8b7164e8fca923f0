"""Control tasks and selectivity (Hewitt & Liang, 2019).

A probe that reaches high accuracy may read the property from the representation, or it may
memorise it: a probe with enough capacity can learn any fixed mapping from input *types* (the
same word, the same image) to labels. A control task keeps the types and destroys the property:
every type gets a fixed random label, drawn from the empirical label distribution. The same
probe is trained on the control task; **selectivity = task accuracy - control accuracy**. A
layer that merely makes inputs identifiable scores high on both and has low selectivity.

::

    keys = probekit.sample_keys(dataset)                  # texts, or content hashes of images
    y_ctl = probekit.control_labels(keys, y, seed=0)      # same key -> same random label
    sel = probekit.selectivity(task_scores, control_scores)

The control label of a type depends only on ``(seed, key)`` and the label distribution, never on
the order of the samples, so the train and test splits of one dataset agree on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["control_labels", "label_cdf", "labels_from_cdf", "sample_keys", "selectivity"]


def _key_bytes(key: Any) -> bytes:
    """A stable byte string for one sample key (str, bytes, int, array or PIL image)."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8")
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return b"i" + str(int(key)).encode()
    if hasattr(key, "tobytes") and hasattr(key, "convert"):  # PIL.Image
        return b"p" + _image_hash(key).encode()
    if isinstance(key, np.ndarray):
        return b"a" + _array_hash(key).encode()
    raise DataError(
        f"a sample key must be a str, bytes, int, array or PIL image, got {type(key).__name__}"
    )


def _array_hash(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _image_hash(img: Any) -> str:
    rgb = img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
    return _array_hash(np.asarray(rgb, dtype=np.uint8))


def sample_keys(data: Any) -> list[str]:
    """The type of every sample: its text, or the sha256 of its decoded RGB pixels.

    Args:
        data: a :class:`~probekit.data.Dataset`, a FeatureCache of text data (its stored
            texts), or a sequence of items (strings, arrays, PIL images).

    Returns:
        ``N`` strings; equal strings mean the same input content.

    Raises:
        DataError: a cache without stored texts (image caches: pass the dataset instead), or
            items of an unsupported type.
    """
    texts = getattr(data, "texts", None)
    if texts is not None and not isinstance(data, (list, tuple, np.ndarray)):
        return [str(t) for t in texts]
    if hasattr(data, "manifest") and hasattr(data, "batches"):
        raise DataError(
            "this cache stores no texts (image data); pass the Dataset it was made from to "
            "sample_keys so that images can be hashed"
        )
    if hasattr(data, "get_items") and hasattr(data, "kind"):  # an image Dataset
        return ["img:" + _image_hash(data.get_items([i])[0]) for i in range(len(data))]
    out = []
    for item in data:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, np.ndarray):
            out.append("arr:" + _array_hash(item))
        elif hasattr(item, "tobytes") and hasattr(item, "convert"):
            out.append("img:" + _image_hash(item))
        else:
            raise DataError(f"cannot derive a sample key from a {type(item).__name__}")
    return out


def control_labels(sample_keys: Sequence[Any], y: Any, seed: int = 0) -> np.ndarray:
    """A control task: each distinct key gets a fixed random label from ``y``'s distribution.

    The label of a key is ``F^-1(u)``, with ``F`` the empirical CDF of ``y`` (classes in sorted
    order) and ``u`` in ``[0, 1)`` taken from ``sha256(seed, key)``: deterministic for a given
    seed, the same for every occurrence of a key, independent of sample order, and over many
    keys distributed like ``y``.

    Args:
        sample_keys: ``N`` keys, one per sample: the text, a content hash, any str / bytes /
            int, or the array / PIL image itself (hashed).
        y: ``(N,)`` task labels (any sortable values); only their distribution is used.
        seed: the control task's seed.

    Returns:
        ``(N,)`` control labels, values taken from ``y``'s classes (same dtype as ``np.unique(y)``).

    Raises:
        DataError: ``sample_keys`` and ``y`` differ in length, or are empty.
    """
    y_arr = np.asarray(y).reshape(-1)
    keys = list(sample_keys)
    if len(keys) != len(y_arr):
        raise DataError(f"{len(keys)} sample keys for {len(y_arr)} labels; give one key per sample")
    if not keys:
        raise DataError("control_labels needs at least one sample")
    classes, cdf = label_cdf(y_arr)
    return labels_from_cdf(keys, classes, cdf, seed)


def label_cdf(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The classes of ``y`` (sorted) and their empirical CDF, ``(C,)`` each."""
    classes, counts = np.unique(np.asarray(y).reshape(-1), return_counts=True)
    return classes, np.cumsum(counts) / counts.sum()


def labels_from_cdf(keys: Sequence[Any], classes: np.ndarray, cdf: np.ndarray,
                    seed: int) -> np.ndarray:
    """Control labels ``F^-1(u(seed, key))`` for a given label distribution (see
    :func:`control_labels`, which takes the distribution from ``y``).

    Args:
        keys: ``N`` sample keys.
        classes: ``(C,)`` the classes, in the order of ``cdf``.
        cdf: ``(C,)`` increasing, ending at 1.
        seed: the control task's seed.

    Returns:
        ``(N,)`` labels from ``classes``.
    """
    prefix = f"probekit-control:{int(seed)}:".encode()
    memo: dict[bytes, int] = {}
    out = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        kb = _key_bytes(key)
        c = memo.get(kb)
        if c is None:
            digest = hashlib.sha256(prefix + kb).digest()
            u = int.from_bytes(digest[:8], "big") / 2.0**64
            c = int(np.searchsorted(cdf, u, side="right"))
            memo[kb] = c = min(c, len(classes) - 1)
        out[i] = c
    return np.asarray(classes)[out]


def selectivity(task_scores: Any, control_scores: Any) -> np.ndarray:
    """Per-layer selectivity: task accuracy minus control-task accuracy.

    Args:
        task_scores: ``(L,)`` per-layer accuracy on the real task.
        control_scores: ``(L,)`` per-layer accuracy of the same probes on the control task.

    Returns:
        ``(L,)`` float64 differences.

    Raises:
        DataError: the two have different shapes.
    """
    t = np.asarray(task_scores, dtype=np.float64)
    c = np.asarray(control_scores, dtype=np.float64)
    if t.shape != c.shape:
        raise DataError(f"task scores {t.shape} and control scores {c.shape} differ in shape")
    return t - c
