"""Word- and span-level datasets from words and their tags: :func:`word_dataset`,
:func:`span_dataset` (the ``conllu:`` and ``jsonl:`` loaders build on them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError
from .common import _subset
from .dataset import Dataset
from .units import WordUnits

__all__ = ["scored_words", "span_dataset", "tagged_words", "word_dataset"]


def word_dataset(
    words: Sequence[Sequence[str]],
    tags: Sequence[Sequence[Any]],
    *,
    name: str,
    spec: str,
    options: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    targets: Sequence[Sequence[float]] | None = None,
) -> Any:
    """A word-level :class:`~probekit.data.Dataset` from words and one tag per word.

    Args:
        words: ``N`` lists of words.
        tags: ``N`` lists of tags (any hashable; ``None`` = unlabelled), one per word.
        name, spec, options: as for :class:`~probekit.data.Dataset`.
        label_names: the classes in order (default: the sorted distinct tags).
        targets: per-word regression targets instead of classes (``tags`` then ignored).

    Returns:
        A text ``Dataset`` whose ``texts`` are the words joined by single spaces, whose
        ``units`` is a :class:`WordUnits`, and whose per-sample ``labels`` are each sample's
        most frequent tag (only a stand-in for ``limit=`` stratification).

    Raises:
        DataError: mismatched lengths, empty samples, a tag outside ``label_names``.
    """
    if len(words) != len(tags):
        raise DataError(f"{name}: {len(words)} samples of words but {len(tags)} of tags")
    if not words:
        raise DataError(f"{name}: no samples")
    if label_names is None:
        label_names = sorted({str(t) for row in tags for t in row if t is not None})
    names = [str(n) for n in label_names]
    if not names:
        names = ["none"]
    code = {n: k for k, n in enumerate(names)}
    labels = []
    for i, row in enumerate(tags):
        try:
            labels.append(np.array([-1 if t is None else code[str(t)] for t in row], np.int64))
        except KeyError as err:
            raise DataError(
                f"{name}: sample {i} has tag {err.args[0]!r}, not one of the classes"
            ) from None
    values = None if targets is None else [np.asarray(t, dtype=np.float64) for t in targets]
    units = WordUnits([list(ws) for ws in words], labels, values)
    return _text_dataset(units, units.labels, names, name, spec, options)


def _text_dataset(
    units: WordUnits,
    unit_labels: Sequence[np.ndarray],
    names: list[str],
    name: str,
    spec: str,
    options: dict[str, Any] | None,
) -> Dataset:
    """The text ``Dataset`` of ``units``: the words joined by spaces, and per sample its most
    frequent unit label (a stand-in, only for ``limit=`` stratification)."""
    per_sample = [
        int(np.bincount(lab[lab >= 0], minlength=len(names)).argmax()) if (lab >= 0).any() else 0
        for lab in unit_labels
    ]
    return Dataset(
        name=name,
        kind="text",
        labels=np.asarray(per_sample, dtype=np.int64),
        label_names=names,
        spec=spec,
        options=options,
        texts=[" ".join(ws) for ws in units.words],
        units=units,
    )


def tagged_words(
    words: list[list[str]],
    tags: list[list[Any]],
    *,
    name: str,
    spec: str,
    options: dict[str, Any],
    label_names: Sequence[str],
    limit: int | None,
    seed: int,
) -> Dataset:
    """:func:`word_dataset` of a loader, keeping a ``limit`` subset of samples stratified by
    their stand-in labels (the label names stay the whole file's)."""
    if limit is not None:
        whole = word_dataset(words, tags, name=name, spec=spec, label_names=label_names)
        keep = _subset(whole.labels, limit, seed)
        if keep is not None:
            words, tags = [words[i] for i in keep], [tags[i] for i in keep]
    return word_dataset(words, tags, name=name, spec=spec, options=options, label_names=label_names)


def scored_words(
    words: list[list[str]],
    targets: list[list[float]],
    *,
    name: str,
    spec: str,
    options: dict[str, Any],
    target_name: str,
    limit: int | None,
    seed: int,
) -> Dataset:
    """A regression word dataset of a loader: per-word ``targets`` (NaN: none), a seeded
    ``limit`` subset of samples, ``target_name`` recorded."""
    keep = _subset(np.zeros(len(words), dtype=np.int64), limit, seed)
    if keep is not None:
        words, targets = [words[i] for i in keep], [targets[i] for i in keep]
    ds = word_dataset(
        words,
        [[None] * len(w) for w in words],
        name=name,
        spec=spec,
        options={**options, "target": "regression"},
        label_names=[target_name],
        targets=targets,
    )
    ds.target_name = target_name
    return ds


def span_dataset(
    words: Sequence[Sequence[str]],
    spans: Sequence[Sequence[Sequence[Any]]],
    *,
    name: str,
    spec: str,
    options: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
) -> Any:
    """A span-level :class:`~probekit.data.Dataset` (edge probing) from words and labelled spans.

    Args:
        words: ``N`` lists of words.
        spans: per sample, ``(start, end, tag)`` word ranges ``[start, end)``, or
            ``(start1, end1, start2, end2, tag)`` for a relation between two spans.
        name, spec, options, label_names: as :func:`word_dataset`.

    Returns:
        A text ``Dataset`` whose ``units`` hold the words (no word tags) and the spans.

    Raises:
        DataError: a span outside its words, an empty span, mixed single and pair spans.
    """
    if len(words) != len(spans):
        raise DataError(f"{name}: {len(words)} samples of words but {len(spans)} of spans")
    if label_names is None:
        label_names = sorted({str(s[-1]) for row in spans for s in row if s[-1] is not None})
    names = [str(n) for n in label_names] or ["none"]
    code = {n: k for k, n in enumerate(names)}
    ranges, labels = [], []
    for i, row in enumerate(spans):
        try:
            labels.append(np.array([-1 if s[-1] is None else code[str(s[-1])] for s in row]))
        except KeyError as err:
            raise DataError(f"{name}: sample {i} has span tag {err.args[0]!r}") from None
        if len({len(s) for s in row}) > 1:
            raise DataError(f"{name}: sample {i} mixes single spans and pairs; spans are one width")
        ranges.append(np.array([list(s[:-1]) for s in row], dtype=np.int64))
    units = WordUnits(
        [list(ws) for ws in words],
        [np.full(len(ws), -1, np.int64) for ws in words],
        spans=ranges,
        span_labels=labels,
    )
    return _text_dataset(units, units.span_labels or [], names, name, spec, options)
