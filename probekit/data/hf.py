"""``hf:NAME``, ``hf:NAME:CONFIG`` and ``hf:DIR``: Hugging Face datasets (hub, save_to_disk or a
folder of data files), read whole; :mod:`.hf_stream` reads them as a stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .common import _encode_labels, _subset
from .dataset import Dataset
from .word_data import tagged_words

_TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "image", "img")
_LABEL_COLUMNS = ("label", "labels", "class", "target")


def _class_labels(
    raw: list[Any], feat: Any, label_col: str, where: str
) -> tuple[np.ndarray, list[str]]:
    """``(N,)`` int64 class indices and class names of a label column (ClassLabel or raw values)."""
    import datasets

    if isinstance(feat, datasets.ClassLabel):
        labels = np.asarray(raw, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise DataError(f"{where}: label column {label_col!r} has unlabelled rows (-1)")
        return labels, list(feat.names)
    return _encode_labels(raw, where)


def _pick_column(
    columns: list[str],
    given: str | None,
    defaults: Sequence[str],
    role: str,
    where: str,
    fallback: Callable[[str], bool] | None = None,
) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(f"{where}: no {role} column {given!r}; the columns are {columns}")
        return given
    for c in defaults:
        if c in columns:
            return c
    if fallback is not None:
        for c in columns:
            if fallback(c):
                return c
    raise DataError(
        f"{where}: cannot tell which column holds the {role}s; the columns are "
        f"{columns} (pass {role}_column=...)"
    )


def _load_hf(
    name: str,
    split: str | None,
    text_column: str | None,
    label_column: str | None,
    limit: int | None,
    seed: int,
    spec: str,
) -> Dataset:
    """A Hugging Face dataset: ``hf:NAME``, ``hf:NAME:CONFIG``, or ``hf:DIR`` (save_to_disk or data files).

    ``split`` defaults to ``"train"`` (or the only split of a saved ``DatasetDict``). The item
    column defaults to the first of ``text, sentence, content, review, document, image, img``,
    else the first string or image column; the label column to ``label, labels, class, target``.
    A ``ClassLabel`` column gives ``label_names``; other labels are mapped to sorted names. An
    ``Image`` column makes image data (decoded lazily). A list-of-strings item column (e.g.
    ``text_column="tokens"``) with a list label column (``"tags"``, ``"upos"``: strings, or a
    list of ``ClassLabel``) makes word-level data (:func:`word_data`). The fingerprint uses the dataset's own
    ``_fingerprint`` plus the labels (and texts).

    The same data read as a stream: :func:`.hf_stream._load_hf_stream`.
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "hf: datasets need the 'datasets' package (pip install 'probekit-layers[hub]', or pip install datasets)"
        ) from e

    local = Path(name).expanduser()
    if local.is_dir() and _saved_to_disk(local):
        ds, split = _saved_split(datasets, local, split)
        display = local.name
    else:  # a hub name, or a folder of data files (json, csv, parquet, ...)
        ds_name, _, config = (str(local), "", "") if local.is_dir() else name.partition(":")
        split = split or "train"
        try:
            ds = datasets.load_dataset(ds_name, config or None, split=split)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; report them as one
            raise DataError(f"cannot load hf:{name} split {split!r}: {e}") from e
        display = ds_name.rstrip("/").split("/")[-1] + (f"-{config}" if config else "")
    where = f"hf:{name}"
    features = ds.features
    columns = list(ds.column_names)

    is_item = _is_item(datasets, features)
    item_col = _pick_column(columns, text_column, _TEXT_COLUMNS, "text", where, is_item)
    label_col = _pick_column(columns, label_column, _LABEL_COLUMNS, "label", where)
    options = {
        "split": split,
        "text_column": item_col,
        "label_column": label_col,
        "limit": limit,
        "seed": seed,
    }
    if _is_word_column(features[item_col]):
        return word_data(
            list(ds[item_col]),
            list(ds[label_col]),
            features[label_col],
            where=where,
            name=display,
            spec=spec,
            options=options,
        )
    raw = list(ds[label_col])
    labels, names = _class_labels(raw, features[label_col], label_col, where)
    keep = _subset(labels, limit, seed)
    if keep is not None:
        ds = ds.select(keep.tolist())
        labels = labels[keep]
    if isinstance(features[item_col], datasets.Image):
        fp = str(getattr(ds, "_fingerprint", ""))

        def get_image(i: int) -> Any:
            image = ds[int(i)][item_col]
            if image is None:
                raise DataError(f"{where}: row {int(i)} has no image in column {item_col!r}")
            return image

        def content_hash(h: Any) -> None:
            h.update(fp.encode())

        return Dataset(
            name=display,
            kind="image",
            labels=labels,
            label_names=names,
            spec=spec,
            options=options,
            get_image=get_image,
            content_hash=content_hash,
        )
    texts = ["" if t is None else str(t) for t in ds[item_col]]
    return Dataset(
        name=display,
        kind="text",
        labels=labels,
        label_names=names,
        texts=texts,
        spec=spec,
        options=options,
    )


def _saved_to_disk(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("dataset_dict.json", "state.json"))


def _saved_split(datasets: Any, local: Path, split: str | None) -> tuple[Any, str | None]:
    """``(datasets.Dataset, split)`` of a ``save_to_disk`` folder: one split of a ``DatasetDict``
    (default ``"train"`` or its only split) or the one saved ``Dataset``."""
    try:
        ds = datasets.load_from_disk(str(local))
    except FileNotFoundError as e:
        raise DataError(f"{local} is not a dataset saved with save_to_disk: {e}") from e
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds.keys())
        if split is None:
            split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
        if split not in splits:
            raise DataError(f"{local}: no split {split!r}; the splits are {splits}")
        return ds[split], split
    if split not in (None, "train"):
        raise DataError(f"{local} holds a single split; got split={split!r}")
    return ds, split


def _is_item(datasets: Any, features: Any) -> Callable[[str], bool]:
    """Whether a column can hold the items: an ``Image``, a string or a list-of-strings column."""

    def is_item(c: str) -> bool:
        f = features[c]
        return isinstance(f, datasets.Image) or _is_word_column(f) or _is_string(f)

    return is_item


def _is_string(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _list_item(feature: Any) -> Any | None:
    """The element feature of a list column (``List``/``Sequence``/``LargeList``), else ``None``."""
    if isinstance(feature, list) and len(feature) == 1:  # the old [Value(...)] spelling
        return feature[0]
    if type(feature).__name__ in ("List", "Sequence", "LargeList"):
        return getattr(feature, "feature", None)
    return None


def _is_word_column(feature: Any) -> bool:
    """A column of word lists: a list of strings per row."""
    return _is_string(_list_item(feature))


def word_data(
    words: list[Any],
    tags: list[Any],
    tag_feature: Any,
    *,
    where: str,
    name: str,
    spec: str,
    options: dict[str, Any],
) -> Dataset:
    """Word-level data of an ``hf:`` dataset (read whole or streamed): per row a list of words
    and a list of as many tags (strings or ints, or ``ClassLabel`` indices; ``None`` / ``-1``:
    unlabelled). The classes are the ``ClassLabel`` names, else the sorted distinct tags; a
    ``limit`` subset is stratified by each row's most frequent tag, as for ``conllu:``.

    Raises:
        DataError: a label column that is not a list per row, rows whose tags do not match their
            words one to one.
    """
    inner = _list_item(tag_feature)
    if inner is None:
        raise DataError(
            f"{where}: the text column holds word lists, so the label column needs a list of "
            f"tags per row (one per word); {options['label_column']!r} is {tag_feature}"
        )
    class_names = list(inner.names) if type(inner).__name__ == "ClassLabel" else None
    out_words: list[list[str]] = []
    out_tags: list[list[Any]] = []
    for i, (ws, ts) in enumerate(zip(words, tags, strict=True)):
        ws, ts = list(ws or []), list(ts or [])
        if len(ws) != len(ts):
            raise DataError(f"{where}: row {i} has {len(ws)} words but {len(ts)} tags")
        out_words.append([str(w) for w in ws])
        if class_names is not None:
            out_tags.append([None if t is None or t < 0 else class_names[t] for t in ts])
        else:
            out_tags.append([None if t is None else str(t) for t in ts])
    names = class_names or sorted({t for row in out_tags for t in row if t is not None})
    return tagged_words(
        out_words,
        out_tags,
        name=name,
        spec=spec,
        options=options,
        label_names=names,
        limit=options["limit"],
        seed=options["seed"],
    )
