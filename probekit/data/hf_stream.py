"""``hf:`` data read as a stream (``load_data("hf:...", streaming=True)``): a ``datasets``
``IterableDataset``, length known or not, read without downloading, preparing or memory-mapping
the whole dataset.

Text data: one pass over the text and label columns; the texts and labels are kept in memory.
Word data (a list-of-words column and a list-of-tags column): the same, into the word-level
dataset the data read whole gives (:func:`.hf.word_data`).

Image data: one pass over the label column (the labels are kept, ``(N,)`` int64); the images are
read afterwards, in order, as extraction asks for them. Encoded rows arrive in Arrow chunks of
:data:`CHUNK_ROWS`; only the rows asked for are decoded, and the rows before the first one asked
for (the shards a resumed extraction has already written, another rank's shards) are passed over
without being decoded. Reading backwards restarts the stream. At most one chunk of encoded rows
and the batch being asked for are held.

Both give the dataset the data read whole gives, fingerprint included: text data hashes its
texts, image data the ``datasets`` fingerprint of the source (a saved dataset's own, or the one
its builder gives the split), narrowed by ``limit`` as ``Dataset.select`` narrows it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .common import _subset
from .dataset import Dataset
from .hf import (
    _LABEL_COLUMNS,
    _TEXT_COLUMNS,
    _class_labels,
    _is_item,
    _is_word_column,
    _load_hf,
    _pick_column,
    _saved_split,
    _saved_to_disk,
    word_data,
)
from .sources import DataOptions

CHUNK_ROWS = 64
"""Encoded rows read from an image stream at a time."""

_LABEL_CHUNK_ROWS = 1024


def _load_hf_stream(
    name: str,
    split: str | None,
    text_column: str | None,
    label_column: str | None,
    limit: int | None,
    seed: int,
    spec: str,
) -> Dataset:
    """``hf:NAME``, ``hf:NAME:CONFIG`` or ``hf:DIR`` read as a stream; as :func:`.hf._load_hf`.

    Raises:
        DataError: ``datasets`` missing, a source, split or column that does not exist, a label
            column holding images.
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "hf: datasets need the 'datasets' package (pip install 'probekit-layers[hub]', or pip install datasets)"
        ) from e

    where = f"hf:{name}"
    ds, display, split, source_fingerprint = _open_stream(datasets, name, split)
    features = ds.features
    if features is None:  # some streams learn their columns from the first rows
        ds = ds._resolve_features()
        features = ds.features
    columns = list(features)
    item_col = _pick_column(
        columns, text_column, _TEXT_COLUMNS, "text", where, _is_item(datasets, features)
    )
    label_col = _pick_column(columns, label_column, _LABEL_COLUMNS, "label", where)
    if isinstance(features[label_col], datasets.Image):
        raise DataError(
            f"{where}: label column {label_col!r} holds images; the columns are "
            f"{columns} (pass label_column=...)"
        )
    options = {
        "split": split,
        "text_column": item_col,
        "label_column": label_col,
        "limit": limit,
        "seed": seed,
    }
    if _is_word_column(features[item_col]):  # word lists and their tags: one pass
        words: list[Any] = []
        tags: list[Any] = []
        for row in ds.select_columns([item_col, label_col]):
            words.append(row[item_col])
            tags.append(row[label_col])
        return word_data(
            words, tags, features[label_col], where=where, name=display, spec=spec, options=options
        )
    if not isinstance(features[item_col], datasets.Image):
        texts: list[str] = []
        raw: list[Any] = []
        for row in ds.select_columns([item_col, label_col]):
            texts.append("" if row[item_col] is None else str(row[item_col]))
            raw.append(row[label_col])
        labels, names = _class_labels(raw, features[label_col], label_col, where)
        keep = _subset(labels, limit, seed)
        if keep is not None:
            texts = [texts[i] for i in keep.tolist()]
            labels = labels[keep]
        return Dataset(
            name=display,
            kind="text",
            labels=labels,
            label_names=names,
            texts=texts,
            spec=spec,
            options=options,
        )

    raw = _column_values(ds, label_col)
    labels, names = _class_labels(raw, features[label_col], label_col, where)
    n_rows = len(labels)
    keep = _subset(labels, limit, seed)
    fp = source_fingerprint()
    if keep is not None:
        labels = labels[keep]
        fp = _subset_fingerprint(datasets, fp, n_rows, keep)

    def content_hash(h: Any) -> None:  # as the data read whole: the source's fingerprint
        h.update(fp.encode())

    reader = _ImageStreamReader(ds, item_col, keep, n_rows, where)
    return Dataset(
        name=display,
        kind="image",
        labels=labels,
        label_names=names,
        spec=spec,
        options=options,
        get_images=reader,
        content_hash=content_hash,
    )


def _open_stream(
    datasets: Any, name: str, split: str | None
) -> tuple[Any, str, str | None, Callable[[], str]]:
    """``(IterableDataset, display name, split, source fingerprint)`` of an ``hf:`` spec's rest.

    The fingerprint is the ``_fingerprint`` the data read whole would have before ``limit``.
    """
    local = Path(name).expanduser()
    try:
        if local.is_dir() and _saved_to_disk(local):
            saved, split = _saved_split(datasets, local, split)
            return (
                saved.to_iterable_dataset(),
                local.name,
                split,
                lambda: str(getattr(saved, "_fingerprint", "")),
            )
        ds_name, _, config = (str(local), "", "") if local.is_dir() else name.partition(":")
        split = split or "train"
        builder = datasets.load_dataset_builder(ds_name, config or None)
        stream = builder.as_streaming_dataset(split=split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; report them as one
        raise DataError(f"cannot stream hf:{name} split {split!r}: {e}") from e
    display = ds_name.rstrip("/").split("/")[-1] + (f"-{config}" if config else "")
    # what load_dataset(..., split=split) gives the prepared split (datasets.builder)
    return stream, display, split, lambda: str(builder._get_dataset_fingerprint(split))


def _column_values(stream: Any, column: str) -> list[Any]:
    """Every value of one column of a stream, in order, read as Arrow (no other column decoded)."""
    out: list[Any] = []
    for table in stream.select_columns([column]).with_format("arrow").iter(_LABEL_CHUNK_ROWS):
        out.extend(table.column(column).to_pylist())
    return out


def _subset_fingerprint(datasets: Any, fingerprint: str, n_rows: int, keep: np.ndarray) -> str:
    """The ``_fingerprint`` of ``Dataset.select(keep.tolist())`` on a dataset of ``n_rows`` rows
    fingerprinted ``fingerprint``: the same call on an empty-valued stand-in (``datasets``
    derives it from the parent's fingerprint and the call's arguments only)."""
    import pyarrow as pa

    stand_in = datasets.Dataset(pa.table({"row": pa.nulls(n_rows)}), fingerprint=fingerprint)
    return str(stand_in.select(keep.tolist())._fingerprint)


class _ImageStreamReader:
    """Decoded images of an image column of a stream, read forwards, chunk by chunk.

    ``reader([i, j, ...])`` returns the images of dataset rows ``i, j, ...`` (``PIL.Image``, as
    ``datasets.Image`` decodes them). Rows are read in increasing order; a row before the current
    chunk restarts the stream (``IterableDataset.skip``). Thread-safe. Attribute ``decoded``
    counts the images decoded so far.
    """

    def __init__(
        self, stream: Any, column: str, keep: np.ndarray | None, n_rows: int, where: str
    ) -> None:
        """Read ``column`` of ``stream``.

        Args:
            stream: a ``datasets.IterableDataset`` with an ``Image`` column ``column``.
            column: the image column.
            keep: ``(n,)`` increasing source rows of the dataset's rows (``limit``), or ``None``
                (every row).
            n_rows: rows of the stream (from the label pass).
            where: the spec, for error messages.
        """
        import datasets

        self._feature = stream.features[column]
        self._stream = stream.select_columns([column]).cast_column(
            column, datasets.Image(mode=self._feature.mode, decode=False)
        )
        self._tokens = getattr(stream, "_token_per_repo_id", None)
        self._column = column
        self._keep = None if keep is None else keep.tolist()
        self._n_rows = n_rows
        self._where = where
        self._lock = threading.Lock()
        self._chunks: Iterator[Any] | None = None
        self._chunk: Any = None
        self._start = 0  # source row of the current chunk's first row
        self._stop = 0  # source row after its last
        self.decoded = 0

    def __call__(self, indices: list[int]) -> list[Any]:
        """The images of dataset rows ``indices``."""
        with self._lock:
            return [self._decode(self._keep[i] if self._keep is not None else i) for i in indices]

    def _decode(self, row: int) -> Any:
        value = self._cell(row)
        if value is None or (
            isinstance(value, dict) and not value.get("bytes") and not value.get("path")
        ):
            raise DataError(f"{self._where}: row {row} has no image in column {self._column!r}")
        self.decoded += 1
        return self._feature.decode_example(value, token_per_repo_id=self._tokens)

    def _cell(self, row: int) -> Any:
        """The encoded value (``{"bytes", "path"}``) of source row ``row``."""
        if self._chunks is None or row < self._start:
            self._open(row)
        assert self._chunks is not None
        while row >= self._stop:
            table = next(self._chunks, None)
            if table is None:
                raise DataError(
                    f"{self._where}: the stream ended after {self._stop} rows, but "
                    f"its label column had {self._n_rows} (did the data change?)"
                )
            self._chunk, self._start, self._stop = table, self._stop, self._stop + table.num_rows
        return self._chunk.column(0)[row - self._start].as_py()

    def _open(self, row: int) -> None:
        """Start reading at source row ``row`` (the rows before are skipped as Arrow, undecoded)."""
        stream = self._stream.skip(row) if row else self._stream
        self._chunks = iter(stream.with_format("arrow").iter(CHUNK_ROWS))
        self._chunk, self._start, self._stop = None, row, row


def load_hf(name: str, spec: str, options: DataOptions) -> Dataset:
    """The ``hf:`` loader: ``datasets.load_dataset``/``load_from_disk`` (:mod:`.hf`), or a stream
    (``streaming=True``, here; this module imports :mod:`.hf`, not the other way round)."""
    o = options
    if o.streaming:
        return _load_hf_stream(name, o.split, o.text_column, o.label_column, o.limit, o.seed, spec)
    return _load_hf(name, o.split, o.text_column, o.label_column, o.limit, o.seed, spec)
