"""``jsonl:PATH``: one JSON object per line, a list of words and one tag per word.

``{"tokens": ["The", "cat", "sat"], "tags": ["DET", "NOUN", "VERB"]}``: ``text_column`` names the
words field (default ``tokens``), ``label_column`` the tags field (default ``tags``). A ``null``
tag is an unlabelled word (-1). Class names are the sorted distinct tags (integers in numeric
order). With ``target="regression"`` the tags are numbers (``null``: no target, NaN). Blank
lines are skipped; ``limit`` keeps a seeded subset of lines, as for ``conllu:``.

Span files (edge probing; ``--unit span``): every line holds ``"spans"``, a list of
``[start, end, label]`` (or ``[start1, end1, start2, end2, label]`` for a relation between two
spans), ``end`` exclusive. With ``"tokens"`` (a list of words) the offsets count words; with
``"text"`` (a string, split on whitespace) they count characters and must fall on word
boundaries. ``label_column`` then names the spans field (default ``spans``).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .common import _as_ints, _single_split, _subset
from .dataset import Dataset
from .sources import DataOptions
from .word_data import scored_words, span_dataset, tagged_words

__all__ = ["load_jsonl", "read_jsonl", "read_jsonl_spans"]


def _rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every non-blank line of a JSON-lines file (gzip if ``.gz``).

    Raises:
        DataError: a missing file, a line that is not a JSON object, a file that is not UTF-8.
    """
    if not p.is_file():
        raise DataError(f"jsonl file not found: {p}")
    opener: Any = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{p}:{n}: not JSON: {err.msg}") from None
                if not isinstance(row, dict):
                    raise DataError(f"{p}:{n}: expected a JSON object, got {type(row).__name__}")
                yield n, row
    except (UnicodeDecodeError, OSError) as err:
        raise DataError(f"{p}: cannot read as UTF-8 JSON lines: {err}") from None


def read_jsonl(
    path: str | Path, words_field: str = "tokens", tags_field: str = "tags"
) -> tuple[list[list[str]], list[list[Any]]]:
    """``(words, tags)`` of every non-blank line of a JSON-lines file (gzip if ``.gz``).

    Raises:
        DataError: a missing file, or a line that is not an object with a list of non-empty
            strings and an equally long list of tags, as ``"PATH:LINE: what is wrong"``.
    """
    words: list[list[str]] = []
    tags: list[list[Any]] = []
    p = Path(path).expanduser()
    for n, row in _rows(p):
        for key in (words_field, tags_field):
            if not isinstance(row.get(key), list):
                raise DataError(f"{p}:{n}: no list field {key!r}; the fields are {sorted(row)}")
        ws, ts = row[words_field], row[tags_field]
        if not ws:
            raise DataError(f"{p}:{n}: {words_field!r} is empty")
        bad = next(
            (w for w in ws if not isinstance(w, str) or not w or w != "".join(w.split())),
            None,
        )
        if bad is not None or any(not isinstance(w, str) for w in ws):
            raise DataError(f"{p}:{n}: a word is not a non-empty string without spaces")
        if len(ws) != len(ts):
            raise DataError(f"{p}:{n}: {len(ws)} {words_field} but {len(ts)} {tags_field}")
        bad_tag = next((t for t in ts if isinstance(t, (list, dict))), None)
        if bad_tag is not None:
            raise DataError(f"{p}:{n}: a tag is a {type(bad_tag).__name__}")
        words.append(ws)
        tags.append(ts)
    if not words:
        raise DataError(f"{p}: no lines")
    return words, tags


def _is_span_file(path: str | Path) -> bool:
    """Whether the first line of ``path`` holds ``"spans"`` (a bad file: no, read_jsonl says why)."""
    try:
        first = next(_rows(Path(path).expanduser()), None)
    except DataError:
        return False
    return first is not None and "spans" in first[1]


def _char_spans_to_words(text: str, spans: list[Any], where: str) -> tuple[list[str], list[Any]]:
    """Whitespace words of ``text`` and the spans' character offsets as word offsets."""
    import re

    bounds = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    starts = {s: i for i, (s, _) in enumerate(bounds)}
    ends = {e: i + 1 for i, (_, e) in enumerate(bounds)}
    out = []
    for sp in spans:
        offsets = list(sp[:-1])
        try:
            words = [starts[c] if k % 2 == 0 else ends[c] for k, c in enumerate(offsets)]
        except KeyError as err:
            raise DataError(
                f"{where}: span offset {err.args[0]} is not on a word boundary"
            ) from None
        out.append((*words, sp[-1]))
    return [text[s:e] for s, e in bounds], out


def read_jsonl_spans(
    path: str | Path, spans_field: str = "spans"
) -> tuple[list[list[str]], list[list[Any]]]:
    """``(words, spans)`` of a span file: per line its words and ``(start, end[, start2, end2],
    label)`` word ranges.

    Raises:
        DataError: a line without ``tokens`` or ``text``, a span that is not a list of 3 or 5
            items, or a character offset off a word boundary, as ``"PATH:LINE: what"``.
    """
    p = Path(path).expanduser()
    words: list[list[str]] = []
    spans: list[list[Any]] = []
    for n, row in _rows(p):
        raw = row.get(spans_field)
        if not isinstance(raw, list) or not all(
            isinstance(s, list)
            and len(s) in (3, 5)
            and all(isinstance(c, int) and not isinstance(c, bool) for c in s[:-1])
            for s in raw
        ):
            raise DataError(
                f"{p}:{n}: {spans_field!r} must list [start, end, label] or "
                "[start1, end1, start2, end2, label]"
            )
        if isinstance(row.get("tokens"), list) and row["tokens"]:
            ws, sp = [str(w) for w in row["tokens"]], [tuple(s) for s in raw]
        elif isinstance(row.get("text"), str) and row["text"].strip():
            ws, sp = _char_spans_to_words(row["text"], raw, f"{p}:{n}")
        else:
            raise DataError(f"{p}:{n}: a span line needs 'tokens' (a list) or 'text'")
        words.append(ws)
        spans.append(sp)
    if not words:
        raise DataError(f"{p}: no lines")
    return words, spans


def load_jsonl(path: str, spec: str, options: DataOptions) -> Dataset:
    """The ``jsonl:`` loader: per-word classes, per-word numbers with regression, or labelled
    spans (a file whose lines hold ``"spans"``)."""
    o = options
    _single_split(o.split, "a jsonl file")
    if _is_span_file(path):
        field = o.label_column or "spans"
        words_s, spans = read_jsonl_spans(path, field)
        name_s = Path(path).name.split(".")[0] or "jsonl"
        opts_s = {"label_column": field, "limit": o.limit, "seed": o.seed}
        if o.limit is not None:
            keep = _subset(np.zeros(len(words_s), dtype=np.int64), o.limit, o.seed)
            if keep is not None:
                words_s, spans = [words_s[i] for i in keep], [spans[i] for i in keep]
        return span_dataset(words_s, spans, name=name_s, spec=spec, options=opts_s)
    words_field, tags_field = o.text_column or "tokens", o.label_column or "tags"
    words, tags = read_jsonl(path, words_field, tags_field)
    name = Path(path).name.split(".")[0] or "jsonl"
    opts: dict[str, Any] = {
        "text_column": words_field,
        "label_column": tags_field,
        "limit": o.limit,
        "seed": o.seed,
    }
    if o.target == "regression":
        targets = []
        for i, row in enumerate(tags):
            vals = []
            for t in row:
                if t is not None and (isinstance(t, (bool, str)) or not math.isfinite(t)):
                    raise DataError(f"{path}: sample {i}: regression tag {t!r} is not a number")
                vals.append(float("nan") if t is None else float(t))
            targets.append(vals)
        return scored_words(
            words,
            targets,
            name=name,
            spec=spec,
            options=opts,
            target_name=tags_field,
            limit=o.limit,
            seed=o.seed,
        )
    seen = sorted({t for row in tags for t in row if t is not None}, key=str)
    ints = _as_ints(seen)
    names = [str(v) for v in sorted(ints)] if ints is not None else sorted({str(t) for t in seen})
    if ints is not None:
        tags = [[None if t is None else str(int(t)) for t in row] for row in tags]
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
