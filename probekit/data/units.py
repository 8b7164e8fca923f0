"""Labels below the sample: a word-level dataset's words and one label per word.

A token-level task (part of speech, entities, dependency relations) has many labelled units per
input. :class:`WordUnits` holds them beside a :class:`~probekit.data.Dataset` of the joined texts:
``dataset.units.words[i]`` are the words of sample ``i``, ``dataset.units.labels[i]`` their class
indices into ``dataset.label_names`` (``-1``: a word without a label, recorded but never fitted or
scored). Loaders for word-level formats (``conllu:``, ``jsonl:``, the bundled token sets) build
one with :func:`word_dataset`; extraction with ``unit="word"`` turns every labelled word into one
row of the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["UNITS", "WordUnits", "word_dataset"]

UNITS = ("sample", "word", "token")
"""What one row of a cache is: an input, a word of it, or a sub-word token of it."""


@dataclass
class WordUnits:
    """The words of every sample and a label per word.

    Attributes:
        words: ``N`` lists of words (pre-split text; a word never holds whitespace).
        labels: ``N`` int64 arrays, ``labels[i]`` of shape ``(len(words[i]),)``: class indices, or
            ``-1`` for an unlabelled word.
        targets: for regression, ``N`` float64 arrays of the same shapes (NaN: no target), else
            ``None``.
    """

    words: list[list[str]]
    labels: list[np.ndarray]
    targets: list[np.ndarray] | None = None
    _digest: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.words) != len(self.labels):
            raise DataError(f"{len(self.words)} word lists but {len(self.labels)} label lists")
        self.words = [[str(w) for w in ws] for ws in self.words]
        self.labels = [np.asarray(lab, dtype=np.int64).reshape(-1) for lab in self.labels]
        for i, (ws, lab) in enumerate(zip(self.words, self.labels, strict=True)):
            if len(ws) != len(lab):
                raise DataError(f"sample {i}: {len(ws)} words but {len(lab)} labels")
            if not ws:
                raise DataError(f"sample {i} has no words")
            bad = next((w for w in ws if not w or any(c.isspace() for c in w)), None)
            if bad is not None:
                raise DataError(f"sample {i}: a word is empty or holds whitespace: {bad!r}")
        if self.targets is not None:
            self.targets = [np.asarray(t, dtype=np.float64).reshape(-1) for t in self.targets]
            if [len(t) for t in self.targets] != [len(lab) for lab in self.labels]:
                raise DataError("word targets do not have one value per word")

    def __len__(self) -> int:
        return len(self.words)

    @property
    def n_words(self) -> int:
        """Words over every sample."""
        return sum(len(ws) for ws in self.words)

    def digest(self) -> str:
        """sha256 hex over every word, label and target (the dataset fingerprint hashes it)."""
        if self._digest is None:
            h = hashlib.sha256()
            for i, ws in enumerate(self.words):
                for w in ws:
                    b = w.encode("utf-8")
                    h.update(len(b).to_bytes(8, "little") + b)
                h.update(b"\0" + self.labels[i].astype("<i8").tobytes())
                if self.targets is not None:
                    h.update(self.targets[i].astype("<f8").tobytes())
            self._digest = h.hexdigest()
        return self._digest


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
    from .dataset import Dataset

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
    units = WordUnits(
        [list(ws) for ws in words],
        labels,
        None if targets is None else [np.asarray(t, dtype=np.float64) for t in targets],
    )
    per_sample = [
        int(np.bincount(lab[lab >= 0], minlength=len(names)).argmax()) if (lab >= 0).any() else 0
        for lab in units.labels
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
