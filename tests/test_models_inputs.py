"""Inputs a model cannot take as they are: texts longer than its position table, 16/32-bit
greyscale images; and ``list_layers``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from probekit import (
    extract,
    format_layers,
    from_arrays,
    list_layers,
    load_model,
    record,
    select_layers,
)
from probekit.models.layers import glob_modules
from probekit.models.loading import _to_rgb

LONG = " ".join(["probing"] + ["frozen layers of a model"] * 10)  # about 50 tokens
SHORT = "a short one"


@pytest.fixture(scope="module")
def short_bert_dir(tmp_path_factory, minilm_tokenizer_dir):
    """A random BERT whose position table has 16 rows, with a tokenizer that allows 512."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("bert16"))
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    BertModel(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(path)
    return path


def test_long_text_is_truncated_to_the_position_table(short_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    lm = load_model(short_bert_dir)
    assert lm.info["preprocessing"]["max_length"] == 16
    with pytest.warns(UserWarning, match="limit of 16 tokens"):
        got = record(lm, [LONG, SHORT], pooling="cls+mean")
    assert lm.n_truncated == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        record(lm, [LONG, LONG, SHORT], pooling="cls")
    assert lm.n_truncated == 3
    tok = AutoTokenizer.from_pretrained(short_bert_dir)
    ref_inputs = tok([LONG], truncation=True, max_length=16, return_tensors="pt")
    assert ref_inputs["input_ids"].shape[1] == 16
    with torch.no_grad():
        hs = lm.model(**ref_inputs, output_hidden_states=True).hidden_states
    for l, h in enumerate(hs):
        torch.testing.assert_close(got[f"layers.{l}.cls"][:1], h[:, 0], rtol=0, atol=0)
        torch.testing.assert_close(got[f"layers.{l}.mean"][:1], h.mean(1), rtol=1e-5, atol=1e-6)

    texts = [LONG, SHORT, LONG + " more", SHORT + " two", LONG]
    data = from_arrays(texts, [0, 1, 0, 1, 0], label_names=["a", "b"])
    assert lm.count_truncated(texts) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = extract(lm, data, tmp_path / "cache", progress=False)
    assert cache.manifest["info"]["truncated_samples"] == 3


def test_roberta_position_offset_is_respected(tmp_path, minilm_tokenizer_dir):
    """RoBERTa numbers positions from padding_idx + 1: 18 rows take 16 tokens."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=18,
        pad_token_id=1,
    )
    RobertaModel(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.info["preprocessing"]["max_length"] == 16
    with pytest.warns(UserWarning):
        out = record(lm, [LONG], pooling="cls")
    assert out["layers.2.cls"].shape == (1, 32) and torch.isfinite(out["layers.2.cls"]).all()


# ------------------------------------------------------------------ images


def test_16bit_grey_keeps_its_mean():
    mid = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    assert mid.mode == "I;16"
    rgb = np.asarray(_to_rgb(mid), dtype=np.float64)
    assert rgb.shape == (8, 8, 3) and abs(rgb.mean() - 127.5) <= 0.5

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    for image in (
        Image.fromarray(ramp.astype(np.uint16)),  # I;16
        Image.fromarray(ramp.astype(np.int32)),  # I (16-bit content)
        Image.fromarray((ramp / 65535).astype(np.float32)),  # F in [0, 1]
        ramp.astype(np.uint16),
    ):  # a uint16 array
        rgb = np.asarray(_to_rgb(image), dtype=np.float64)
        assert abs(rgb.mean() - ramp.mean() / 257) <= 0.5, getattr(image, "mode", "array")
        assert rgb.min() == 0 and rgb.max() == 255


def test_16bit_image_reaches_the_model_as_its_8bit_twin():
    lm = load_model("timm:test_resnet", pretrained=False)
    wide = Image.fromarray(np.full((40, 40), 257 * 128, dtype=np.uint16))  # exactly 128 / 255
    eight = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
    assert torch.equal(lm.preprocess([wide])["x"], lm.preprocess([eight])["x"])


# ------------------------------------------------------------------ list_layers


def test_list_layers_tiny_bert(tiny_bert_dir):
    lm = load_model(tiny_bert_dir)
    listing = list_layers(lm, modules=True)
    assert [(r["index"], r["name"], r["width"]) for r in listing.layers] == [
        (i, f"layers.{i}", 32) for i in range(4)
    ]
    rows = {r["glob"]: r for r in listing.modules}
    block = rows["encoder.layer.*"]
    assert (block["type"], block["count"], block["layers"]) == (
        "BertLayer",
        3,
        ["layers.1", "layers.2", "layers.3"],
    )
    n_tokens = lm.example["input_ids"].shape[1]
    assert block["output"] == (1, n_tokens, 32)
    assert rows["encoder.layer.*.intermediate.dense"]["output"] == (1, n_tokens, 48)
    # every listed glob selects exactly `count` modules, and recording through it works
    for r in listing.modules:
        assert len(glob_modules(lm.model, r["glob"])) == r["count"] >= 1
    got = record(lm, ["hi"], layers="encoder.layer.*.intermediate.dense", pooling="mean")
    assert {k: v.shape[-1] for k, v in got.items()} == {
        f"encoder.layer.{i}.intermediate.dense.mean": 48 for i in range(3)
    }
    assert len(select_layers(lm.model, lm.layers, "encoder.layer.*")) == 3
    text = format_layers(listing)
    assert str(listing) == text
    assert "    3  layers.3  encoder.layer.2          32" in text
    assert "encoder.layer.*  " in text and "<- layers.1..layers.3" in text


def test_list_layers_from_a_spec_keeps_mixed_sequentials_apart():
    listing = list_layers("timm:test_resnet", modules=True, pretrained=False)
    assert [r["name"] for r in listing.layers] == [
        f"stages.{i}" for i in range(len(listing.layers))
    ]
    types = {r["glob"]: r["type"] for r in listing.modules}
    # conv1 is Sequential(conv, norm, act, conv, ...): its children keep their indices
    assert types["conv1.0"] == "Conv2d" and types["conv1.1"] != "Conv2d"
    assert "conv1.*" not in types
    assert types["layer1.*"] != "Sequential"
    text = format_layers(list_layers("timm:test_resnet", pretrained=False))
    assert "module glob" not in text and "(see --modules)" in text


def test_left_padded_decoder_poolings_read_real_tokens(tiny_gpt2_dir):
    """Left padding: ``cls`` is each text's first real token, ``mean``/``last`` its real tokens;
    every pooled vector equals the text run alone (no padding) through HF ``hidden_states``."""
    lm = load_model(tiny_gpt2_dir)
    lm.tokenizer.padding_side = "left"
    texts = [SHORT, LONG, "x y"]
    got = record(lm, texts, pooling="cls+mean+last", batch_size=3)
    for i, text in enumerate(texts):
        alone = lm.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hs = lm.model(**alone, output_hidden_states=True).hidden_states
        for layer in range(len(lm.layers) - 1):  # the last entry carries ln_f on top
            ref = hs[layer][0]
            for pooling, want in (("cls", ref[0]), ("mean", ref.mean(0)), ("last", ref[-1])):
                torch.testing.assert_close(
                    got[f"layers.{layer}.{pooling}"][i], want, atol=1e-5, rtol=0
                )
