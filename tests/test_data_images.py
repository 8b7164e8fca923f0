"""16- and 32-bit greyscale images through the data loaders keep their mean intensity (PIL's own
``convert("RGB")`` clips them at 255, turning mid-grey white)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from probekit import from_arrays, load_data


def _grey_16bit(rng: np.random.Generator, level: int) -> np.ndarray:
    return np.clip(rng.normal(level, 3000, size=(24, 24)), 0, 65535).astype(np.uint16)


def _expected_mean(arr: np.ndarray, full_scale: float) -> float:
    """The image's mean intensity on a 0..255 scale."""
    return float(arr.astype(np.float64).mean() / full_scale * 255.0)


@pytest.fixture
def wide_images(tmp_path):
    """An image folder of 16-bit PNGs (``I;16``) and 32-bit float TIFFs (``F`` in 0..1), two
    classes at two grey levels; returns the folder and, per file in load order, the expected
    mean on 0..255."""
    rng = np.random.default_rng(0)
    expected = []
    for cls, level in (("dark", 12000), ("mid", 32768)):
        (tmp_path / cls).mkdir()
        for i in range(2):
            arr = _grey_16bit(rng, level)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}a.png")
            expected.append(_expected_mean(arr, 65535.0))
            frac = (arr / 65535.0).astype(np.float32)
            Image.fromarray(frac, mode="F").save(tmp_path / cls / f"{i}b.tiff")
            expected.append(_expected_mean(frac, 1.0))
    return tmp_path, expected


def test_imagefolder_keeps_the_mean_of_16_and_32_bit_greyscale(wide_images):
    folder, expected = wide_images
    with Image.open(folder / "mid" / "0a.png") as img:
        assert img.mode in ("I;16", "I")  # really a wide image on disk
    ds = load_data(f"imagefolder:{folder}")
    assert len(ds) == len(expected) == 8
    for i, want in enumerate(expected):
        img, _ = ds[i]
        assert img.mode == "RGB"
        got = np.asarray(img, dtype=np.float64)
        assert abs(got.mean() - want) < 0.6, (i, got.mean(), want)
        assert np.ptp(got.mean(axis=(0, 1))) == 0  # grey stays grey


def test_from_arrays_keeps_the_mean_of_16_bit_pil_images():
    rng = np.random.default_rng(1)
    arrays = [_grey_16bit(rng, level) for level in (8000, 30000, 50000)]
    ds = from_arrays([Image.fromarray(a) for a in arrays], ["x", "y", "x"])
    for i, a in enumerate(arrays):
        got = np.asarray(ds[i][0], dtype=np.float64).mean()
        assert abs(got - _expected_mean(a, 65535.0)) < 0.6, (i, got)


def test_from_arrays_keeps_the_mean_of_16_bit_and_float_arrays():
    rng = np.random.default_rng(2)
    wide = np.stack([_grey_16bit(rng, level) for level in (5000, 40000)])
    for arrays, full_scale in ((wide, 65535.0), ((wide / 65535.0).astype(np.float32), 1.0)):
        ds = from_arrays(arrays, [0, 1])
        for i in range(2):
            got = np.asarray(ds[i][0], dtype=np.float64).mean()
            assert abs(got - _expected_mean(arrays[i], full_scale)) < 0.6, (arrays.dtype, i, got)


def test_hf_saved_dataset_keeps_the_mean_of_16_bit_images(tmp_path):
    import datasets

    rng = np.random.default_rng(3)
    arrays = [_grey_16bit(rng, level) for level in (10000, 45000)]
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in arrays], "label": [0, 1]},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
        ),
    )
    ds.save_to_disk(str(tmp_path / "wide"))
    assert ds[0]["image"].mode in ("I;16", "I")  # stored and decoded as a wide image
    loaded = load_data(f"hf:{tmp_path / 'wide'}")
    for i, a in enumerate(arrays):
        got = np.asarray(loaded[i][0], dtype=np.float64).mean()
        assert abs(got - _expected_mean(a, 65535.0)) < 0.6, (i, got)
