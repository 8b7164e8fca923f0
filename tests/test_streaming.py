"""``hf:`` data read as a stream (``streaming=True``): the same dataset and the same cache as the
data read whole, offline, from a local folder of JSON lines and from a ``save_to_disk`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probekit import extract, load_data, load_model
from probekit.cli import main
from probekit.errors import DataError

N = 30


def _rows() -> list[dict]:
    return [
        {"text": f"streamed sentence {i} " + "x " * (i % 3), "label": ["neg", "pos", "mid"][i % 3]}
        for i in range(N)
    ]


@pytest.fixture
def jsonl_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "jsonl"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return folder


def _shards(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "shards").iterdir())}


def test_stream_of_data_files_equals_the_data_read_whole(jsonl_dir):
    whole = load_data(f"hf:{jsonl_dir}")
    stream = load_data(f"hf:{jsonl_dir}", streaming=True)
    rows = _rows()
    assert stream.texts == [r["text"] for r in rows] == whole.texts
    assert stream.label_names == ["mid", "neg", "pos"] == whole.label_names
    assert [stream.label_names[c] for c in stream.labels] == [r["label"] for r in rows]
    assert stream.fingerprint == whole.fingerprint
    part = load_data(f"hf:{jsonl_dir}", streaming=True, limit=9, seed=3)
    assert part.texts == load_data(f"hf:{jsonl_dir}", limit=9, seed=3).texts
    assert len(part) == 9


def test_stream_of_a_saved_dataset_keeps_class_label_names(tmp_path):
    import datasets

    feats = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": [f"s{i}" for i in range(12)], "label": [i % 2 for i in range(12)]},
        features=feats,
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    whole, stream = (load_data(f"hf:{tmp_path / 'saved'}", streaming=s) for s in (False, True))
    assert stream.label_names == ["bad", "good"]
    assert stream.labels.tolist() == [i % 2 for i in range(12)]
    assert stream.fingerprint == whole.fingerprint
    with pytest.raises(DataError, match="streaming=True reads hf: data only"):
        load_data("bundled:vader-valence", streaming=True)


def test_streamed_extraction_equals_the_plain_one_and_resumes(tiny_bert_dir, jsonl_dir, tmp_path):
    lm = load_model(tiny_bert_dir)
    plain = extract(
        lm,
        load_data(f"hf:{jsonl_dir}"),
        tmp_path / "plain",
        batch_size=4,
        shard_size=8,
        progress=False,
    )
    code = main(
        [
            "extract",
            "--model",
            tiny_bert_dir,
            "--data",
            f"hf:{jsonl_dir}",
            "--streaming",
            "--out",
            str(tmp_path / "stream"),
            "--batch-size",
            "4",
            "--shard-size",
            "8",
        ]
    )
    assert code == 0
    ref = _shards(tmp_path / "plain")
    assert _shards(tmp_path / "stream") == ref
    # a run stopped after some shards: the finished ones are kept, the rest computed again
    shards = tmp_path / "stream" / "shards"
    for p in shards.glob("000002.*"):
        p.unlink()
    (shards / "000003.json").unlink()
    kept = {p.name: p.stat().st_ino for p in shards.glob("00000[01].safetensors")}
    again = extract(
        lm,
        load_data(f"hf:{jsonl_dir}", streaming=True),
        tmp_path / "stream",
        batch_size=4,
        shard_size=8,
        progress=False,
    )
    assert _shards(tmp_path / "stream") == ref
    assert {n: (shards / n).stat().st_ino for n in kept} == kept
    assert again.manifest["fingerprint"] == plain.manifest["fingerprint"]
