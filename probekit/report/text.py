"""The report's text view of a word-level run: some test sentences drawn as their words, each
word coloured by the layer its prediction rests on.

For every word of a shown sentence, the layer is the argmax over layers of one head's per-row
attribution saved by the attribute stage (``attribution/<head>.safetensors``): its
``layer_weights`` when it has them (the best fusion head with weights), else its ``ablation``
drops. Hovering a word shows its true and predicted class (that head's ``predictions``) and the
layer. Only a cache with ``unit == "word"`` gets the view.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TEXT_VIEW_SENTENCES", "text_view_figure", "text_view_rows"]

TEXT_VIEW_SENTENCES = 12
"""Most test sentences the text view draws."""


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
) -> dict[str, Any] | None:
    """The view of ``head`` (its attribution file ``f``, its ``layers``), as a dict of
    :class:`probekit.report.Figure` fields; ``None`` unless the cache's unit is ``"word"``."""
    from ..viz.text import WordLayerDisplay

    if cache.unit != "word" or not cache.texts:
        return None
    key = "layer_weights" if "layer_weights" in f else "ablation"
    chosen = text_view_rows(cache, test, k, seed)
    if not chosen:
        return None
    flat = np.unique(np.concatenate([p for _, p in chosen]))
    values = _rows(f, key, flat, chunk_bytes)  # (len(flat), L)
    at = {int(p): i for i, p in enumerate(flat)}
    predictions = np.asarray(f["predictions"])
    labels, positions = np.asarray(cache.labels), np.asarray(cache.positions)
    test = np.asarray(test)
    words, colour, true, pred, score, names = [], [], [], [], [], []
    for sample, pos in chosen:
        ws = cache.texts[sample].split(" ")
        n = len(ws)
        lay = [-1] * n
        tr: list[str | None] = [None] * n
        pr: list[str | None] = [None] * n
        sc: list[float | None] = [None] * n
        for p in pos:
            j = int(positions[test[p]])
            v = values[at[int(p)]]
            lay[j] = int(np.argmax(v))
            sc[j] = float(v[lay[j]])
            tr[j] = str(label_names[int(labels[test[p]])])
            pr[j] = str(label_names[int(predictions[p])])
        words.append(ws)
        colour.append(lay)
        true.append(tr)
        pred.append(pr)
        score.append(sc)
        names.append(f"#{sample}")
    value_name = f"{head} layer weight" if key == "layer_weights" else f"{head} ablation drop"
    disp = WordLayerDisplay(words, colour, layers, true, pred, score, names, value_name).plot()
    shown = f"{len(chosen)} test sentences (a random draw, seed {seed})"
    return {
        "name": "text-layers",
        "title": f"{head}: which layer each word rests on",
        "caption": f"{shown}, one row each (#: the input's number); each word coloured by "
        f"the layer of its largest {value_name.split(' ', 1)[1]} (argmax over layers of the "
        f"per-word attribution), hover for the word, its true and predicted tag and the "
        "layer. A red outline: a wrong prediction; grey: a word without a label.",
        "figure": disp.figure_,
        "key": True,
    }
