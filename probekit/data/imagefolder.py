"""``imagefolder:DIR``: one subfolder of images per class."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.images import to_rgb
from ..errors import DataError
from .common import _subset
from .dataset import Dataset
from .sources import DataOptions

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


def _load_imagefolder(
    dir_str: str, split: str | None, limit: int | None, seed: int, spec: str
) -> Dataset:
    """``DIR/<class>/**/<image>``: one subfolder per class (sorted names), images found
    recursively (extensions in ``IMAGE_EXTENSIONS``; hidden files and folders skipped). With
    ``split``, ``DIR/<split>/`` is used when it exists (``split="train"`` falls back to ``DIR``).
    Classes without images are left out. Images are opened lazily and converted to RGB
    (16/32-bit greyscale is scaled by its range, not clipped). The fingerprint hashes every
    file's relative path and bytes (read once, when first asked for).
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
            return to_rgb(img)  # scales 16/32-bit greyscale instead of clipping it at 255

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


def load_imagefolder(folder: str, spec: str, options: DataOptions) -> Dataset:
    """The ``imagefolder:`` loader (``DIR/<class>/...``, ``DIR/<split>/<class>/...``)."""
    return _load_imagefolder(folder, options.split, options.limit, options.seed, spec)
