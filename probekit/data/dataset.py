"""The :class:`Dataset` every loader returns: labelled texts or images, indexable, fingerprinted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils.images import to_rgb
from ..errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from .units import WordUnits

__all__ = ["Dataset"]


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
        targets: ``(N,)`` float64 continuous targets of regression data, else ``None``.
        target_name: the name of those targets (``"valence"``, a column name), else ``None``.
        units: word-level data (``conllu:``, ``jsonl:``): the words of every sample and one
            label per word (:class:`~probekit.data.units.WordUnits`), else ``None``.
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
        get_images: Callable[[list[int]], list[Any]] | None = None,
        targets: np.ndarray | None = None,
        target_name: str | None = None,
        units: WordUnits | None = None,
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
            get_images: ``[i, ...] -> [PIL.Image, ...]``, a batch at once (image data read as a
                stream, fastest in increasing order); used instead of ``get_image`` when given.
            targets: ``(N,)`` continuous targets (regression data; hash them into ``options``).
            target_name: their name.
            units: the words and per-word labels of word-level data (hashed here).
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
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float64)
        self.target_name = target_name
        self.units = units
        if units is not None and (kind != "text" or len(units) != len(self.labels)):
            raise DataError(f"{name}: word units need text data with one word list per sample")
        if images is not None:
            get_image = get_image or (lambda i: _pil_from_array(images[i]))
            content_hash = content_hash or (lambda h: _hash_array(h, images))
        if get_images is not None:
            get_image = get_image or (lambda i: get_images([i])[0])
        self._get_image = get_image
        self._get_images = get_images
        self._content_hash = content_hash
        self._fingerprint: str | None = None
        if kind == "text" and (self.texts is None or len(self.texts) != len(self.labels)):
            raise DataError(f"{name}: text data needs one text per label")
        if kind == "image" and get_image is None:
            raise DataError(f"{name}: image data needs an image getter")
        if self.targets is not None and self.targets.shape != self.labels.shape:
            raise DataError(f"{name}: {self.targets.shape} targets for {len(self.labels)} samples")
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
        return img if img.mode == "RGB" else to_rgb(img)  # 16/32-bit greyscale keeps its mean

    def get_items(self, indices: Sequence[int] | np.ndarray) -> list[Any]:
        """Return the items at ``indices``: a list of str, or a list of RGB ``PIL.Image``."""
        n = len(self)
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1).tolist()
        for i in wanted:
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} samples")
        if self._get_images is not None and self.kind == "image":
            imgs = self._get_images([i % n for i in wanted])
            return [img if img.mode == "RGB" else to_rgb(img) for img in imgs]
        return [self._item(i % n) for i in wanted]

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
            if self.units is not None:
                h.update(b"units" + self.units.digest().encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def class_counts(self) -> dict[str, int]:
        """Number of samples per class name."""
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}

    def __repr__(self) -> str:
        words = "" if self.units is None else f", words={self.units.n_words}"
        return (
            f"Dataset(name={self.name!r}, kind={self.kind!r}, n={len(self)}{words}, "
            f"classes={self.label_names if len(self.label_names) <= 10 else len(self.label_names)})"
        )


def _pil_from_array(pixels: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(pixels))


def _hash_array(h: Any, arr: np.ndarray) -> None:
    h.update(json.dumps([list(arr.shape), str(arr.dtype)]).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
