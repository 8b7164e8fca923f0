"""``csv:PATH``: a CSV or TSV file with a text column and a label column."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError
from .common import _encode_labels, _single_split, _subset
from .dataset import Dataset
from .sources import DataOptions


def _load_csv(
    path_str: str,
    split: str | None,
    text_column: str | None,
    label_column: str | None,
    limit: int | None,
    seed: int,
    spec: str,
) -> Dataset:
    """A CSV (comma) or TSV (``.tsv``, tab) file with a header row.

    ``text_column`` defaults to ``"text"`` and ``label_column`` to ``"label"``. Labels that are
    all integers keep their numeric order; other labels are mapped to their sorted string names.
    """
    _single_split(split, "a csv file")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise DataError(f"csv file not found: {path}")
    text_column = text_column or "text"
    label_column = label_column or "label"
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        for role, col in (("text", text_column), ("label", label_column)):
            if col not in columns:
                raise DataError(
                    f"{path}: no {role} column {col!r}; the columns are {columns} "
                    f"(pass {role}_column=...)"
                )
        rows = [(r[text_column], r[label_column]) for r in reader]
    texts = ["" if t is None else t for t, _ in rows]
    labels, names = _encode_labels([lab for _, lab in rows], str(path))
    keep = _subset(labels, limit, seed)
    if keep is not None:
        texts = [texts[i] for i in keep]
        labels = labels[keep]
    return Dataset(
        name=path.stem,
        kind="text",
        labels=labels,
        label_names=names,
        texts=texts,
        spec=spec,
        options={
            "text_column": text_column,
            "label_column": label_column,
            "limit": limit,
            "seed": seed,
        },
    )


def load_csv(path: str, spec: str, options: DataOptions) -> Dataset:
    """The ``csv:`` loader: class labels, or numeric targets with ``target="regression"``."""
    o = options
    if o.target == "regression":
        from .regression import load_csv_targets

        return load_csv_targets(path, o.split, o.text_column, o.label_column, o.limit, o.seed, spec)
    return _load_csv(path, o.split, o.text_column, o.label_column, o.limit, o.seed, spec)
