"""``conllu:PATH``: a CoNLL-U file (``.conllu`` or ``.conllu.gz``), one sample per sentence.

Each word line has 10 tab-separated fields (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS
MISC); ``#`` lines are comments (``# text = ...`` is kept), a blank line ends a sentence.
Multiword-token lines (``1-2``) and empty nodes (``1.1``) are skipped: the words are the FORMs of
the integer-ID lines. ``label_column`` picks the per-word label:

* ``upos`` (default): the label names are the 17 Universal POS tags (:data:`UPOS_TAGS`, in that
  order) when every tag is one of them, else the sorted distinct tags;
* ``xpos``, ``deprel``, ``lemma``: the sorted distinct values;
* ``wordnet``: the ``WordNetPOS=`` MISC value (``bundled:wordnet-pos``'s gold word);
* ``head_distance`` (with ``target="regression"``): HEAD minus the word's ID, as a float; the
  root (HEAD 0) and a ``_`` HEAD have no target (NaN), like an unlabelled word.

A ``_`` value is an unlabelled word (label ``-1``). ``limit`` keeps a seeded subset of sentences
(stratified by each sentence's most frequent tag; a plain random subset for regression), in file
order, with the label names of the whole file.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from .common import _single_split
from .dataset import Dataset
from .sources import DataOptions
from .word_data import scored_words, tagged_words

__all__ = [
    "CONLLU_LABELS",
    "UPOS_TAGS",
    "ConlluSentence",
    "conllu_dataset",
    "load_conllu",
    "read_conllu",
]

UPOS_TAGS = (
    "ADJ",
    "ADP",
    "ADV",
    "AUX",
    "CCONJ",
    "DET",
    "INTJ",
    "NOUN",
    "NUM",
    "PART",
    "PRON",
    "PROPN",
    "PUNCT",
    "SCONJ",
    "SYM",
    "VERB",
    "X",
)
"""The Universal Dependencies v2 part-of-speech tags."""

CONLLU_LABELS = ("upos", "xpos", "deprel", "lemma", "wordnet", "head_distance")
"""The ``label_column`` values of CoNLL-U data (``head_distance``: regression only)."""

_COLUMN = {"lemma": 2, "upos": 3, "xpos": 4, "deprel": 7}


@dataclass
class ConlluSentence:
    """One sentence: its words' fields, one list entry per word (multiword tokens left out).

    Attributes:
        words: the FORMs.
        columns: the raw field values per word, keyed ``lemma``, ``upos``, ``xpos``, ``deprel``,
            ``misc``.
        heads: the HEAD of every word (``None`` for ``_``).
        comments: ``# key = value`` comments (``text``, ``sent_id``, ...).
        line: the line number of the sentence's first line.
    """

    words: list[str] = field(default_factory=list)
    columns: dict[str, list[str]] = field(default_factory=dict)
    heads: list[int | None] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def labels(self, label_column: str) -> list[str | None]:
        """The per-word tags of ``label_column`` (``None``: unlabelled)."""
        if label_column == "wordnet":
            out: list[str | None] = []
            for misc in self.columns["misc"]:
                items = dict(p.partition("=")[::2] for p in misc.split("|"))
                out.append(items.get("WordNetPOS") or None)
            return out
        return [None if v == "_" else v for v in self.columns[label_column]]

    def head_distance(self) -> list[float]:
        """HEAD minus ID per word; NaN for the root (HEAD 0) and an unknown HEAD."""
        return [
            float("nan") if h is None or h == 0 else float(h - (i + 1))
            for i, h in enumerate(self.heads)
        ]


def read_conllu(path: str | Path) -> list[ConlluSentence]:
    """Parse a CoNLL-U file (gzip when it ends in ``.gz``) into sentences.

    Raises:
        DataError: a missing file or a malformed line, as ``"PATH:LINE: what is wrong"``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"conllu file not found: {p}")
    opener: Any = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            return parse_conllu(f, str(p))
    except (UnicodeDecodeError, OSError) as err:
        raise DataError(f"{p}: cannot read as UTF-8 CoNLL-U: {err}") from None


def parse_conllu(lines: Iterable[str], where: str = "<conllu>") -> list[ConlluSentence]:
    """Parse CoNLL-U lines; ``where`` names the source in errors (``"WHERE:LINE: ..."``)."""
    sentences: list[ConlluSentence] = []
    cur: ConlluSentence | None = None

    def fail(n: int, what: str) -> DataError:
        return DataError(f"{where}:{n}: {what}")

    def close(n: int) -> None:
        nonlocal cur
        if cur is not None:
            if not cur.words:
                raise fail(cur.line, "a sentence with no word lines")
            sentences.append(cur)
        cur = None

    for n, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            close(n)
            continue
        if cur is None:
            cur = ConlluSentence(
                columns={k: [] for k in ("lemma", "upos", "xpos", "deprel", "misc")}, line=n
            )
        if line.startswith("#"):
            key, eq, value = line[1:].partition("=")
            if eq:
                cur.comments[key.strip()] = value.strip()
            continue
        _add_word(cur, line, functools.partial(fail, n))
    close(0)
    if not sentences:
        raise DataError(f"{where}: no sentences")
    return sentences


def _add_word(cur: ConlluSentence, line: str, fail: Callable[[str], DataError]) -> None:
    """Append one word line to ``cur`` (multiword tokens and empty nodes skipped)."""
    fields = line.split("\t")
    if len(fields) != 10:
        raise fail(f"expected 10 tab-separated fields, got {len(fields)}")
    wid = fields[0]
    if "-" in wid or "." in wid:
        a, _, b = wid.replace(".", "-", 1).partition("-")
        if not (a.isdigit() and b.isdigit()):
            raise fail(f"bad ID {wid!r}")
        return
    if not wid.isdigit() or int(wid) != len(cur.words) + 1:
        raise fail(f"ID {wid!r} where {len(cur.words) + 1} was expected")
    form = fields[1]
    if not form or any(c.isspace() for c in form):
        raise fail(f"FORM {form!r} is empty or holds whitespace")
    head = fields[6]
    if head != "_" and not head.isdigit():
        raise fail(f"HEAD {head!r} is not a word index")
    cur.words.append(form)
    cur.heads.append(None if head == "_" else int(head))
    for key, col in _COLUMN.items():
        cur.columns[key].append(fields[col])
    cur.columns["misc"].append(fields[9])


def conllu_dataset(
    sentences: Sequence[ConlluSentence],
    *,
    name: str,
    spec: str,
    options: DataOptions,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """The word-level :class:`Dataset` of parsed sentences, as the module docstring describes."""
    o = options
    column = o.label_column or "upos"
    if column not in CONLLU_LABELS:
        raise DataError(
            f"{spec}: label_column must be one of {', '.join(CONLLU_LABELS)}, got {column!r}"
        )
    regression = o.target == "regression"
    if regression and column != "head_distance":
        raise DataError(f"{spec}: target='regression' reads label_column='head_distance'")
    if column == "head_distance" and not regression:
        raise DataError(f"{spec}: head_distance is a regression target: pass target='regression'")
    if o.text_column not in (None, "form"):
        raise DataError(f"{spec}: the words are the FORM column; got text_column={o.text_column!r}")
    words = [s.words for s in sentences]
    opts: dict[str, Any] = {"label_column": column, "limit": o.limit, "seed": o.seed}
    opts.update(extra or {})
    if regression:
        targets = [s.head_distance() for s in sentences]
        return scored_words(
            words,
            targets,
            name=name,
            spec=spec,
            options=opts,
            target_name=column,
            limit=o.limit,
            seed=o.seed,
        )
    tags = [s.labels(column) for s in sentences]
    seen = {t for row in tags for t in row if t is not None}
    names = list(UPOS_TAGS) if column == "upos" and seen <= set(UPOS_TAGS) else sorted(seen)
    return tagged_words(
        words,
        tags,
        name=name,
        spec=spec,
        options=opts,
        label_names=names,
        limit=o.limit,
        seed=o.seed,
    )


def load_conllu(path: str, spec: str, options: DataOptions) -> Dataset:
    """The ``conllu:`` loader: per-word classes, or ``head_distance`` with regression."""
    _single_split(options.split, "a conllu file")
    sentences = read_conllu(path)
    stem = Path(path).name.split(".")[0] or "conllu"
    return conllu_dataset(sentences, name=stem, spec=spec, options=options)
