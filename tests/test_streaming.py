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


WORD_ROWS = [
    {"tokens": ["The", "cat", "sat", "."], "upos": ["DET", "NOUN", "VERB", "PUNCT"]},
    {"tokens": ["Dogs", "run", "unbelievably", "fast"], "upos": ["NOUN", "VERB", "ADV", "ADV"]},
    {"tokens": ["A", "tokenizer", "splits", "words"], "upos": ["DET", "NOUN", "VERB", None]},
    {"tokens": ["Birds", "sing"], "upos": ["NOUN", "VERB"]},
    {
        "tokens": ["Stream", "these", "words", "too", "."],
        "upos": ["VERB", "DET", "NOUN", "ADV", "PUNCT"],
    },
] * 3


def test_word_data_streams_into_the_same_word_cache(tiny_bert_dir, tmp_path):
    """``hf:`` word data (a tokens column, a per-word tags column) read whole and as a stream:
    the same words, tags and fingerprint as ``jsonl:`` reads from the same lines, and the
    streamed ``--unit word`` cache byte for byte the one of the data read whole."""
    folder = tmp_path / "words"
    folder.mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in WORD_ROWS)
    (folder / "train.jsonl").write_text(lines)
    (tmp_path / "ref.jsonl").write_text(lines)
    cols = {"text_column": "tokens", "label_column": "upos"}
    whole = load_data(f"hf:{folder}", **cols)
    stream = load_data(f"hf:{folder}", streaming=True, **cols)
    ref = load_data(f"jsonl:{tmp_path / 'ref.jsonl'}", **cols)
    assert stream.units.words == whole.units.words == [r["tokens"] for r in WORD_ROWS]
    assert stream.label_names == whole.label_names == ref.label_names
    tags = [[None if t < 0 else ref.label_names[t] for t in row] for row in stream.units.labels]
    assert tags == [r["upos"] for r in WORD_ROWS]
    for a, b in zip(stream.units.labels, ref.units.labels, strict=True):
        assert a.tolist() == b.tolist()
    assert stream.fingerprint == whole.fingerprint
    assert [len(load_data(f"hf:{folder}", streaming=s, limit=6, **cols)) for s in (0, 1)] == [6, 6]
    lm = load_model(tiny_bert_dir)
    kw = {"unit": "word", "batch_size": 4, "shard_size": 6, "progress": False}
    plain = extract(lm, whole, tmp_path / "plain", **kw)
    argv = ["extract", "--model", tiny_bert_dir, "--data", f"hf:{folder}", "--streaming"]
    argv += ["--text-column", "tokens", "--label-column", "upos", "--unit", "word"]
    argv += ["--batch-size", "4", "--shard-size", "6", "--out", str(tmp_path / "stream")]
    assert main(argv) == 0
    assert _shards(tmp_path / "stream") == _shards(tmp_path / "plain")
    assert len(plain) == sum(t is not None for r in WORD_ROWS for t in r["upos"])


def test_saved_word_data_keeps_class_label_tags(tmp_path):
    import datasets

    names = ["NOUN", "VERB", "DET"]
    feats = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "tags": datasets.List(datasets.ClassLabel(names=names)),
            "label": datasets.Value("int64"),
        }
    )
    rows = {"tokens": [["a", "dog"], ["cats", "sleep", "now"]], "tags": [[2, 0], [0, 1, -1]]}
    ds = datasets.Dataset.from_dict({**rows, "label": [0, 1]}, features=feats)
    ds.save_to_disk(str(tmp_path / "saved"))
    for s in (False, True):
        data = load_data(
            f"hf:{tmp_path / 'saved'}", streaming=s, text_column="tokens", label_column="tags"
        )
        assert data.label_names == names
        assert [u.tolist() for u in data.units.labels] == rows["tags"]
        with pytest.raises(DataError, match="needs a list of tags per row"):
            load_data(f"hf:{tmp_path / 'saved'}", streaming=s, text_column="tokens")
