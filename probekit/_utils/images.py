"""Images to 8-bit RGB, keeping the intensity of 16-bit and 32-bit greyscale images.

PIL's ``convert("RGB")`` clips ``I;16``, ``I`` and ``F`` images at 255 instead of scaling them,
so a mid-grey 16-bit image (32768) becomes white. Here such images are first divided by their
range: 65535 for ``I;16*`` modes; for ``I`` and ``F`` (which carry no range of their own) the
narrowest standard range holding every value: ``[0, 1]`` (floats only), ``[0, 255]``,
``[0, 65535]``, else the image's own min..max.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_rgb", "to_uint8"]

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _range(arr: np.ndarray, mode: str) -> tuple[float, float]:
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return 0.0, 65535.0
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo >= 0:
        if hi <= 1.0 and np.issubdtype(arr.dtype, np.floating):
            return 0.0, 1.0
        if hi <= 255:
            return 0.0, 255.0
        if hi <= 65535:
            return 0.0, 65535.0
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def to_uint8(arr: np.ndarray, mode: str = "") -> np.ndarray:
    """Pixels of any dtype to ``uint8`` by their range (module docstring): floats in ``[0, 1]``
    times 255, ``uint16`` over 65535, other integers over 255 or 65535 if they fit, else
    min..max. A ``uint8`` array is returned as it is."""
    if arr.dtype == np.uint8:
        return arr
    lo, hi = _range(arr, mode)
    scaled = np.rint((arr.astype(np.float64) - lo) * (255.0 / (hi - lo)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def to_rgb(image: Any) -> Any:
    """A PIL RGB image from a PIL image or an array ``(H, W)`` / ``(H, W, 3)``.

    Greyscale images of 16 or 32 bits (PIL modes ``I;16``, ``I``, ``F``, or ``uint16``,
    ``int32``, float arrays) are scaled to ``0..255`` by their range (module docstring), so
    the mean intensity is kept: an ``I;16`` image of 32768 becomes RGB 128 (127.5 rounded).
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode not in _WIDE_MODES:
            return image.convert("RGB")
        mode, arr = image.mode, np.asarray(image)
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8 or arr.ndim == 3:
            return Image.fromarray(to_uint8(arr)).convert("RGB")
        mode = "I;16" if arr.dtype == np.uint16 else ("F" if arr.dtype.kind == "f" else "I")
    return Image.fromarray(to_uint8(arr, mode)).convert("RGB")
