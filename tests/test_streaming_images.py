"""``hf:`` image data read as a stream: the same images, labels and fingerprint as the data read
whole, the same cache bytes, a resume that decodes only the rows still missing, and a memory
footprint that does not grow with the number of images. Offline: ``save_to_disk``, parquet and
imagefolder folders written here from bundled MNIST digits and generated images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probekit import extract, load_data, load_model
from probekit.errors import DataError

N = 24


def _rgb_images(n: int, size: int = 20, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8))
        for i in range(n)
    ]


def _features(names: list[str]):
    import datasets

    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same kind of data as a ``save_to_disk`` DatasetDict, a parquet folder (MNIST digits,
    greyscale) and an imagefolder of PNG files."""
    import datasets

    root = tmp_path_factory.mktemp("imgsrc")
    rgb = _rgb_images(N)
    saved = datasets.Dataset.from_dict(
        {"image": rgb, "label": [i % 3 for i in range(N)]}, features=_features(["a", "b", "c"])
    )
    datasets.DatasetDict({"train": saved, "test": saved.select(range(4))}).save_to_disk(
        str(root / "saved")
    )
    mnist = load_data("bundled:mnist", limit=N, seed=1)
    digits = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in mnist.images], "target": mnist.labels.tolist()},
        features=datasets.Features(
            {"img": datasets.Image(), "target": datasets.ClassLabel(names=mnist.label_names)}
        ),
    )
    (root / "parquet").mkdir()
    digits.to_parquet(str(root / "parquet" / "train.parquet"))
    for i, img in enumerate(_rgb_images(N, seed=1)):
        path = root / "folder" / ["cat", "dog", "eel", "fox"][i % 4] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    return {"saved": root / "saved", "parquet": root / "parquet", "folder": root / "folder"}


def _pixels(ds, order) -> list[np.ndarray]:
    return [np.asarray(img) for img in ds.get_items(order)]


@pytest.mark.parametrize("kind", ["saved", "parquet", "folder"])
def test_image_stream_equals_the_data_read_whole(sources, kind):
    spec = f"hf:{sources[kind]}"
    fingerprints = set()
    for limit in (None, 10):
        whole = load_data(spec, limit=limit, seed=3)
        stream = load_data(spec, limit=limit, seed=3, streaming=True)
        assert stream.kind == "image" and stream.images is None and stream.texts is None
        assert stream.labels.tolist() == whole.labels.tolist()
        assert stream.label_names == whole.label_names
        assert stream.options == whole.options
        assert stream.fingerprint == whole.fingerprint
        fingerprints.add(stream.fingerprint)
        n = len(whole)
        ref = _pixels(whole, range(n))
        assert n == (N if limit is None else limit)
        # in order, in batches, then backwards one at a time (each step restarts the stream)
        got = [p for s in range(0, n, 4) for p in _pixels(stream, range(s, min(s + 4, n)))]
        back = [_pixels(stream, [i])[0] for i in reversed(range(n))][::-1]
        for i in range(n):
            assert ref[i].dtype == np.uint8 and ref[i].shape[-1] == 3
            assert np.array_equal(got[i], ref[i]), (kind, limit, i)
            assert np.array_equal(back[i], ref[i]), (kind, limit, i)
    assert len(fingerprints) == 2  # limit narrows the fingerprint as it does the data read whole


def test_image_stream_of_another_split_and_class_names(sources):
    test = load_data(f"hf:{sources['saved']}", split="test", streaming=True)
    assert test.labels.tolist() == [0, 1, 2, 0] and test.label_names == ["a", "b", "c"]
    assert test.fingerprint == load_data(f"hf:{sources['saved']}", split="test").fingerprint
    assert test.fingerprint != load_data(f"hf:{sources['saved']}", streaming=True).fingerprint
    folder = load_data(f"hf:{sources['folder']}", streaming=True)
    assert folder.label_names == ["cat", "dog", "eel", "fox"]
    assert folder.class_counts() == {"cat": 6, "dog": 6, "eel": 6, "fox": 6}


def test_image_stream_errors_are_one_line(sources, tmp_path):
    spec = f"hf:{sources['parquet']}"
    for kwargs, match in [
        ({"label_column": "img"}, "label column 'img' holds images"),
        ({"text_column": "pixels"}, "no text column 'pixels'"),
        ({"split": "validation"}, "cannot stream hf:.* split 'validation'"),
    ]:
        with pytest.raises(DataError, match=match) as err:
            load_data(spec, streaming=True, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no split 'dev'"):
        load_data(f"hf:{sources['saved']}", split="dev", streaming=True)
    # the stream is shorter than its label pass said: the data changed under a reader
    import datasets

    folder = tmp_path / "shrinking"
    folder.mkdir()
    rows = datasets.Dataset.from_dict(
        {"image": _rgb_images(8), "label": [0, 1] * 4}, features=_features(["x", "y"])
    )
    rows.to_parquet(str(folder / "train.parquet"))
    ds = load_data(f"hf:{folder}", streaming=True)
    rows.select(range(5)).to_parquet(str(folder / "train.parquet"))
    with pytest.raises(
        DataError, match="the stream ended after 5 rows, but its label column had 8"
    ):
        ds.get_items(range(8))


def _shards(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "shards").iterdir())}


def _tiny_cnn():
    torch.manual_seed(0)
    return load_model("timm:test_resnet", pretrained=False)


def test_streamed_image_extraction_equals_the_plain_one_and_resumes(sources, tmp_path, monkeypatch):
    import datasets

    lm = _tiny_cnn()
    spec = f"hf:{sources['saved']}"
    kw = {"batch_size": 4, "shard_size": 8, "progress": False}
    plain = extract(lm, load_data(spec, limit=20, seed=1), tmp_path / "plain", **kw)
    stream = extract(
        lm, load_data(spec, limit=20, seed=1, streaming=True), tmp_path / "stream", **kw
    )
    ref = _shards(tmp_path / "plain")
    assert len([n for n in ref if n.endswith(".safetensors")]) == 3  # 8 + 8 + 4 rows
    assert _shards(tmp_path / "stream") == ref
    assert stream.manifest["fingerprint"] == plain.manifest["fingerprint"]
    assert torch.equal(stream.load()[0], plain.load()[0])

    # a run stopped after shard 0: the rerun decodes only the 12 rows of shards 1 and 2
    shards = tmp_path / "stream" / "shards"
    for p in shards.glob("00000[12].*"):
        p.unlink()
    kept = (shards / "000000.safetensors").stat().st_ino
    decoded: list[int] = []
    decode = datasets.Image.decode_example

    def counting(self, value, token_per_repo_id=None):
        decoded.append(1)
        return decode(self, value, token_per_repo_id=token_per_repo_id)

    monkeypatch.setattr(datasets.Image, "decode_example", counting)
    again = extract(
        lm, load_data(spec, limit=20, seed=1, streaming=True), tmp_path / "stream", **kw
    )
    assert len(decoded) == 12
    assert _shards(tmp_path / "stream") == ref
    assert (shards / "000000.safetensors").stat().st_ino == kept
    assert again.manifest["fingerprint"] == plain.manifest["fingerprint"]


def test_prefetching_thread_reads_a_stream_as_inline(sources):
    """On an accelerator the next batch is preprocessed on a worker thread (forced here on CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    from probekit.recording.extraction import _batched_inputs

    lm = _tiny_cnn()
    spec = f"hf:{sources['folder']}"
    inline = list(_batched_inputs(lm, load_data(spec), 3, 21, 4, None))
    with ThreadPoolExecutor(1) as pool:
        threaded = list(_batched_inputs(lm, load_data(spec, streaming=True), 3, 21, 4, pool))
    assert [s for s, _ in threaded] == [s for s, _ in inline] == [3, 7, 11, 15, 19]
    for (_, a), (_, b) in zip(threaded, inline, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    from probekit import extract, load_data, load_model
    torch.manual_seed(0)
    lm = load_model("timm:test_resnet", pretrained=False)
    extract(lm, load_data(sys.argv[1], streaming=True), sys.argv[2], batch_size=4, shard_size=8,
            progress=False)
""")


def test_killed_streamed_extraction_resumes_bitwise(sources, tmp_path):
    spec = f"hf:{sources['folder']}"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(sys.path), PROBEKIT_TEST_KILL_AT="shard-renamed:2"
    )  # killed once shards 0 and 1 are written
    run = subprocess.run(
        [sys.executable, str(script), spec, str(tmp_path / "killed")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == -9, run.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "killed" / "shards").glob("*.safetensors"))
    assert written == ["000000.safetensors", "000001.safetensors"]
    lm = _tiny_cnn()
    kw = {"batch_size": 4, "shard_size": 8, "progress": False}
    extract(lm, load_data(spec, streaming=True), tmp_path / "killed", **kw)
    extract(lm, load_data(spec), tmp_path / "plain", **kw)
    assert _shards(tmp_path / "killed") == _shards(tmp_path / "plain")
    done = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert done == json.loads((tmp_path / "plain" / "manifest.json").read_text())


MEMORY_SCRIPT = textwrap.dedent("""
    import sys, os
    from probekit import load_data

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    ds = load_data(sys.argv[1], streaming=True)
    ds.get_items(range(32))  # warm up: libraries, the first chunk, the decoder
    base, peak, n, pixels = rss(), 0, len(ds), 0
    for s in range(0, n, 32):
        batch = ds.get_items(range(s, min(s + 32, n)))
        pixels += sum(img.width * img.height * 3 for img in batch)
        peak = max(peak, rss() - base)
        del batch
    print(n, pixels, peak)
""")


def test_streaming_holds_a_chunk_not_the_dataset(tmp_path):
    """Streaming 1200 images of 128x128 (59 MB decoded, about as much encoded: noise does not
    compress) grows the RSS by far less than them; holding every image, decoded or encoded,
    breaks the bound."""
    import datasets

    folder = tmp_path / "big"
    folder.mkdir()
    n, size = 1200, 128

    def rows():
        rng = np.random.default_rng(0)
        for i in range(n):
            yield {
                "image": Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
                "label": i % 2,
            }

    big = datasets.Dataset.from_generator(
        rows, features=_features(["p", "q"]), cache_dir=str(tmp_path / "hf-cache")
    )
    big.to_parquet(str(folder / "train.parquet"))
    del big
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, f"hf:{folder}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    count, pixels, grown = map(int, out.stdout.split())
    assert count == n and pixels == n * size * size * 3
    print(
        f"streamed {n} images ({pixels / 2**20:.0f} MiB decoded): RSS grew {grown / 2**20:.1f} MiB"
    )
    assert grown < pixels / 4, (grown, pixels)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_row_without_an_image_is_a_one_line_data_error(tmp_path, streaming):
    import datasets

    images: list = _rgb_images(4)
    images[2] = None
    rows = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 0, 1]}, features=_features(["x", "y"])
    )
    rows.save_to_disk(str(tmp_path / "holes"))
    ds = load_data(f"hf:{tmp_path / 'holes'}", streaming=streaming)
    assert len(ds.get_items([0, 1])) == 2
    with pytest.raises(DataError, match="row 2 has no image in column 'image'") as err:
        ds.get_items([1, 2, 3])
    assert "\n" not in str(err.value)
