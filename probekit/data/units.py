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
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError

__all__ = ["PatchUnits", "WordUnits"]


@dataclass
class WordUnits:
    """The words of every sample and a label per word.

    Attributes:
        words: ``N`` lists of words (pre-split text; a word never holds whitespace).
        labels: ``N`` int64 arrays, ``labels[i]`` of shape ``(len(words[i]),)``: class indices, or
            ``-1`` for an unlabelled word.
        targets: for regression, ``N`` float64 arrays of the same shapes (NaN: no target), else
            ``None``.
        spans: for span tasks (edge probing), ``N`` int64 arrays ``(n_spans, 2)`` of word ranges
            ``[start, end)``, or ``(n_spans, 4)`` for a pair of spans (a relation between two:
            ``[start1, end1, start2, end2]``), else ``None``.
        span_labels: ``N`` int64 arrays ``(n_spans,)``: each span's class (``-1``: none).
    """

    words: list[list[str]]
    labels: list[np.ndarray]
    targets: list[np.ndarray] | None = None
    spans: list[np.ndarray] | None = None
    span_labels: list[np.ndarray] | None = None
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
        if (self.spans is None) != (self.span_labels is None):
            raise DataError("spans and span_labels go together")
        if self.spans is not None and self.span_labels is not None:
            self._check_spans()

    def _check_spans(self) -> None:
        assert self.spans is not None and self.span_labels is not None
        if len(self.spans) != len(self.words) or len(self.span_labels) != len(self.words):
            raise DataError("spans need one array per sample")
        arrays = [np.asarray(sp, dtype=np.int64) for sp in self.spans]
        widths = {a.shape[-1] for a in arrays if a.size}
        if len(widths) > 1 or not widths <= {2, 4}:
            raise DataError(f"spans are (n, 2) or (n, 4) word ranges, one width; got {widths}")
        width = widths.pop() if widths else 2
        for i, (raw, lab) in enumerate(zip(arrays, self.span_labels, strict=True)):
            sp = raw.reshape(-1, width)
            starts, ends = sp[:, 0::2], sp[:, 1::2]
            if len(sp) and ((starts < 0).any() or (ends > len(self.words[i])).any()):
                raise DataError(
                    f"sample {i}: a span reaches outside its {len(self.words[i])} words"
                )
            if (ends <= starts).any():
                raise DataError(f"sample {i}: a span [start, end) is empty")
            if len(np.asarray(lab).reshape(-1)) != len(sp):
                raise DataError(f"sample {i}: {len(sp)} spans but {len(lab)} span labels")
            self.spans[i] = sp
            self.span_labels[i] = np.asarray(lab, dtype=np.int64).reshape(-1)

    @property
    def span_width(self) -> int:
        """2 for single spans, 4 for pairs (0 without spans)."""
        if not self.spans:
            return 0
        return int(next((s.shape[1] for s in self.spans if len(s)), 2))

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
                if self.spans is not None and self.span_labels is not None:
                    h.update(b"spans" + self.spans[i].astype("<i8").tobytes())
                    h.update(self.span_labels[i].astype("<i8").tobytes())
            self._digest = h.hexdigest()
        return self._digest


@dataclass
class PatchUnits:
    """One label per patch of every image, for token rows of a vision transformer.

    Attributes:
        labels: ``(N, H_p, W_p)`` int64 class indices on the model's patch grid (row-major, as a
            ViT orders its patch tokens), ``-1`` for a patch without a label.
    """

    labels: np.ndarray
    _digest: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(np.asarray(self.labels, dtype=np.int64))
        if self.labels.ndim != 3:
            raise DataError(f"patch labels must be (N, H_p, W_p), got {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """``(H_p, W_p)``, the patch grid the labels are given on."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    def digest(self) -> str:
        """sha256 hex over the label grids."""
        if self._digest is None:
            h = hashlib.sha256(repr(self.labels.shape).encode())
            h.update(self.labels.astype("<i8").tobytes())
            self._digest = h.hexdigest()
        return self._digest
