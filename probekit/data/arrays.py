"""In-memory data: :func:`from_arrays` wraps strings, image arrays or PIL images."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._utils.images import to_uint8
from ..errors import DataError
from .common import _encode_labels
from .dataset import Dataset

__all__ = ["from_arrays"]


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


def from_arrays(
    items: Sequence[str] | np.ndarray | Sequence[Any],
    labels: Sequence[Any] | np.ndarray,
    label_names: Sequence[str] | None = None,
    name: str = "arrays",
) -> Dataset:
    """Wrap in-memory data as a :class:`Dataset`.

    Args:
        items: a list of ``N`` strings (text); an array ``(N, H, W)`` or ``(N, H, W, C)``
            (C in 1, 3, 4) of uint8 images (other dtypes are scaled to uint8 by their range:
            floats in ``[0, 1]``, ``uint16`` over 65535, other integers over 255 or 65535 when
            they fit); or a list of ``N`` ``PIL.Image`` of any mode (16/32-bit greyscale keeps
            its mean).
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
        arr = to_uint8(arr)  # by the range of the whole stack: uint16 over 65535, not modulo 256
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
