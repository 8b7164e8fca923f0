"""The report's text view of a word-, token- or span-level run: some test sentences drawn as
their words (or sub-word tokens, or one line per span), each row coloured by the layer its
prediction rests on.

For every word of a shown sentence, the layer is the argmax over layers of one head's per-row
attribution saved by the attribute stage (``attribution/<head>.safetensors``): its
``layer_weights`` when it has them (the best fusion head with weights), else its ``ablation``
drops. Hovering a word shows its true and predicted class (that head's ``predictions``) and the
layer. A ``unit == "word"`` cache draws each sentence's words; ``"token"`` its sub-word tokens
(the cache's model tokenizer re-tokenizes the words, :func:`sentence_tokens`; special tokens
are left out); ``"span"`` one line per span of a sentence, the span's words coloured and the
others grey (the spans come from the run's data, :func:`text_view_spans`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "TEXT_VIEW_SENTENCES",
    "TEXT_VIEW_SPANS",
    "sentence_tokens",
    "text_view_figure",
    "text_view_rows",
    "text_view_spans",
]

TEXT_VIEW_SENTENCES = 12
"""Most test sentences the text view draws."""

TEXT_VIEW_SPANS = 30
"""Most span lines the text view of a span run draws."""


def sentence_tokens(cache: Any, samples: list[int]) -> list[tuple[list[str], list[int]]] | None:
    """Per sample, ``(tokens, positions)``: its words' sub-word tokens as the cache's model
    tokenizer writes them and their indices in the encoding (the positions of token rows),
    special tokens left out; ``None`` when the tokenizer cannot be loaded offline."""
    model = cache.manifest.get("model", {})
    limit = cache.manifest.get("preprocessing", {}).get("max_length")
    try:
        from transformers import AutoTokenizer

        source = model.get("source") or str(model.get("id", "")).removeprefix("hf:")
        tok = AutoTokenizer.from_pretrained(source, revision=model.get("revision"))
        if not getattr(tok, "is_fast", False):
            return None
        words = [cache.texts[s].split(" ") for s in samples]
        enc = tok(words, is_split_into_words=True, truncation=limit is not None, max_length=limit)
    except Exception:  # noqa: BLE001 - no tokenizer: no token view
        return None
    out = []
    for b in range(len(samples)):
        ids = enc["input_ids"][b]
        keep = [t for t, w in enumerate(enc.word_ids(b)) if w is not None]
        out.append(([str(x) for x in tok.convert_ids_to_tokens([ids[t] for t in keep])], keep))
    return out


def text_view_spans(cfg: Any, cache: Any) -> list[np.ndarray] | None:
    """The word ranges ``(n_spans, 2 | 4)`` of every input's spans, from the run's data
    (``cfg``: its :class:`~probekit.runs.config.RunConfig`); ``None`` when the data cannot be
    read again or is not the data the cache was made from (another fingerprint)."""
    from ..data import load_data

    try:
        data = load_data(cfg.data, seed=cfg.seed, **cfg.stage_options("data"))
    except Exception:  # noqa: BLE001 - the data moved or changed: no span view
        return None
    if data.fingerprint != cache.manifest.get("dataset", {}).get("fingerprint"):
        return None
    units = data.units
    return getattr(units, "spans", None)


def text_view_rows(cache: Any, test: np.ndarray, k: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """``(sample, positions)`` of at most ``k`` test sentences, drawn with ``seed``, in sample
    order: ``positions`` are the sentence's rows as positions in ``test`` (word order)."""
    test = np.asarray(test, dtype=np.int64)
    samples = np.unique(np.asarray(cache.samples)[test])
    if len(samples) > k:
        samples = np.sort(np.random.default_rng(seed).choice(samples, size=k, replace=False))
    where = {int(r): i for i, r in enumerate(test)}
    return [
        (int(s), np.array([where[int(r)] for r in cache.rows_of(int(s))], dtype=np.int64))
        for s in samples
    ]


def _rows(f: Any, key: str, positions: np.ndarray, chunk_bytes: int) -> np.ndarray:
    """Rows ``positions`` (sorted, unique) of ``f[key]`` ``(N, L)``, read a chunk at a time."""
    parts = []
    for start, c in f.chunks([key], chunk_bytes):
        b = len(c[key])
        lo, hi = np.searchsorted(positions, [start, start + b])
        parts.append(c[key][positions[lo:hi] - start])
    return np.concatenate(parts)


def text_view_figure(
    cache: Any,
    test: np.ndarray,
    head: str,
    f: Any,
    layers: list[str],
    label_names: list[str],
    seed: int,
    chunk_bytes: int,
    k: int = TEXT_VIEW_SENTENCES,
    spans: list[np.ndarray] | None = None,
) -> dict[str, Any] | None:
    """The view of ``head`` (its attribution file ``f``, its ``layers``), as a dict of
    :class:`probekit.report.Figure` fields; ``None`` unless the cache's unit is ``"word"``,
    ``"token"`` (with its tokenizer) or ``"span"`` (with ``spans``, see
    :func:`text_view_spans`)."""
    from ..viz.text import WordLayerDisplay

    unit = cache.unit
    if unit not in ("word", "token", "span") or not cache.texts:
        return None
    if unit == "span" and spans is None:
        return None
    key = "layer_weights" if "layer_weights" in f else "ablation"
    chosen = text_view_rows(cache, test, k, seed)
    if not chosen:
        return None
    tokens = sentence_tokens(cache, [s for s, _ in chosen]) if unit == "token" else None
    if unit == "token" and tokens is None:
        return None
    flat = np.unique(np.concatenate([p for _, p in chosen]))
    values = _rows(f, key, flat, chunk_bytes)  # (len(flat), L)
    at = {int(p): i for i, p in enumerate(flat)}
    predictions = np.asarray(f["predictions"])
    labels, positions = np.asarray(cache.labels), np.asarray(cache.positions)
    test = np.asarray(test)

    def cell(p: int) -> tuple[int, float, str, str]:
        """Layer (argmax), its value, true and predicted class of test position ``p``."""
        v = values[at[int(p)]]
        lay = int(np.argmax(v))
        true, pred = label_names[int(labels[test[p]])], label_names[int(predictions[p])]
        return lay, float(v[lay]), str(true), str(pred)

    lines: list[_Line] = []
    for i, (sample, pos) in enumerate(chosen):
        ws = cache.texts[sample].split(" ")
        if unit == "span":
            assert spans is not None
            for p in pos:
                j = int(positions[test[p]])
                line = _Line.blank(ws, f"#{sample} span {j}")
                lay, score, true, pred = cell(p)
                row = spans[sample][j]
                for a, e in zip(row[0::2].tolist(), row[1::2].tolist(), strict=True):
                    for w in range(a, e):
                        line.set(w, lay, score, true, pred)
                lines.append(line)
            continue
        if tokens is not None:
            toks, where = tokens[i]
            line = _Line.blank(toks, f"#{sample}", where)
        else:
            line = _Line.blank(ws, f"#{sample}")
        index = {t: q for q, t in enumerate(line.positions)}
        for p in pos:
            line.set(index[int(positions[test[p]])], *cell(p))
        lines.append(line)
    if unit == "span" and len(lines) > TEXT_VIEW_SPANS:
        lines = lines[:TEXT_VIEW_SPANS]
    what = {"word": "word", "token": "token", "span": "span"}[unit]
    value_name = f"{head} layer weight" if key == "layer_weights" else f"{head} ablation drop"
    disp = WordLayerDisplay(
        [ln.words for ln in lines],
        [ln.layers for ln in lines],
        layers,
        [ln.true for ln in lines],
        [ln.pred for ln in lines],
        [ln.score for ln in lines],
        [ln.name for ln in lines],
        value_name,
        positions=[ln.positions for ln in lines],
        none_name="outside the span" if unit == "span" else "no label",
    ).plot(title=f"Which layer each {what}'s prediction rests on")
    shown = f"{len(chosen)} test sentences (a random draw, seed {seed})"
    rows = {
        "word": "one row each (#: the input's number); each word",
        "token": "one row each (#: the input's number), as the model's sub-word tokens; each token",
        "span": f"one row per span (at most {TEXT_VIEW_SPANS}; #: the input's number, then the "
        "span's), the sentence's words; each span's words",
    }[unit]
    grey = "grey: a word outside the span" if unit == "span" else f"grey: a {what} without a label"
    return {
        "name": "text-layers",
        "title": f"{head}: which layer each {what} rests on",
        "caption": f"{shown}, {rows} coloured by the layer of its largest "
        f"{value_name.split(' ', 1)[1]} (argmax over layers of the per-{what} attribution), "
        f"hover for the {what}, its true and predicted tag and the layer. A red outline: a "
        f"wrong prediction; {grey}.",
        "figure": disp.figure_,
        "key": True,
    }


class _Line:
    """One drawn row: its words (or tokens), and per word a layer (``-1``: none), a score and
    a true and predicted class."""

    def __init__(self, words: list[str], name: str, positions: list[int] | None = None) -> None:
        n = len(words)
        self.words, self.name = words, name
        self.positions = list(range(n)) if positions is None else positions
        self.layers = [-1] * n
        self.score: list[float | None] = [None] * n
        self.true: list[str | None] = [None] * n
        self.pred: list[str | None] = [None] * n

    @classmethod
    def blank(cls, words: list[str], name: str, positions: list[int] | None = None) -> _Line:
        return cls(words, name, positions)

    def set(self, j: int, layer: int, score: float, true: str, pred: str) -> None:
        self.layers[j], self.score[j], self.true[j], self.pred[j] = layer, score, true, pred
