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

In an estimator, ``ProbeClassifier(control=True)`` trains the control probe beside the task
probe:
::

    clf = ProbeClassifier(head="linear", control=True, random_state=0)
    clf.fit(X, y, sample_keys=words)          # a text cache needs no keys: its texts are used
    clf.layer_scores_        # (L,) validation accuracy on the task
    clf.control_scores_      # (L,) the same probe, the same split, control labels
    clf.selectivity_         # (L,) layer_scores_ - control_scores_
    clf.control_estimator_   # the fitted control probe (predict_layers on held-out data)
    control_task_labels(clf, test_words)      # the control labels of other samples

The control labels come from :func:`probekit.control_labels` with the training labels'
distribution and a seed derived from ``random_state``; the control probe is a copy of the
estimator (same head, hyper-parameters and seed) whose validation split is the task probe's
(stratified on the task labels), so the two validation scores are paired.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .inputs import _is_cache

__all__ = [
    "control_keys",
    "control_labels",
    "control_task_labels",
    "fit_control",
    "label_cdf",
    "labels_from_cdf",
    "sample_keys",
    "selectivity",
]


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


def _unit_types(cache: Any, texts: Sequence[str], unit: str) -> list[str]:
    """The word (or token id) of every row of a unit cache."""
    samples, positions = np.asarray(cache.samples), np.asarray(cache.positions)
    if unit == "word":  # texts are the words joined by single spaces
        words = [t.split(" ") for t in texts]
        return [words[s][p] for s, p in zip(samples.tolist(), positions.tolist(), strict=True)]
    raise DataError(
        "control tasks on a token cache need the token of every row; record unit='word'"
    )


def sample_keys(data: Any) -> list[str]:
    """The type of every sample: its text, or the sha256 of its decoded RGB pixels.

    In a word cache a row is a word and its type is the word itself (Hewitt & Liang's control
    task: one random tag per word type); in a token cache, the token (its id, as text).

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
    unit = getattr(data, "unit", "sample")
    if unit != "sample" and texts is not None:
        return _unit_types(data, texts, unit)
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


def labels_from_cdf(
    keys: Sequence[Any], classes: np.ndarray, cdf: np.ndarray, seed: int
) -> np.ndarray:
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


def control_keys(clf: Any, X: Any, keys: Sequence[Any] | None) -> list[Any] | None:
    """The sample keys of a ``control=True`` fit, checked before any training.

    Returns:
        ``None`` when ``clf.control`` is off, else one key per sample: ``keys``, or a text
        cache's texts.

    Raises:
        ConfigError: control is on and there are no keys (plain arrays without
            ``sample_keys=``, an image cache), or the head settings give no validation scores.
    """
    if not getattr(clf, "control", False):
        if keys is not None:
            raise ConfigError("sample_keys is only used with control=True")
        return None
    if keys is None:
        texts = getattr(X, "texts", None) if _is_cache(X) else None
        if texts is None:
            raise ConfigError(
                "control=True needs the type of every sample: pass fit(X, y, sample_keys=...) "
                "(texts, or probekit.sample_keys(dataset) for images); only a text cache "
                "provides them itself"
            )
        return sample_keys(X)
    return list(keys)


def fit_control(
    clf: Any, X: Any, y: Any, keys: list[Any], layer_names: Any, seed: int, groups: Any = None
) -> None:
    """Fit the control probe of a fitted ``clf`` and set its control attributes.

    Args:
        clf: the fitted task probe (``control=True``).
        X, y, layer_names: what ``clf`` was fitted on.
        keys: one key per sample.
        seed: the task fit's seed (derived from ``random_state``); seeds the control labels.
            The control probe's validation split is stratified on the task labels, so it is the
            task probe's split.

    Raises:
        DataError: ``keys`` and ``y`` differ in length.
        ConfigError: the probe has no per-layer validation scores (``val_size=0``, or a head
            without per-layer logits).
    """
    y_arr = np.asarray(y).reshape(-1)
    if len(keys) != len(y_arr):
        raise DataError(f"{len(keys)} sample_keys for {len(y_arr)} samples; give one per sample")
    if clf.layer_scores_ is None:
        raise ConfigError(
            f"control=True needs per-layer validation scores: head {clf.head!r} with "
            "val_size > 0 gives none; use a head with per-layer probes (e.g. 'linear') and "
            "val_size > 0"
        )
    y_ctl = control_labels(keys, y_arr, seed=seed)
    params = clf.get_params()
    params["control"] = False
    if isinstance(params["class_weight"], Mapping):  # the labels the control task drew
        drawn = set(np.unique(y_ctl).tolist())
        params["class_weight"] = {k: v for k, v in params["class_weight"].items() if k in drawn}
    ctl = type(clf)(**params)
    ctl._stratify = np.unique(y_arr, return_inverse=True)[1].astype(np.int64)
    ctl.fit(X, y_ctl, layer_names=layer_names, groups=groups)
    del ctl._stratify
    classes, cdf = label_cdf(y_arr)
    clf.control_estimator_ = ctl
    clf.control_seed_ = int(seed)
    clf.control_classes_ = classes
    clf.control_cdf_ = cdf
    clf.control_scores_ = np.asarray(ctl.layer_scores_, dtype=np.float64)
    clf.selectivity_ = np.asarray(clf.layer_scores_, dtype=np.float64) - clf.control_scores_


def control_task_labels(clf: Any, keys: Sequence[Any]) -> np.ndarray:
    """The control labels of any samples under a fitted ``control=True`` probe's control task.

    A key seen in training gets the label it had there; a new key gets a label drawn (by its
    hash) from the training labels' distribution.

    Args:
        clf: a fitted ``ProbeClassifier(control=True)``.
        keys: ``N`` sample keys (texts, content hashes).

    Returns:
        ``(N,)`` labels among the training classes.
    """
    if not hasattr(clf, "control_seed_"):
        raise ConfigError("the probe was not fitted with control=True")
    return labels_from_cdf(list(keys), clf.control_classes_, clf.control_cdf_, clf.control_seed_)
