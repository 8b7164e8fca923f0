"""Rows below the sample: one cache row per labelled word, or per sub-word token.

``extract(model, data, out, unit="word")`` on word-level data (``data.units``, see
:mod:`probekit.data.units`) tokenizes each sample's words with ``is_split_into_words=True`` and
maps words to their sub-word tokens through the tokenizer's ``word_ids()``; special tokens belong
to no word and are never pooled. A word's feature is the ``mean`` (default), ``first`` or ``last``
of its sub-words' hidden states, pooled inside the forward hook, so a full ``(B, T, D)`` layer is
never kept. ``unit="token"`` makes every sub-word token of a labelled word a row (labelled with
its word's tag). A word whose tokens were all cut off by the model's token limit gives no row;
the manifest counts them (``info.dropped_words``).

Long inputs (``stride=k``, word rows): a text longer than the model's window is split into
overlapping windows (the tokenizer's ``return_overflowing_tokens`` with ``k`` tokens of overlap,
each window with its own special tokens), and each word's feature is taken from the window where
it has the most context: the largest ``min(tokens before it, tokens after it)`` in that window
(the first such window on a tie), as is standard for token classification.

Spans (``unit="span"``, edge probing): every labelled span ``[start, end)`` of words is a row,
its feature the ``mean`` of its words' features (each word pooled from its sub-words as above)
or its first and last word concatenated (``span_pooling="endpoints"``); a pair of spans (a
relation between two) concatenates the two spans' features. The row's position is the span's
index in its sample.

Rows are in sample order, then word (token, span) order; each carries its sample and position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import Dataset, PatchUnits, WordUnits
from ..errors import ConfigError, DataError
from ..models.loading import LoadedModel
from .options import SPAN_POOLINGS, WORD_POOLINGS

__all__ = ["SpanGroups", "UnitPlan", "plan_units", "pool_spans", "pool_units", "unit_preprocess"]


@dataclass(frozen=True)
class UnitPlan:
    """Which rows each sample gives, known before any forward pass (so shards can be laid out).

    Attributes:
        unit: ``"word"`` or ``"token"``.
        word_pooling: one of :data:`WORD_POOLINGS` (``unit="word"``).
        positions: per sample, ``(n_rows,)`` int64: the word index (or token index) of each row.
        labels: per sample, ``(n_rows,)`` int64 class indices.
        n_dropped: labelled words that gave no row (every token past the model's limit).
        stride: tokens of overlap between windows of a long input, or ``None`` (truncate).
        windows: with ``stride``: per sample, ``(n_rows,)`` the window each row is read from.
        span_pooling: ``unit="span"``: one of :data:`SPAN_POOLINGS`.
        spans: ``unit="span"``: per sample, the ``(n_rows, 2 | 4)`` word ranges of its rows.
    """

    unit: str
    word_pooling: str
    positions: list[np.ndarray]
    labels: list[np.ndarray]
    n_dropped: int
    stride: int | None = None
    windows: list[np.ndarray] | None = None
    span_pooling: str = "mean"
    spans: list[np.ndarray] | None = None

    @property
    def width_factor(self) -> int:
        """A row's width over the layer's: 2 per endpoints, 2 per pair of spans."""
        if self.spans is None:
            return 1
        pair = any(s.shape[1] == 4 for s in self.spans if len(s))
        return (2 if self.span_pooling == "endpoints" else 1) * (2 if pair else 1)

    def rows(self, start: int, stop: int) -> int:
        """Rows of samples ``start..stop-1``."""
        return int(sum(len(p) for p in self.positions[start:stop]))

    def columns(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(labels, samples, positions)`` of the rows of samples ``start..stop-1``."""
        counts = [len(p) for p in self.positions[start:stop]]
        return (
            np.concatenate(self.labels[start:stop]),
            np.repeat(np.arange(start, stop, dtype=np.int64), counts),
            np.concatenate(self.positions[start:stop]),
        )


def _words(data: Dataset) -> WordUnits:
    assert isinstance(data.units, WordUnits)  # checked by plan_units
    return data.units


def _check(model: LoadedModel, data: Dataset, unit: str, word_pooling: str) -> Any:
    if unit not in ("word", "token", "span"):
        raise ConfigError(f"unit must be sample, word, token or span, got {unit!r}")
    if word_pooling not in WORD_POOLINGS:
        raise ConfigError(
            f"unknown word pooling {word_pooling!r}; choose from {', '.join(WORD_POOLINGS)}"
        )
    if data.units is None:
        raise ConfigError(
            f"unit={unit} needs word-level data (words with one tag each: conllu:, jsonl:); "
            f"{data.name} has one label per sample"
        )
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"unit={unit} needs a text model with a fast tokenizer (word_ids); "
            f"{model.spec} has {'none' if tokenizer is None else type(tokenizer).__name__}"
        )
    return tokenizer


def _encode(
    tokenizer: Any,
    words: Sequence[Sequence[str]],
    limit: int | None,
    stride: int | None = None,
    **kw: Any,
) -> Any:
    if stride is not None:
        kw.update(stride=stride, return_overflowing_tokens=True)
    return tokenizer(
        [list(w) for w in words],
        is_split_into_words=True,
        truncation=limit is not None,
        max_length=limit,
        **kw,
    )


def _windows_of(enc: Any, n: int) -> list[list[int]]:
    """The encoding rows (windows) of each of ``n`` samples, in order."""
    rows: list[list[int]] = [[] for _ in range(n)]
    mapping = enc.get("overflow_to_sample_mapping")
    for r in range(len(enc["input_ids"])):
        rows[int(mapping[r]) if mapping is not None else r].append(r)
    return rows


def _best_window(
    windows: list[tuple[dict[int, list[int]], int, int]], word: int
) -> tuple[int, list[int]] | None:
    """``(k, tokens)``: of the ``windows`` (each ``(word -> tokens, first real token, last real
    token)``) holding the most of ``word``'s tokens (all of them, unless the word is longer than
    the overlap), the one where it has the most context on both sides, and its tokens there;
    ``None`` when no window holds any."""
    found = []
    for k, (tokens_of, first, last) in enumerate(windows):
        tokens = tokens_of.get(word)
        if tokens:
            score = min(tokens[0] - first, last - tokens[-1])
            found.append((len(tokens), score, -k, tokens))
    if not found:
        return None
    _, _, k, tokens = max(found, key=lambda f: f[:3])  # most tokens, most context, first
    return -k, tokens


def _word_tokens(word_ids: Sequence[int | None]) -> dict[int, list[int]]:
    """``{word: [token positions]}`` from one encoding's ``word_ids()`` (specials: ``None``)."""
    out: dict[int, list[int]] = {}
    for t, w in enumerate(word_ids):
        if w is not None:
            out.setdefault(int(w), []).append(t)
    return out


def plan_units(
    model: LoadedModel,
    data: Dataset,
    unit: str,
    word_pooling: str,
    stride: int | None = None,
    span_pooling: str = "mean",
) -> UnitPlan:
    """Tokenize every sample once and list its rows.

    Raises:
        ConfigError: not word-level data, no fast tokenizer, a bad ``unit``, pooling or stride.
        DataError: no labelled word gives a row.
    """
    if isinstance(data.units, PatchUnits):
        if stride is not None:
            raise ConfigError("stride applies to text (unit=word), not to image patches")
        return _plan_patches(model, data, unit)
    tokenizer = _check(model, data, unit, word_pooling)
    if unit == "span":
        if stride is not None:
            raise ConfigError("stride applies to unit=word, not unit=span")
        return _plan_spans(model, data, word_pooling, span_pooling)
    if stride is not None:
        if unit != "word":
            raise ConfigError(f"stride applies to unit=word, not unit={unit}")
        return _plan_windows(model, data, word_pooling, int(stride))
    positions, labels, dropped = [], [], 0
    units = _words(data)
    words = units.words
    for s in range(0, len(words), 512):
        enc = _encode(tokenizer, words[s : s + 512], model.max_length)
        for b in range(len(enc["input_ids"])):
            tags = units.labels[s + b]
            tokens = _word_tokens(enc.word_ids(b))
            if unit == "word":
                pos = [w for w in range(len(tags)) if tags[w] >= 0 and w in tokens]
                dropped += int((tags >= 0).sum()) - len(pos)
                lab = [int(tags[w]) for w in pos]
            else:
                pairs = [(t, int(tags[w])) for w, ts in tokens.items() for t in ts if tags[w] >= 0]
                dropped += sum(1 for w in range(len(tags)) if tags[w] >= 0 and w not in tokens)
                pos, lab = [t for t, _ in pairs], [lab for _, lab in pairs]
            positions.append(np.asarray(pos, np.int64))
            labels.append(np.asarray(lab, np.int64))
    if not any(len(p) for p in positions):
        raise DataError(f"{data.name}: no labelled word gives a row for {model.spec}")
    return UnitPlan(unit, word_pooling, positions, labels, dropped)


def _plan_spans(model: LoadedModel, data: Dataset, word_pooling: str, how: str) -> UnitPlan:
    """Span rows: every labelled span whose words all kept a token."""
    units = _words(data)
    if units.spans is None or units.span_labels is None:
        raise ConfigError(f"unit=span needs span data (spans of words); {data.name} has none")
    if how not in SPAN_POOLINGS:
        raise ConfigError(f"unknown span pooling {how!r}; choose from {', '.join(SPAN_POOLINGS)}")
    positions, labels, spans, dropped = [], [], [], 0
    for s in range(0, len(units), 512):
        enc = _encode(model.tokenizer, units.words[s : s + 512], model.max_length)
        for b in range(len(enc["input_ids"])):
            kept = _word_tokens(enc.word_ids(b))
            ranges, tags = units.spans[s + b], units.span_labels[s + b]
            keep = [
                j
                for j in range(len(ranges))
                if tags[j] >= 0
                and all(
                    w in kept
                    for a, e in zip(ranges[j, 0::2], ranges[j, 1::2], strict=True)
                    for w in range(a, e)
                )
            ]
            dropped += int((tags >= 0).sum()) - len(keep)
            positions.append(np.asarray(keep, np.int64))
            labels.append(tags[keep].astype(np.int64))
            spans.append(ranges[keep])
    if not any(len(p) for p in positions):
        raise DataError(f"{data.name}: no labelled span gives a row for {model.spec}")
    return UnitPlan("span", word_pooling, positions, labels, dropped, span_pooling=how, spans=spans)


def _plan_patches(model: LoadedModel, data: Dataset, unit: str) -> UnitPlan:
    """Token rows of a vision transformer: every labelled patch, its position its index on the
    patch grid (prefix tokens never a row). The grid is checked on one image first."""
    assert isinstance(data.units, PatchUnits)
    if unit != "token" or model.kind != "image" or model.arch != "transformer":
        raise ConfigError(
            f"patch labels give unit=token rows of a vision transformer; got unit={unit} "
            f"on {model.spec} ({model.arch})"
        )
    from ..models.hooks import LayerRecorder

    with torch.no_grad(), LayerRecorder(model.model, model.layers[:1]) as rec:
        inputs = model.preprocess(data.get_items([0]))
        device = model.device
        hidden = rec.run(model.forward, {k: v.to(device) for k, v in inputs.items()})
    n_patches = int(next(iter(hidden.values())).shape[1]) - model.n_prefix_tokens
    h, w = data.units.grid
    if h * w != n_patches:
        raise ConfigError(
            f"patch labels on a {h}x{w} grid, but {model.spec} makes {n_patches} patch tokens"
        )
    flat = data.units.labels.reshape(len(data), -1)
    positions = [np.flatnonzero(row >= 0).astype(np.int64) for row in flat]
    labels = [row[pos] for row, pos in zip(flat, positions, strict=True)]
    if not any(len(p) for p in positions):
        raise DataError(f"{data.name}: no patch has a label")
    return UnitPlan("token", "mean", positions, labels, 0)


def _plan_windows(model: LoadedModel, data: Dataset, word_pooling: str, stride: int) -> UnitPlan:
    """:func:`plan_units` for word rows read from overlapping windows of long inputs."""
    limit = model.max_length
    if limit is None or not 0 <= stride < limit // 2:
        raise ConfigError(f"stride must be in 0..{(limit or 2) // 2 - 1} tokens, got {stride}")
    units = _words(data)
    words = units.words
    positions, labels, windows, dropped = [], [], [], 0
    for s in range(0, len(words), 256):
        chunk = words[s : s + 256]
        enc = _encode(model.tokenizer, chunk, limit, stride)
        for b, rows in enumerate(_windows_of(enc, len(chunk))):
            tags = units.labels[s + b]
            maps = [_word_tokens(enc.word_ids(r)) for r in rows]  # once per window
            views = [
                (m, min(t[0] for t in m.values()), max(t[-1] for t in m.values())) for m in maps
            ]
            pos, lab, win = [], [], []
            for w in np.flatnonzero(tags >= 0).tolist():
                found = _best_window(views, w)
                if found is None:
                    dropped += 1
                    continue
                pos.append(w)
                lab.append(int(tags[w]))
                win.append(found[0])
            positions.append(np.asarray(pos, np.int64))
            labels.append(np.asarray(lab, np.int64))
            windows.append(np.asarray(win, np.int64))
    if not any(len(p) for p in positions):
        raise DataError(f"{data.name}: no labelled word gives a row for {model.spec}")
    return UnitPlan("word", word_pooling, positions, labels, dropped, stride, windows)


def unit_preprocess(
    model: LoadedModel, data: Dataset, plan: UnitPlan
) -> Callable[[int, int], tuple[dict[str, Tensor], Any]]:
    """``prep(start, stop) -> (inputs, groups)`` for samples ``start..stop-1``.

    ``groups`` lists, row by row, the flat token positions ``b * T + t`` that the row pools (one
    for a token row; a word's sub-words for a word row), in the padded batch (left or right
    padding alike).
    """
    if isinstance(data.units, PatchUnits):
        return _patch_preprocess(model, data, plan)
    if plan.spans is not None:
        return _span_preprocess(model, data, plan)
    tokenizer = model.tokenizer
    words = _words(data).words

    def prep(start: int, stop: int) -> tuple[dict[str, Tensor], list[np.ndarray]]:
        enc = _encode(
            tokenizer,
            words[start:stop],
            model.max_length,
            plan.stride,
            padding=True,
            return_tensors="pt",
        )
        width = int(enc["input_ids"].shape[1])
        groups: list[np.ndarray] = []
        if plan.windows is not None:  # each row from its chosen window
            for b, rows in enumerate(_windows_of(enc, stop - start)):
                for p, k in zip(plan.positions[start + b], plan.windows[start + b], strict=True):
                    r = rows[int(k)]
                    chosen = _word_tokens(enc.word_ids(r))[int(p)]
                    groups.append(r * width + np.asarray(chosen, np.int64))
            assert model.inputs is not None
            return model.inputs(enc), groups
        for b in range(stop - start):
            if plan.unit == "word":
                tokens = _word_tokens(enc.word_ids(b))
                groups += [
                    b * width + np.asarray(tokens[int(p)], np.int64)
                    for p in plan.positions[start + b]
                ]
            else:  # a token's position without padding -> its place in the padded row
                at = b * width + _shift(enc, b)
                groups += [np.asarray([at + int(p)], np.int64) for p in plan.positions[start + b]]
        assert model.inputs is not None  # a text model (checked by plan_units)
        return model.inputs(enc), groups

    return prep


@dataclass(frozen=True)
class SpanGroups:
    """What a batch of span rows pools: its words' tokens, then each row's parts of words.

    Attributes:
        words: per word used, its flat token positions ``b * T + t`` (as in :func:`pool_units`).
        parts: per row, the index arrays into ``words`` whose means are concatenated (one part
            per span, or a span's first and last word with endpoints).
        word_pooling: how a word's sub-words are pooled.
    """

    words: list[np.ndarray]
    parts: list[list[np.ndarray]]
    word_pooling: str

    def __len__(self) -> int:
        return len(self.parts)


def _span_preprocess(
    model: LoadedModel, data: Dataset, plan: UnitPlan
) -> Callable[[int, int], tuple[dict[str, Tensor], SpanGroups]]:
    words = _words(data).words
    spans = plan.spans
    assert spans is not None

    def prep(start: int, stop: int) -> tuple[dict[str, Tensor], SpanGroups]:
        enc = _encode(
            model.tokenizer, words[start:stop], model.max_length, padding=True, return_tensors="pt"
        )
        width = int(enc["input_ids"].shape[1])
        index: dict[tuple[int, int], int] = {}
        word_groups: list[np.ndarray] = []
        parts: list[list[np.ndarray]] = []
        for b in range(stop - start):
            tokens = _word_tokens(enc.word_ids(b))

            def ids(ws: Sequence[int], b: int = b, tokens: dict = tokens) -> np.ndarray:
                for w in ws:
                    if (b, w) not in index:
                        index[(b, w)] = len(word_groups)
                        word_groups.append(b * width + np.asarray(tokens[w], np.int64))
                return np.asarray([index[(b, w)] for w in ws], np.int64)

            for row in spans[start + b]:
                row_parts = []
                for a, e in zip(row[0::2].tolist(), row[1::2].tolist(), strict=True):
                    if plan.span_pooling == "endpoints":
                        row_parts += [ids([a]), ids([e - 1])]
                    else:
                        row_parts.append(ids(range(a, e)))
                parts.append(row_parts)
        assert model.inputs is not None
        return model.inputs(enc), SpanGroups(word_groups, parts, plan.word_pooling)

    return prep


def pool_spans(hidden: Tensor, groups: SpanGroups) -> Tensor:
    """Pool a layer into span rows: ``(B, T, D)`` -> ``(R, n_parts * D)`` float32: each part the
    mean of its words' vectors (each word pooled from its sub-words), the parts concatenated."""
    words = pool_units(hidden, groups.words, groups.word_pooling)  # (W, D)
    n_parts = len(groups.parts[0]) if groups.parts else 1
    dim = words.shape[1]
    out = torch.empty(len(groups), n_parts * dim, dtype=torch.float32, device=hidden.device)
    for j in range(n_parts):
        by_size: dict[int, list[int]] = {}
        for r, row in enumerate(groups.parts):
            by_size.setdefault(len(row[j]), []).append(r)
        for rows in by_size.values():
            index = torch.as_tensor(
                np.stack([groups.parts[r][j] for r in rows]), device=words.device
            )
            out[torch.as_tensor(rows, device=hidden.device), j * dim : (j + 1) * dim] = words[
                index
            ].mean(dim=1)
    return out


def _patch_preprocess(
    model: LoadedModel, data: Dataset, plan: UnitPlan
) -> Callable[[int, int], tuple[dict[str, Tensor], list[np.ndarray]]]:
    """``prep`` for patch rows: image ``b``'s patch ``p`` is token ``n_prefix + p``."""
    assert isinstance(data.units, PatchUnits)
    h, w = data.units.grid
    k = model.n_prefix_tokens
    width = k + h * w

    def prep(start: int, stop: int) -> tuple[dict[str, Tensor], list[np.ndarray]]:
        inputs = model.preprocess(data.get_items(range(start, stop)))
        groups = [
            np.asarray([b * width + k + int(p)], np.int64)
            for b in range(stop - start)
            for p in plan.positions[start + b]
        ]
        return inputs, groups

    return prep


def _shift(enc: Any, b: int) -> int:
    """Left padding before sample ``b``'s first token (0 with right padding)."""
    mask = enc["attention_mask"][b]
    return int(torch.argmax(mask).item()) if mask[0] == 0 else 0


def pool_units(hidden: Tensor, groups: Sequence[np.ndarray], how: str) -> Tensor:
    """Pool a layer's tokens into rows: ``(B, T, D)`` -> ``(R, D)`` float32.

    Args:
        hidden: one layer's output for the batch.
        groups: per row, flat token positions ``b * T + t`` (see :func:`unit_preprocess`).
        how: ``mean`` (of the sub-words, in float32), ``first`` or ``last``.

    One gather takes every row's first (``last``: last) token, in row order; ``mean`` then adds
    the other sub-words of the multi-token rows (one gather, one ``index_add_``, in token
    order) and divides those rows by their token counts. Most words are one token, so the
    work is about one ``(R, D)`` gather (a per-size gather and scatter cost 3-10x more).
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    device = hidden.device
    n = len(groups)
    if n == 0:
        return torch.empty(0, flat.shape[1], dtype=torch.float32, device=device)
    pick = -1 if how == "last" else 0
    heads = np.fromiter((int(g[pick]) for g in groups), np.int64, n)
    out = flat.index_select(0, torch.from_numpy(heads).to(device)).float()  # (R, D)
    if how != "mean":
        return out
    lengths = np.fromiter((len(g) for g in groups), np.int64, n)
    multi = np.flatnonzero(lengths > 1)
    if multi.size:
        rest = np.concatenate([groups[r][1:] for r in multi.tolist()]).astype(np.int64)
        into = np.repeat(multi, lengths[multi] - 1)
        tail = flat.index_select(0, torch.from_numpy(rest).to(device)).float()
        out.index_add_(0, torch.from_numpy(into).to(device), tail)
        rows = torch.from_numpy(multi).to(device)
        counts = torch.from_numpy(lengths[multi]).to(device=device, dtype=torch.float32)
        out[rows] = out[rows] / counts[:, None]
    return out
