"""Continuous targets (``load_data(spec, target="regression")``): ``csv:PATH`` with a numeric
column, and ``bundled:vader-valence-scores``.

A regression dataset is a text :class:`~probekit.data.Dataset` whose ``labels`` are all 0 (one
label name, the target's name) and whose float ``targets`` field ``(N,)`` holds the values;
their sha256 is one of the options hashed into the fingerprint.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .common import _package_dir, _single_split, _subset
from .dataset import Dataset
from .hf import _LABEL_COLUMNS
from .sources import DATA_TARGETS

__all__ = ["DATA_TARGETS", "REGRESSION_SOURCES", "load_csv_targets", "load_regression"]

REGRESSION_SOURCES = ("csv:PATH", "bundled:vader-valence-scores")


def load_regression(
    scheme: str, rest: str, spec: str, target: str, split: str | None, limit: int | None, seed: int
) -> Dataset:
    """A bundled dataset with continuous ``targets`` (see :func:`~probekit.data.load_data`,
    ``target="regression"``)."""
    if target != "regression":
        raise DataError(
            f"{spec} holds continuous scores; load it with target='regression' "
            "(probekit run --task regression)"
        )
    if scheme == "bundled" and rest == "vader-valence-scores":
        return _load_vader_scores(split, limit, seed, spec)
    raise DataError(f"regression targets come from {', '.join(REGRESSION_SOURCES)}; got {spec!r}")


def _read_vader_lexicon() -> dict[str, float]:
    """Token -> mean valence of vaderSentiment's lexicon, in file order (a later entry wins)."""
    path = _package_dir("vaderSentiment") / "vader_lexicon.txt"
    if not path.is_file():
        raise DataError(f"vader lexicon not found at {path}")
    valence: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2 or not parts[0]:
                continue
            valence.pop(parts[0], None)
            valence[parts[0]] = float(parts[1])
    return valence


def _regression_dataset(
    name: str,
    texts: list[str],
    targets: np.ndarray,
    target_name: str,
    spec: str,
    options: dict[str, Any],
    limit: int | None,
    seed: int,
) -> Dataset:
    """Text data with float ``targets``; ``limit`` keeps a seeded random subset in file order."""
    keep = _subset(np.zeros(len(texts), dtype=np.int64), limit, seed)
    if keep is not None:
        texts = [texts[i] for i in keep]
        targets = targets[keep]
    targets = np.ascontiguousarray(targets, dtype=np.float64)
    digest = hashlib.sha256(targets.astype("<f8").tobytes()).hexdigest()
    return Dataset(
        name=name,
        kind="text",
        labels=np.zeros(len(texts), dtype=np.int64),
        label_names=[target_name],
        texts=texts,
        spec=spec,
        options={
            **options,
            "limit": limit,
            "seed": seed,
            "target": "regression",
            "targets_sha256": digest,
        },
        targets=targets,
        target_name=target_name,
    )


def _load_vader_scores(split: str | None, limit: int | None, seed: int, spec: str) -> Dataset:
    """Every token of the VADER lexicon with its mean valence, a continuous target.

    ``vaderSentiment/vader_lexicon.txt`` (Hutto & Gilbert, 2014) gives each of its 7,506
    distinct tokens (words, emoticons, slang) the mean of ten human ratings in ``[-4, 4]``.
    Unlike ``bundled:vader-valence`` nothing is filtered or thresholded: all 7,506 tokens, in
    lexicon order, with their mean rating as the target.
    """
    _single_split(split, "bundled:vader-valence-scores")
    valence = _read_vader_lexicon()
    texts = list(valence)
    targets = np.array([valence[t] for t in texts], dtype=np.float64)
    return _regression_dataset(
        "vader-valence-scores", texts, targets, "valence", spec, {}, limit, seed
    )


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def load_csv_targets(
    path_str: str,
    split: str | None,
    text_column: str | None,
    label_column: str | None,
    limit: int | None,
    seed: int,
    spec: str,
) -> Dataset:
    """A CSV/TSV file with a text column and a numeric target column.

    ``label_column`` defaults to the first of ``label, labels, class, target`` whose every value
    is a finite number, else the first such column other than the text column.
    """
    _single_split(split, "a csv file")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise DataError(f"csv file not found: {path}")
    text_column = text_column or "text"
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if text_column not in columns:
        raise DataError(
            f"{path}: no text column {text_column!r}; the columns are {columns} "
            "(pass text_column=...)"
        )

    def numeric(col: str) -> bool:
        return bool(rows) and all(_as_float(r[col]) is not None for r in rows)

    if label_column is None:
        ordered = [c for c in _LABEL_COLUMNS if c in columns] + [
            c for c in columns if c not in _LABEL_COLUMNS and c != text_column
        ]
        found = [c for c in ordered if numeric(c)]
        if not found:
            raise DataError(
                f"{path}: no numeric target column among {columns} (pass label_column=...)"
            )
        label_column = found[0]
    elif label_column not in columns:
        raise DataError(f"{path}: no label column {label_column!r}; the columns are {columns}")
    values = [_as_float(r[label_column]) for r in rows]
    bad = [i for i, v in enumerate(values) if v is None]
    if bad:
        raise DataError(
            f"{path}: column {label_column!r} is not numeric (row {bad[0]}: "
            f"{rows[bad[0]][label_column]!r}); regression needs a number in every row"
        )
    texts = ["" if r[text_column] is None else r[text_column] for r in rows]
    return _regression_dataset(
        path.stem,
        texts,
        np.asarray(values, dtype=np.float64),
        label_column,
        spec,
        {"text_column": text_column, "label_column": label_column},
        limit,
        seed,
    )
