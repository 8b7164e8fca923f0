"""Prompt templates and read windows (issue #19): every pooled row equals HF
``output_hidden_states`` of the templated strings, read at tokens chosen by a plain loop over the
tokenizer's offsets (fp32, exact), for right- and left-padded decoders; the options are checked
before any forward pass, refused in one line on the CLI, and part of the cache's fingerprint."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from probekit import CacheMismatchError, CacheWriter, extract, from_arrays, load_model, record
from probekit.errors import ConfigError, DataError
from probekit.recording.pooling import FeatureKey, expand_poolings, pool
from probekit.recording.prompts import check_template, parse_template

TEMPLATE = "Review: {text}\nSentiment:"
TEXTS = [
    "a great movie!",
    "Terrible, boring and far too long; I left early.",
    "ok",
    "The plot was thin but the acting carried it.",
    "Loved every minute",
]
LABELS = [1, 0, 0, 1, 1]
# a Gemma-style chat template that trims the user's content
CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>user\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide random LlamaModel with a byte-level BPE tokenizer trained here (a
    ``<s>`` BOS, offsets that include a word's leading space, no end token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEMPLATE.replace("{text}", t) for t in TEXTS] * 3, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")
    path = tmp_path_factory.mktemp("llama")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    LlamaModel(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def decoders(tiny_gpt2_dir: str, tiny_llama_dir: str) -> dict:
    return {"gpt2": load_model(tiny_gpt2_dir), "llama": load_model(tiny_llama_dir)}


def _data(texts=TEXTS, labels=LABELS):
    return from_arrays(list(texts), list(labels), name="reviews")


def _reference(lm, prompts, spans, reads=("prompt", "text"), special=True):
    """``{read: ({layer: {pooling: (N, D)}}, windows)}`` by plain loops: one padded batch of the
    prompts through HF with ``output_hidden_states``, each sample's tokens picked from its
    offsets (``read="text"``: those overlapping the span's characters)."""
    tok = lm.tokenizer
    enc = tok(
        prompts,
        padding=True,
        return_offsets_mapping=True,
        add_special_tokens=special,
        return_tensors="pt",
    )
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    if tok.padding_side == "left":  # each prompt keeps the positions it has alone
        inputs["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hs = lm.model(**inputs, output_hidden_states=True).hidden_states
    out = {}
    for read in reads:
        picked = []  # per sample, the token positions of its read window
        for b, (a, e) in enumerate(spans):
            window = []
            for t in range(enc["input_ids"].shape[1]):
                s, f = (int(x) for x in enc["offset_mapping"][b, t])
                if enc["attention_mask"][b, t] == 1 and (
                    read == "prompt" or (f > s and s < e and f > a)
                ):
                    window.append(t)
            picked.append(window)
        pooled = {}
        for layer, h in enumerate(hs):
            rows = {"mean": [], "last": [], "last-2": []}
            for b, window in enumerate(picked):
                # the mean's equation over the padded row, weights 1 on the window (summed in
                # the order torch sums a masked row, so that the comparison can be exact)
                weights = torch.zeros(h.shape[1])
                weights[window] = 1.0
                rows["mean"].append((h[b] * weights[:, None]).sum(0) / weights.sum())
                rows["last"].append(h[b, window[-1]])
                rows["last-2"].append(h[b, window[max(len(window) - 3, 0)]])
            pooled[layer] = {k: torch.stack(v) for k, v in rows.items()}
        out[read] = (pooled, picked)
    return out


def _spans(texts, template=TEMPLATE):
    pre = template.split("{text}")[0]
    return [template.replace("{text}", t) for t in texts], [
        (len(pre), len(pre) + len(t)) for t in texts
    ]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_windows_equal_hidden_states_at_offsets(decoders, tmp_path, arch, side):
    lm = decoders[arch]
    old, lm.tokenizer.padding_side = lm.tokenizer.padding_side, side
    try:
        prompts, spans = _spans(TEXTS)
        mask = lm.tokenizer(prompts, padding=True, return_tensors="pt")["attention_mask"]
        assert (mask[:, 0 if side == "left" else -1] == 0).any()  # this side's padding is read past
        refs = _reference(lm, prompts, spans)
        whole, text = (len(w) for w in refs["prompt"][1]), (len(w) for w in refs["text"][1])
        assert all(0 < t < w for t, w in zip(text, whole, strict=True))  # the template left out
        for read in ("prompt", "text"):
            cache = extract(
                lm,
                _data(),
                tmp_path / read,
                pooling="mean+last+last-2",
                template=TEMPLATE,
                read=read,
                precision="fp32",
                progress=False,
            )
            assert cache.manifest["prompt"] == {
                "template": TEMPLATE,
                "chat_template": None,
                "read": read,
            }
            for layer, pooled in refs[read][0].items():
                for p, want in pooled.items():
                    got = cache[f"layers.{layer}.{p}"]
                    assert torch.equal(got, want), (arch, side, read, layer, p)
    finally:
        lm.tokenizer.padding_side = old


def test_chat_template_reads_the_trimmed_text(decoders, tmp_path):
    lm = decoders["llama"]
    tok = lm.tokenizer
    texts = ["  a great movie! ", "ok", "Loved every minute"]
    with pytest.raises(ConfigError, match="has no chat template"):
        extract(lm, _data(texts, [1, 0, 1]), tmp_path / "none", chat_template=True)
    assert not (tmp_path / "none").exists()
    tok.chat_template = CHAT
    old, tok.padding_side = tok.padding_side, "left"
    try:
        cache = extract(
            lm,
            _data(texts, [1, 0, 1]),
            tmp_path / "chat",
            pooling="mean+last+last-2",
            chat_template=True,
            read="text",
            precision="fp32",
            progress=False,
        )
        rendered = [
            tok.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
        assert (
            rendered[0].endswith("<start_of_turn>model\n") and "a great movie!<end" in rendered[0]
        )
        spans = [
            (r.index(t.strip()), r.index(t.strip()) + len(t.strip()))
            for r, t in zip(rendered, texts)
        ]
        ref = _reference(lm, rendered, spans, ("text",), special=False)["text"][0]
        # apply_chat_template's own tokens: the template's <s>, not a second one
        ids = tok.apply_chat_template(
            [{"role": "user", "content": texts[1]}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert ids == tok(rendered[1], add_special_tokens=False)["input_ids"]
        for layer, pooled in ref.items():
            for p, want in pooled.items():
                assert torch.equal(cache[f"layers.{layer}.{p}"], want), (layer, p)
        assert (
            cache.manifest["prompt"]["chat_template"] == hashlib.sha256(CHAT.encode()).hexdigest()
        )
        # a template inside the chat turn: the text's own characters, spaces and all
        filled = [TEMPLATE.replace("{text}", t) for t in texts]
        rendered = [
            tok.apply_chat_template(
                [{"role": "user", "content": f}], tokenize=False, add_generation_prompt=True
            )
            for f in filled
        ]
        at = [r.index(f) + len("Review: ") for r, f in zip(rendered, filled)]
        spans = [(a, a + len(t)) for a, t in zip(at, texts)]
        ref = _reference(lm, rendered, spans, ("text",), special=False)["text"][0]
        got = record(
            lm, texts, pooling="mean+last", template=TEMPLATE, chat_template=True, read="text"
        )
        for layer, pooled in ref.items():
            for p in ("mean", "last"):
                assert torch.equal(got[f"layers.{layer}.{p}"], pooled[p]), (layer, p)
    finally:
        tok.padding_side = old
        tok.chat_template = None


def test_truncation_cuts_the_text_not_the_template(tiny_llama_dir, tmp_path):
    lm = load_model(tiny_llama_dir, max_length=16)
    long = "The plot was thin but the acting carried it, and the music was great too."
    texts = [long, "ok"]
    with pytest.warns(UserWarning, match=r"1 text\(s\) .* had their end cut"):
        cache = extract(
            lm,
            _data(texts, [1, 0]),
            tmp_path / "c",
            pooling="last",
            template=TEMPLATE,
            precision="fp32",
            progress=False,
        )
    assert cache.manifest["info"]["truncated_samples"] == 1
    tok = lm.tokenizer
    # the reference cut: the longest run of the text's whole tokens that lets the prompt fit
    pre, post = TEMPLATE.split("{text}")
    full = tok(pre + long + post, return_offsets_mapping=True)
    a, b = len(pre), len(pre) + len(long)
    starts = [s for s, e in full["offset_mapping"] if e > s and s < b and e > a]
    fitted = None
    for k in range(len(starts), -1, -1):
        text = long[: max(starts[k] - a, 0)] if k < len(starts) else long
        if len(tok(pre + text + post)["input_ids"]) <= 16:
            fitted = pre + text + post
            break
    assert fitted is not None and fitted.endswith("\nSentiment:")
    ref = _reference(lm, [fitted, pre + "ok" + post], [(0, 0)] * 2, ("prompt",))["prompt"][0]
    for layer, pooled in ref.items():
        assert torch.equal(cache[f"layers.{layer}.last"], pooled["last"])
    with pytest.raises(ConfigError, match="no room"):
        extract(lm, _data(texts, [1, 0]), tmp_path / "d", template="x " * 20 + "{text}")


def test_options_are_refused_before_any_work(decoders, tmp_path):
    data = _data()
    for bad, match in [
        ("Review: {txt}", "no {text}"),
        ("{text} and {text}", "more than one"),
        ("{text} {label}", "brace"),
        ("{text} }", "brace"),
    ]:
        with pytest.raises(ConfigError, match=match):  # before the (missing) model is loaded
            extract("hf:/no/such/model", data, tmp_path / "x", template=bad)
    with pytest.raises(ConfigError, match="read must be"):
        extract("hf:/no/such/model", data, tmp_path / "x", read="window")
    lm = decoders["gpt2"]
    with pytest.raises(ConfigError, match="pooling cls"):
        extract(lm, data, tmp_path / "x", pooling="cls", read="text")
    with pytest.raises(DataError, match="sample 1: text ''"):
        extract(lm, _data(["fine", ""], [0, 1]), tmp_path / "x", read="text", progress=False)
    from dataclasses import replace
    from types import SimpleNamespace

    # transformers 5 builds every shipped tokenizer on `tokenizers`; a Python-only one has no
    # offset mapping and says so with is_fast=False
    slow = replace(lm, tokenizer=SimpleNamespace(is_fast=False))
    with pytest.raises(ConfigError, match="fast tokenizer"):
        extract(slow, data, tmp_path / "x", template=TEMPLATE)
    assert not (tmp_path / "x").exists()
    assert parse_template(r"Review: {text}\nSentiment:\t\\") == "Review: {text}\nSentiment:\t\\"
    assert check_template("Q: {text} A:") == ("Q: ", " A:")


def test_last_n_pooling_against_a_loop():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0]])
    for n in (0, 1, 2, 5):
        got = pool(hidden, f"last-{n}", mask)
        for b in range(3):
            kept = [t for t in range(6) if mask[b, t]]
            assert torch.equal(got[b], hidden[b, kept[max(len(kept) - 1 - n, 0)]]), (n, b)
    assert torch.equal(pool(hidden, "last-2"), hidden[:, 3])
    assert torch.equal(pool(hidden, "last-0", mask), pool(hidden, "last", mask))
    assert expand_poolings("last-0+last-02,mean") == ["last", "last-2", "mean"]
    assert str(FeatureKey.parse("layers.3.last-4")) == "layers.3.last-4"
    with pytest.raises(ConfigError, match="last-N"):
        expand_poolings("last-x")


def test_template_is_fingerprinted_and_resumes(decoders, tmp_path, monkeypatch):
    lm = decoders["gpt2"]
    data = _data()
    opts = dict(
        template=TEMPLATE,
        pooling="last",
        shard_size=2,
        batch_size=2,
        precision="fp32",
        progress=False,
    )
    original = CacheWriter.write_shard

    def crash(self, i, *a, **k):
        if i == 1:
            raise RuntimeError("killed")
        return original(self, i, *a, **k)

    monkeypatch.setattr(CacheWriter, "write_shard", crash)
    with pytest.raises(RuntimeError, match="killed"):
        extract(lm, data, tmp_path / "c", **opts)
    monkeypatch.setattr(CacheWriter, "write_shard", original)
    with pytest.raises(CacheMismatchError, match="prompt"):
        extract(lm, data, tmp_path / "c", **{**opts, "template": "Text: {text}"})
    with pytest.raises(CacheMismatchError, match="prompt"):
        extract(lm, data, tmp_path / "c", **{k: v for k, v in opts.items() if k != "template"})
    written = []
    monkeypatch.setattr(
        CacheWriter,
        "write_shard",
        lambda self, i, *a, **k: (written.append(i), original(self, i, *a, **k)),
    )
    cache = extract(lm, data, tmp_path / "c", **opts)
    assert written == [1, 2]
    want = record(lm, TEXTS, pooling="last", template=TEMPLATE, batch_size=2)
    for key, value in want.items():
        assert torch.equal(cache[key], value), key


def test_cli_flags_errors_and_info(tiny_gpt2_dir, tmp_path, capsys):
    from probekit.cli import main

    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(TEXTS, LABELS)))
    base = ["extract", "--model", tiny_gpt2_dir, "--data", f"csv:{csv}", "--precision", "fp32"]
    for flags, match in [
        (["--template", "Review: {review}"], "no {text}"),
        (["--read", "text", "--pooling", "cls"], "pooling cls"),
        (["--unit", "word", "--template", TEMPLATE], "apply to unit=sample"),
        (["--chat-template"], "has no chat template"),
    ]:
        capsys.readouterr()
        assert main([*base, *flags, "--out", str(tmp_path / "bad")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and match in lines[0], lines
    assert not (tmp_path / "bad").exists()
    cache_dir = tmp_path / "c"
    flags = [
        "--template",
        r"Review: {text}\nSentiment:",
        "--read",
        "text",
        "--pooling",
        "mean+last-2",
    ]
    assert main([*base, *flags, "--out", str(cache_dir)]) == 0
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["prompt"] == {"template": TEMPLATE, "chat_template": None, "read": "text"}
    assert manifest["poolings"] == ["mean", "last-2"]
    capsys.readouterr()
    assert main(["info", str(cache_dir)]) == 0
    assert (
        "prompt     template 'Review: {text}\\nSentiment:'   read text" in capsys.readouterr().out
    )


@pytest.mark.slow
def test_bundled_gemma_reads_templated_prompts_exactly(gemma, tmp_path):
    lm = gemma
    assert lm.tokenizer.padding_side == "left"
    texts = ["a great movie!", "Terrible, boring and far too long.", "ok"]
    prompts, spans = _spans(texts)
    data = _data(texts, [1, 0, 0])
    whole = extract(
        lm,
        data,
        tmp_path / "p",
        pooling="last+last-2",
        template=TEMPLATE,
        precision="fp32",
        progress=False,
    )
    text = record(lm, texts, pooling="mean", template=TEMPLATE, read="text")  # no cache
    refs = _reference(lm, prompts, spans)
    (ref_p, _), (ref_t, picked) = refs["prompt"], refs["text"]
    assert [len(w) for w in picked] == [4, 8, 1]  # ▁a ▁great ▁movie !, ...
    for layer in ref_p:
        for p in ("last", "last-2"):
            assert torch.equal(whole[f"layers.{layer}.{p}"], ref_p[layer][p]), (layer, p)
        assert torch.equal(text[f"layers.{layer}.mean"], ref_t[layer]["mean"]), layer
    assert whole.manifest["prompt"]["template"] == TEMPLATE
