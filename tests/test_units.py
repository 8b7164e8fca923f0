"""Word and token rows: every row equals HF ``hidden_states`` pooled over the tokenizer's
``word_ids()`` (fp32, exact), shards hold whole inputs, resume and reads are checked, and no input
is ever on both sides of a split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit import FeatureCache, ProbeClassifier, extract, from_arrays, load_model
from probekit.data import word_dataset
from probekit.errors import CacheError, ConfigError
from probekit.train.metrics import grouped_split, stratified_split

WORDS = [
    ["The", "unbelievably", "fluffy", "cat", "sat", "."],
    ["Dogs", "run", "quickly", "home"],
    ["Supercalifragilistic", "words", "tokenize", "oddly", "."],
    ["A", "short", "one"],
    ["Tagging", "untagged", "words", "works", "too"],
]
TAGS = [
    ["DET", "ADV", "ADJ", "NOUN", "VERB", "PUNCT"],
    ["NOUN", "VERB", "ADV", "NOUN"],
    ["ADJ", "NOUN", "VERB", "ADV", "PUNCT"],
    ["DET", "ADJ", "NOUN"],
    ["VERB", None, "NOUN", "VERB", "ADV"],  # one unlabelled word: recorded nowhere
]


@pytest.fixture(scope="module")
def words_data():
    return word_dataset(WORDS, TAGS, name="words", spec="test:words")


@pytest.fixture(scope="module")
def minilm():
    return load_model("bundled:minilm-l6")


def _reference(lm, words, unit, how, padding_side="right"):
    """Rows by a naive loop: hidden_states of one padded batch, tokens grouped by word_ids()."""
    tok = lm.tokenizer
    old, tok.padding_side = tok.padding_side, padding_side
    try:
        enc = tok(words, is_split_into_words=True, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = old
    inputs = {
        k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    if padding_side == "left":  # each text keeps the positions it has alone
        inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hs = lm.model(**inputs, output_hidden_states=True).hidden_states
    rows: list[list[torch.Tensor]] = [[] for _ in hs]
    for b, sentence in enumerate(words):
        ids = enc.word_ids(b)
        for w in range(len(sentence)):
            if TAGS[b][w] is None:
                continue
            toks = [t for t, i in enumerate(ids) if i == w]
            for layer, h in enumerate(hs):
                if unit == "token":
                    rows[layer] += [h[b, t] for t in toks]
                else:
                    sub = h[b, toks]
                    rows[layer].append({"mean": sub.mean(0), "first": sub[0], "last": sub[-1]}[how])
    return [torch.stack(r) for r in rows]


@pytest.mark.parametrize(
    ("unit", "how"), [("word", "mean"), ("word", "first"), ("word", "last"), ("token", "mean")]
)
def test_word_rows_equal_hidden_states_pooled_by_word_ids(minilm, words_data, tmp_path, unit, how):
    cache = extract(
        minilm,
        words_data,
        tmp_path / "c",
        unit=unit,
        word_pooling=how,
        precision="fp32",
        progress=False,
    )
    pooling = how if unit == "word" else "token"
    assert cache.unit == unit and cache.poolings == [pooling]
    refs = _reference(minilm, WORDS, unit, how)
    for layer, ref in enumerate(refs):
        got = cache[f"layers.{layer}.{pooling}"]
        assert got.shape == ref.shape
        assert torch.equal(got, ref), (layer, (got - ref).abs().max().item())
    labelled = [[t for t in row if t is not None] for row in TAGS]
    if unit == "word":
        assert len(cache) == sum(map(len, labelled))
        expected = np.concatenate([[words_data.label_names.index(t) for t in r] for r in labelled])
        assert np.array_equal(cache.labels, expected)
        # positions skip the unlabelled word; rows_of gives one sample's words in order
        assert cache.positions[cache.rows_of(4)].tolist() == [0, 2, 3, 4]
        assert [WORDS[s][p] for s, p in zip(cache.samples, cache.positions)][:3] == [
            "The",
            "unbelievably",
            "fluffy",
        ]
    else:
        assert len(cache) > sum(map(len, labelled))  # words split into several tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_units_equals_a_naive_loop(dtype):
    """The one-gather pooling against a per-row loop: words of 1-8 sub-words in a padded
    batch, rows in any token order, bf16 layers pooled in float32."""
    from probekit.recording.units import pool_units

    rng = np.random.default_rng(0)
    hidden = torch.randn(6, 30, 16).to(dtype)  # (B, T, D)
    groups = []
    for b in range(6):
        t = int(rng.integers(0, 3))
        while t < 22:
            k = int(rng.integers(1, 9)) if rng.random() < 0.4 else 1
            groups.append(b * 30 + np.arange(t, t + k))
            t += k
    groups = [groups[i] for i in rng.permutation(len(groups))]
    flat = hidden.reshape(-1, 16).float()
    for how in ("mean", "first", "last"):
        pick = {"mean": lambda g: flat[g].mean(0), "first": lambda g: flat[g[0]]}
        ref = torch.stack(
            [pick.get(how, lambda g: flat[g[-1]])(torch.as_tensor(g)) for g in groups]
        )
        got = pool_units(hidden, groups, how)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert pool_units(hidden, [], "mean").shape == (0, 16)


def test_left_padding_maps_the_same_words(tiny_gpt2_dir, tmp_path):
    lm = load_model(tiny_gpt2_dir)
    data = word_dataset(WORDS, TAGS, name="words", spec="test:words")
    right = extract(lm, data, tmp_path / "r", unit="word", precision="fp32", progress=False)
    lm.tokenizer.padding_side = "left"
    left = extract(lm, data, tmp_path / "l", unit="word", precision="fp32", progress=False)
    tokens = extract(lm, data, tmp_path / "t", unit="token", precision="fp32", progress=False)
    for layer in range(len(lm.layers)):
        ref = _reference(lm, WORDS, "word", "mean", padding_side="left")[layer]
        assert torch.equal(left[f"layers.{layer}.mean"], ref)
        ref_t = _reference(lm, WORDS, "token", "mean", padding_side="left")[layer]
        assert torch.equal(tokens[f"layers.{layer}.token"], ref_t)
        # a causal model's words do not depend on where the padding went
        torch.testing.assert_close(
            left[f"layers.{layer}.mean"], right[f"layers.{layer}.mean"], atol=1e-5, rtol=0
        )


def test_shards_hold_whole_inputs_and_resume(minilm, words_data, tmp_path):
    opts = dict(unit="word", precision="fp32", progress=False, shard_size=2, batch_size=1)
    cache = extract(minilm, words_data, tmp_path / "c", **opts)
    m = cache.manifest
    assert m["n_inputs"] == 5 and m["n_shards"] == 3
    assert m["shard_rows"] == [10, 8, 4] and m["n_samples"] == len(cache) == 22
    per_shard = np.split(cache.samples, np.cumsum(m["shard_rows"])[:-1])
    assert [sorted(set(s.tolist())) for s in per_shard] == [[0, 1], [2, 3], [4]]
    before = {k: cache[k].clone() for k in cache.keys()}
    (tmp_path / "c" / "shards" / "000001.safetensors").unlink()
    (tmp_path / "c" / "shards" / "000001.json").unlink()
    with pytest.raises(CacheError, match="missing shard"):
        FeatureCache.open(tmp_path / "c")
    again = extract(minilm, words_data, tmp_path / "c", **opts)  # writes shard 1 only
    for k, v in before.items():
        assert torch.equal(again[k], v), k
    half = extract(minilm, words_data, tmp_path / "h", store_dtype="float16", **opts)
    for k, v in before.items():
        assert torch.equal(half[k], v.half()), k


def test_unit_needs_word_data_and_word_pooling(minilm, words_data, tmp_path):
    plain = from_arrays(["a text", "another"], [0, 1])
    with pytest.raises(ConfigError, match="word-level data"):
        extract(minilm, plain, tmp_path / "a", unit="word", progress=False)
    with pytest.raises(ConfigError, match="word_pooling"):
        extract(minilm, words_data, tmp_path / "b", unit="word", pooling="cls", progress=False)
    with pytest.raises(ConfigError, match="unknown word pooling"):
        extract(minilm, words_data, tmp_path / "c", unit="word", word_pooling="max", progress=False)


def test_grouped_splits_never_share_a_sample():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), rng.integers(3, 30, 200))
    y = rng.integers(0, 5, groups.size)
    for seed in range(3):
        train, test = stratified_split(y, 0.25, seed, groups)
        assert not set(groups[train]) & set(groups[test])
        assert train.size + test.size == y.size and 0.15 < test.size / y.size < 0.35
        # stratified over rows where the groups allow: every class near its share
        share = np.bincount(y[test], minlength=5) / test.size
        assert np.abs(share - np.bincount(y, minlength=5) / y.size).max() < 0.05
        train_r, test_r = grouped_split(y, groups, 0.2, seed, stratify=False)
    # a class held by one sentence only never lands in test alone (it goes back to train)
    rare = y.copy()
    rare[groups == 7] = 9
    for seed in range(5):
        train, test = grouped_split(rare, groups, 0.25, seed)
        assert set(rare[test]) <= set(rare[train]) and 9 in set(rare[train])
        assert not set(groups[train]) & set(groups[test])
        assert not set(groups[train_r]) & set(groups[test_r])


def test_probe_on_a_word_cache_validates_by_sample(minilm, tmp_path, monkeypatch):
    words = [list(w) for w in WORDS] * 6
    tags = [list(t) for t in TAGS] * 6
    data = word_dataset(words, tags, name="words", spec="test:words6")
    cache = extract(minilm, data, tmp_path / "c", unit="word", precision="fp32", progress=False)
    seen = []
    import probekit.estimator.classifier as classifier

    real = classifier.stratified_split

    def spy(y, val_size, seed, groups=None):
        tr, va = real(y, val_size, seed, groups)
        seen.append((groups, tr, va))
        return tr, va

    monkeypatch.setattr(classifier, "stratified_split", spy)
    clf = ProbeClassifier(head="linear").fit(cache)
    ((groups, tr, va),) = seen
    assert np.array_equal(groups, cache.samples)
    assert not set(cache.samples[tr]) & set(cache.samples[va])
    assert clf.predict(cache).shape == (len(cache),)


def _naive_windows(lm, words, stride):
    """Every window of every text in one padded batch, and per word the window (by a plain loop
    over all windows) holding most of its tokens, then the most context, then the first."""
    tok = lm.tokenizer
    enc = tok(
        words,
        is_split_into_words=True,
        truncation=True,
        max_length=lm.max_length,
        stride=stride,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="pt",
    )
    inputs = {
        k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    with torch.no_grad():
        hs = lm.model(**inputs, output_hidden_states=True).hidden_states
    mapping = enc["overflow_to_sample_mapping"].tolist()
    rows: list[list[torch.Tensor]] = [[] for _ in hs]
    for s, sentence in enumerate(words):
        windows = [r for r, m in enumerate(mapping) if m == s]
        for w in range(len(sentence)):
            if TAGS_LONG[s][w] is None:
                continue
            candidates = []
            for k, r in enumerate(windows):
                ids = enc.word_ids(r)
                toks = [t for t, i in enumerate(ids) if i == w]
                if toks:
                    real = [t for t, i in enumerate(ids) if i is not None]
                    key = (len(toks), min(toks[0] - real[0], real[-1] - toks[-1]), -k)
                    candidates.append((key, r, toks))
            _, r, toks = max(candidates)  # a word in no window: max() of nothing fails here
            for layer, h in enumerate(hs):
                rows[layer].append(h[r, toks].mean(0))
    return [torch.stack(r) for r in rows], len(mapping)


LONG = [(WORDS[0] + WORDS[2]) * 3, WORDS[1], (WORDS[4] + WORDS[3]) * 2]
TAGS_LONG = [(TAGS[0] + TAGS[2]) * 3, TAGS[1], (TAGS[4] + TAGS[3]) * 2]


def test_long_texts_read_each_word_from_its_best_window(tiny_bert_dir, tmp_path):
    lm = load_model(tiny_bert_dir, max_length=16)
    data = word_dataset(LONG, TAGS_LONG, name="long", spec="test:long")
    cache = extract(
        lm, data, tmp_path / "w", unit="word", stride=4, precision="fp32", progress=False
    )
    refs, n_windows = _naive_windows(lm, LONG, 4)
    assert n_windows > len(LONG) + 2  # the long texts really are split
    assert len(cache) == sum(t is not None for row in TAGS_LONG for t in row)  # no word lost
    for layer, ref in enumerate(refs):
        assert torch.equal(cache[f"layers.{layer}.mean"], ref), layer
    assert cache.manifest["stride"] == 4
    # a text that fits in one window: the same rows as without windows
    short = word_dataset(WORDS[:2], TAGS[:2], name="short", spec="test:short")
    roomy = load_model(tiny_bert_dir)
    a = extract(
        roomy, short, tmp_path / "a", unit="word", stride=8, precision="fp32", progress=False
    )
    b = extract(roomy, short, tmp_path / "b", unit="word", precision="fp32", progress=False)
    for key in a.keys():
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ConfigError, match="stride"):
        extract(roomy, short, tmp_path / "c", unit="token", stride=8, progress=False)


def test_vit_patch_rows_equal_forward_intermediates(tmp_path):
    from probekit.data import Dataset, PatchUnits

    lm = load_model("timm:test_vit", weights="random")
    m = lm.model
    gh, gw = m.patch_embed.grid_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (3, 48, 56, 3), dtype=np.uint8)
    grid = rng.integers(-1, 3, (3, gh, gw))  # -1: an unlabelled patch, never a row
    data = Dataset(
        name="patches",
        kind="image",
        labels=np.zeros(3, np.int64),
        label_names=["sky", "tree", "road"],
        spec="test:patches",
        images=images,
        units=PatchUnits(grid),
    )
    cache = extract(lm, data, tmp_path / "p", unit="token", precision="fp32", progress=False)
    assert cache.unit == "token" and len(cache) == int((grid >= 0).sum())
    assert np.array_equal(cache.labels, grid.reshape(3, -1)[grid.reshape(3, -1) >= 0])
    x = lm.preprocess(data.get_items(range(3)))["x"]
    with torch.no_grad():
        inter = m.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        embed = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))[:, m.num_prefix_tokens :]
    flat = grid.reshape(3, -1)
    for layer, patches in enumerate([embed, *inter]):
        ref = torch.cat([patches[b, np.flatnonzero(flat[b] >= 0)] for b in range(3)])
        assert torch.equal(cache[f"layers.{layer}.token"], ref), layer
    wrong = Dataset(
        name="wrong",
        kind="image",
        labels=np.zeros(3, np.int64),
        label_names=["a"],
        spec="test:wrong",
        images=images,
        units=PatchUnits(np.zeros((3, gh + 1, gw), np.int64)),
    )
    with pytest.raises(ConfigError, match="grid"):
        extract(lm, wrong, tmp_path / "w", unit="token", progress=False)


SPANS = [
    [(0, 4, "NP"), (4, 5, "VP"), (1, 3, "ADJP")],
    [(0, 1, "NP"), (1, 4, "VP")],
    [(0, 2, "NP"), (2, 4, "VP"), (4, 5, None)],
    [(0, 3, "NP")],
    [(0, 1, "VP"), (1, 3, "NP")],
]
PAIRS = [
    [(0, 4, 4, 5, "subj")],
    [(0, 1, 1, 2, "subj"), (1, 2, 3, 4, "obj")],
    [],
    [],
    [(0, 1, 1, 3, "obj")],
]


@pytest.mark.parametrize(("spans", "how"), [(SPANS, "mean"), (SPANS, "endpoints"), (PAIRS, "mean")])
def test_span_rows_equal_a_naive_loop(minilm, tmp_path, spans, how):
    from probekit.data import span_dataset

    data = span_dataset(WORDS, spans, name="spans", spec="test:spans")
    cache = extract(
        minilm,
        data,
        tmp_path / "s",
        unit="span",
        span_pooling=how,
        precision="fp32",
        progress=False,
    )
    tok = minilm.tokenizer
    enc = tok(WORDS, is_split_into_words=True, padding=True, return_tensors="pt")
    inputs = {
        k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    with torch.no_grad():
        hs = minilm.model(**inputs, output_hidden_states=True).hidden_states
    for layer, h in enumerate(hs):
        rows = []
        for b, row in enumerate(spans):
            ids = enc.word_ids(b)

            def word(w, b=b, ids=ids, h=h):
                return h[b, [t for t, i in enumerate(ids) if i == w]].mean(0)

            for span in row:
                if span[-1] is None:
                    continue
                parts = []
                for a, e in zip(span[:-1:2], span[1:-1:2]):
                    if how == "endpoints":
                        parts += [word(a), word(e - 1)]
                    else:
                        parts.append(torch.stack([word(w) for w in range(a, e)]).mean(0))
                rows.append(torch.cat(parts))
        ref = torch.stack(rows)
        got = cache[f"layers.{layer}.span"]
        assert got.shape == ref.shape
        assert torch.equal(got, ref), (layer, (got - ref).abs().max().item())
    assert cache.dims[0] == 384 * (2 if how == "endpoints" or spans is PAIRS else 1)
