"""Tests for probekit.data: every spec scheme, subsets, fingerprints, errors."""

from __future__ import annotations

import re

import datasets
import numpy as np
import pytest
from PIL import Image

from probekit.data import VADER_THRESHOLD, DataError, Dataset, from_arrays, load_data

# ----------------------------------------------------------------------------- bundled


def test_vader_valence_counts_and_determinism():
    ds = load_data("bundled:vader-valence")
    assert isinstance(ds, Dataset) and ds.kind == "text" and ds.name == "vader-valence"
    assert ds.label_names == ["negative", "positive"]
    assert len(ds) == 5588
    assert ds.class_counts() == {"negative": 3150, "positive": 2438}
    assert VADER_THRESHOLD == 1.0
    word = re.compile(r"[A-Za-z][A-Za-z' \-]*[A-Za-z]")
    assert all(word.fullmatch(t) for t in ds.texts)
    assert len(set(ds.texts)) == len(ds.texts)
    by_text = dict(zip(ds.texts, ds.labels.tolist(), strict=True))
    assert by_text["good"] == 1 and by_text["bad"] == 0 and by_text["can't stand"] == 0
    assert ":)" not in by_text and "gr8" not in by_text  # emoticons and digit slang dropped
    assert "okay" not in by_text  # valence 0.9: near-neutral
    assert ds[0] == (ds.texts[0], int(ds.labels[0]))
    assert ds.get_items([1, -1]) == [ds.texts[1], ds.texts[-1]]
    again = load_data("bundled:vader-valence")
    assert again.texts == ds.texts and again.fingerprint == ds.fingerprint
    assert len(ds.fingerprint) == 64


def test_vader_limit_is_stratified_and_seeded():
    a = load_data("bundled:vader-valence", limit=100, seed=0)
    b = load_data("bundled:vader-valence", limit=100, seed=0)
    c = load_data("bundled:vader-valence", limit=100, seed=1)
    assert len(a) == 100 and a.texts == b.texts and a.fingerprint == b.fingerprint
    assert a.texts != c.texts and a.fingerprint != c.fingerprint
    assert a.class_counts() == {"negative": 56, "positive": 44}  # 100 * 3150/5588 = 56.4
    full = load_data("bundled:vader-valence")
    positions = [full.texts.index(t) for t in a.texts]
    assert positions == sorted(positions)  # the original order is kept
    with pytest.raises(DataError, match="single split"):
        load_data("bundled:vader-valence", split="test")


def test_mnist_subset_determinism_and_shapes():
    a = load_data("bundled:mnist", limit=200, seed=0)
    b = load_data("bundled:mnist", limit=200, seed=0)
    c = load_data("bundled:mnist", limit=200, seed=1)
    assert a.kind == "image" and a.name == "mnist-train" and a.texts is None
    assert a.label_names == [str(d) for d in range(10)]
    assert len(a) == 200 and a.images.shape == (200, 28, 28) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    counts = np.bincount(a.labels, minlength=10)
    assert counts.sum() == 200 and counts.min() >= 17 and counts.max() <= 23  # stratified
    img, label = a[3]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (28, 28)
    assert label == int(a.labels[3])
    np.testing.assert_array_equal(np.asarray(img)[..., 0], a.images[3])
    items = a.get_items([0, 1, 2])
    assert len(items) == 3 and all(i.mode == "RGB" for i in items)
    assert a.images.max() > 200  # real digits, not blanks


def test_mnist_test_split():
    test = load_data("bundled:mnist", split="test")
    assert len(test) == 10000 and test.name == "mnist-test"
    assert sorted(test.class_counts()) == [str(d) for d in range(10)]
    with pytest.raises(DataError, match="'train' and 'test'"):
        load_data("bundled:mnist", split="validation")


# ----------------------------------------------------------------------------- csv


def write_csv(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_defaults_and_string_labels(tmp_path):
    f = write_csv(
        tmp_path / "reviews.csv",
        'text,label\n"great, really",pos\nawful,neg\nfine,pos\n"meh",neutral\n',
    )
    ds = load_data(f"csv:{f}")
    assert ds.name == "reviews" and ds.kind == "text"
    assert ds.texts == ["great, really", "awful", "fine", "meh"]
    assert ds.label_names == ["neg", "neutral", "pos"]
    assert ds.labels.tolist() == [2, 0, 2, 1]
    assert ds.labels.dtype == np.int64


def test_csv_custom_columns_int_labels_and_tsv(tmp_path):
    f = write_csv(tmp_path / "d.tsv", "id\tsentence\ty\n1\ta\t10\n2\tb\t2\n3\tc\t10\n")
    ds = load_data(f"csv:{f}", text_column="sentence", label_column="y")
    assert ds.label_names == ["2", "10"]  # numeric order
    assert ds.labels.tolist() == [1, 0, 1]


def test_csv_errors(tmp_path):
    f = write_csv(tmp_path / "d.csv", "sentence,target\nhello,1\n")
    with pytest.raises(DataError, match=r"no text column 'text'.*\['sentence', 'target'\]"):
        load_data(f"csv:{f}")
    with pytest.raises(DataError, match=r"no label column 'label'.*\['sentence', 'target'\]"):
        load_data(f"csv:{f}", text_column="sentence")
    empty = write_csv(tmp_path / "empty.csv", "text,label\n")
    with pytest.raises(DataError, match="is empty"):
        load_data(f"csv:{empty}")
    hole = write_csv(tmp_path / "hole.csv", "text,label\na,1\nb,\n")
    with pytest.raises(DataError, match="missing label at row 1"):
        load_data(f"csv:{hole}")
    with pytest.raises(DataError, match="not found"):
        load_data(f"csv:{tmp_path / 'nope.csv'}")
    single = write_csv(tmp_path / "one.csv", "text,label\na,x\nb,x\n")
    assert load_data(f"csv:{single}").label_names == ["x"]  # one class is allowed here


def test_unknown_specs():
    with pytest.raises(DataError, match=r"hf:.*csv:.*imagefolder:.*bundled:"):
        load_data("s3:bucket/data")
    with pytest.raises(DataError, match="vader-valence"):
        load_data("bundled:imagenet")
    with pytest.raises(DataError):
        load_data("no-scheme")


# ----------------------------------------------------------------------------- images


def make_folder(root, sizes=((8, 6), (5, 5))):
    rng = np.random.default_rng(0)
    for cls, n in (("dog", 2), ("cat", 3)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (sizes[i % 2][1], sizes[i % 2][0]), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_imagefolder(tmp_path):
    root = make_folder(tmp_path / "pets")
    ds = load_data(f"imagefolder:{root}")
    assert ds.kind == "image" and ds.name == "pets" and ds.texts is None
    assert ds.label_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]
    img, label = ds[4]
    assert img.mode == "RGB" and img.size == (5, 5) and label == 1
    assert [i.mode for i in ds.get_items(range(5))] == ["RGB"] * 5
    fp = ds.fingerprint
    assert load_data(f"imagefolder:{root}").fingerprint == fp
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "dog" / "0.png")
    assert load_data(f"imagefolder:{root}").fingerprint != fp
    sub = load_data(f"imagefolder:{root}", limit=2)
    assert len(sub) == 2 and sorted(sub.labels.tolist()) == [0, 1]


def test_imagefolder_splits_and_errors(tmp_path):
    make_folder(tmp_path / "data" / "train")
    make_folder(tmp_path / "data" / "test")
    assert len(load_data(f"imagefolder:{tmp_path / 'data'}", split="test")) == 5
    with pytest.raises(DataError, match="no split folder 'val'"):
        load_data(f"imagefolder:{tmp_path / 'data'}", split="val")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_data(f"imagefolder:{tmp_path / 'none'}")
    with pytest.raises(DataError, match="not found"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")


# ----------------------------------------------------------------------------- in memory


def test_from_arrays_text_and_fingerprint_changes():
    ds = from_arrays(["a", "b", "c"], ["x", "y", "x"])
    assert ds.kind == "text" and ds.label_names == ["x", "y"] and ds.labels.tolist() == [0, 1, 0]
    fp = ds.fingerprint
    assert from_arrays(["a", "b", "c"], ["x", "y", "x"]).fingerprint == fp
    assert from_arrays(["a", "b", "d"], ["x", "y", "x"]).fingerprint != fp
    assert from_arrays(["a", "b", "c"], ["x", "y", "y"]).fingerprint != fp
    assert (
        from_arrays(["ab", "", "c"], ["x", "y", "x"]).fingerprint
        != from_arrays(["a", "b", "c"], ["x", "y", "x"]).fingerprint
    )
    named = from_arrays(["a", "b"], [1, 0], label_names=["neg", "pos"])
    assert named.label_names == ["neg", "pos"] and named.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="labels must lie"):
        from_arrays(["a"], [2], label_names=["neg", "pos"])
    with pytest.raises(DataError, match="2 items but 1 labels"):
        from_arrays(["a", "b"], [0])
    assert len(from_arrays([], [])) == 0  # empty is allowed in memory


def test_from_arrays_images():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    ds = from_arrays(arr, [0, 1, 0, 1], label_names=["a", "b"])
    assert ds.kind == "image"
    img, _ = ds[2]
    assert img.mode == "RGB" and img.size == (6, 6)
    np.testing.assert_array_equal(np.asarray(img), arr[2])
    fp = ds.fingerprint
    changed = arr.copy()
    changed[1, 0, 0, 0] ^= 1
    assert from_arrays(changed, [0, 1, 0, 1], label_names=["a", "b"]).fingerprint != fp
    gray = from_arrays(rng.random((2, 5, 5)), [0, 1])
    assert gray[0][0].mode == "RGB"
    pil = from_arrays([Image.fromarray(a) for a in arr], [0, 1, 0, 1])
    assert pil.kind == "image" and pil[0][0].size == (6, 6)
    assert (
        pil.fingerprint
        != from_arrays([Image.fromarray(a) for a in changed], [0, 1, 0, 1]).fingerprint
    )


# ----------------------------------------------------------------------------- hf (local)


def test_hf_local_text_dataset(tmp_path):
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    data = datasets.Dataset.from_dict(
        {"sentence": ["bad", "good", "ok", "awful"], "label": [0, 1, 1, 0]}, features=features
    )
    data.save_to_disk(str(tmp_path / "flat"))
    ds = load_data(f"hf:{tmp_path / 'flat'}")
    assert ds.kind == "text" and ds.texts == ["bad", "good", "ok", "awful"]
    assert ds.label_names == ["neg", "pos"] and ds.labels.tolist() == [0, 1, 1, 0]
    assert ds.fingerprint == load_data(f"hf:{tmp_path / 'flat'}").fingerprint
    assert len(load_data(f"hf:{tmp_path / 'flat'}", limit=2)) == 2
    with pytest.raises(DataError, match=r"no label column 'stars'.*\['sentence', 'label'\]"):
        load_data(f"hf:{tmp_path / 'flat'}", label_column="stars")

    dd = datasets.DatasetDict(
        {
            "train": data,
            "test": datasets.Dataset.from_dict(
                {"sentence": ["fine"], "label": [1]}, features=features
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    test = load_data(f"hf:{tmp_path / 'dict'}", split="test")
    assert test.texts == ["fine"] and test.label_names == ["neg", "pos"]
    assert len(load_data(f"hf:{tmp_path / 'dict'}")) == 4  # default: train
    with pytest.raises(DataError, match="no split 'dev'"):
        load_data(f"hf:{tmp_path / 'dict'}", split="dev")


def test_hf_local_image_dataset_and_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)) for _ in range(3)]
    data = datasets.Dataset.from_dict(
        {"img": images, "kind": ["b", "a", "b"]},
        features=datasets.Features({"img": datasets.Image(), "kind": datasets.Value("string")}),
    )
    data.save_to_disk(str(tmp_path / "imgs"))
    ds = load_data(f"hf:{tmp_path / 'imgs'}", label_column="kind")
    assert ds.kind == "image" and ds.label_names == ["a", "b"] and ds.labels.tolist() == [1, 0, 1]
    img, _ = ds[1]
    assert img.mode == "RGB" and img.size == (4, 4)
    assert len(ds.fingerprint) == 64
