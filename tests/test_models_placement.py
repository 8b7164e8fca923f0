"""Placement through transformers/accelerate: a model partly offloaded to disk records bitwise
the same features as the plain model; dtype and the option parsers."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from probekit import extract, from_arrays, load_model, record
from probekit.errors import ModelError
from probekit.models.placement import (
    parse_device_map,
    parse_dtype,
    parse_max_memory,
    parse_quantization,
)

TEXTS = [
    "a short one",
    "a much longer sentence that needs many more tokens than the first one",
    "x y z",
    "hello there, world",
    "probing frozen layers",
    "one more",
]


@pytest.fixture(scope="module")
def gpt2_64_dir(tmp_path_factory, minilm_tokenizer_dir):
    """A 4-layer, 64-wide random GPT-2: an 7.8 MB token table, then 0.2 MB blocks."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("gpt2_64"))
    cfg = GPT2Config(
        vocab_size=30522,
        n_embd=64,
        n_layer=4,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2Model(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(path)
    return path


def _check_offload_parity(spec, cpu_memory, tmp_path):
    plain = load_model(spec)
    big = load_model(
        spec, device_map="auto", max_memory={"cpu": cpu_memory}, offload_folder=tmp_path / "offload"
    )
    where = set(big.placement["hf_device_map"].values())
    assert where == {"cpu", "disk"}, big.placement["hf_device_map"]  # part of it lives on disk
    assert any(p.device.type == "meta" for p in big.model.parameters())
    assert big.device == torch.device("cpu")
    a = record(plain, TEXTS, pooling="cls+mean+last", batch_size=4)
    b = record(big, TEXTS, pooling="cls+mean+last", batch_size=4)
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    data = from_arrays(TEXTS, [0, 1, 0, 1, 0, 1], label_names=["a", "b"])
    ca = extract(plain, data, tmp_path / "plain", batch_size=4, shard_size=4, progress=False)
    cb = extract(big, data, tmp_path / "offloaded", batch_size=4, shard_size=4, progress=False)
    assert ca.fingerprint == cb.fingerprint  # placement does not change the features
    for key in ca.keys():
        assert torch.equal(ca[key], cb[key]), key
    assert plain.info == big.info


def test_offloaded_decoder_records_bitwise_equal(gpt2_64_dir, tmp_path):
    # 8.5 MB holds the token table and two blocks; the other blocks and ln_f go to disk.
    _check_offload_parity("hf:" + gpt2_64_dir, "8.5MB", tmp_path)


@pytest.mark.slow
def test_offloaded_minilm_records_bitwise_equal(tmp_path):
    # 70 MB holds the embeddings and two of the six blocks.
    _check_offload_parity("bundled:minilm-l6", "70MB", tmp_path)


@pytest.mark.slow
def test_offloaded_gemma_records_bitwise_equal(tmp_path):
    # 900 MB holds the 671 MB token table and 9 of the 18 blocks; the rest and the norm go to disk.
    _check_offload_parity("bundled:gemma3-270m", "900MB", tmp_path)


def test_dispatched_model_stays_put(gpt2_64_dir, tmp_path):
    big = load_model("hf:" + gpt2_64_dir, max_memory="cpu=8.5MB", offload_folder=tmp_path)
    assert big.placement["device_map"] == "auto"  # max_memory alone implies device_map="auto"
    assert big.to("cpu") is big
    with pytest.raises(ModelError, match="placed with device_map"):
        big.to("meta")


def test_bfloat16_weights(tiny_bert_dir):
    plain = load_model(tiny_bert_dir)
    half = load_model(tiny_bert_dir, torch_dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.info["dtype"] == "bfloat16" and "dtype" not in plain.info
    a = record(plain, TEXTS, layers=[-1], pooling="mean")["layers.3.mean"]
    b = record(half, TEXTS, layers=[-1], pooling="mean")["layers.3.mean"].float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert (cos > 0.99).all() and not torch.equal(a, b)


def test_bfloat16_timm_takes_float_images():
    lm = load_model("timm:test_resnet", pretrained=False, torch_dtype="bf16")
    ref = load_model("timm:test_resnet", pretrained=False)
    ref.model.load_state_dict({k: v.float() for k, v in lm.model.state_dict().items()})
    x = {"x": torch.rand(2, 3, 64, 64)}
    with torch.no_grad():
        out, base = lm.forward(x), ref.forward(x)
    assert out.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(out.float(), base, dim=-1).min() > 0.98


def test_option_parsers():
    assert parse_device_map("auto") == "auto"
    assert parse_device_map('{"embeddings": "cpu", "encoder": 0}') == {
        "embeddings": "cpu",
        "encoder": 0,
    }
    assert parse_device_map("cuda:1") == "cuda:1"
    assert parse_max_memory("cpu=40MB, 0=10gib") == {"cpu": "40MB", 0: "10GiB"}
    assert parse_max_memory({"cuda:1": 1000, "cpu": "2GB"}) == {1: 1000, "cpu": "2GB"}
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(None) is None
    for bad, match in [
        (lambda: parse_device_map("everywhere"), "device_map 'everywhere'"),
        (lambda: parse_device_map("{oops"), "not valid JSON"),
        (lambda: parse_max_memory("cpu:40MB"), "DEVICE=SIZE"),
        (lambda: parse_max_memory({"cpu": "lots"}), "is not a size"),
        (lambda: parse_max_memory({"gpu": "1GB"}), "unknown device 'gpu'"),
        (lambda: parse_dtype("int8"), "float32, float16, bfloat16"),
        (lambda: parse_quantization("3bit"), "8bit, 4bit"),
    ]:
        with pytest.raises(ModelError, match=match):
            bad()


def test_quantization_without_bitsandbytes_is_a_clear_error(monkeypatch, tiny_bert_dir):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(ModelError, match="quantization=8bit needs the bitsandbytes package"):
        load_model(tiny_bert_dir, quantization="8bit")


def test_placement_options_are_checked_before_loading(tmp_path, tiny_bert_dir):
    with pytest.raises(ModelError, match="apply to hf: models"):
        load_model("timm:test_resnet", device_map="auto")
    with pytest.raises(ModelError, match="need weights in a checkpoint folder"):
        load_model(tiny_bert_dir, weights="random", device_map="auto")
    with pytest.raises(ModelError, match="not both"):
        load_model(tiny_bert_dir, device="cpu", device_map="auto")
    with pytest.raises(ModelError, match="exclude each other"):
        load_model("timm:test_resnet", weights="random", checkpoint=__file__)


def test_model_options_describe_every_load_model_option():
    import inspect

    from probekit.models.loading import MODEL_OPTIONS

    params = inspect.signature(load_model).parameters
    keyword_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(MODEL_OPTIONS) == keyword_only
