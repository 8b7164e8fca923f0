"""Residual-stream components (``component="attn"`` / ``"mlp"``): what each block adds.

Tiny random decoders (2 layers, 32 wide, fp32), one per architecture probekit knows, checked
against references computed here: HF ``output_hidden_states`` (and, for the last block, whose
``hidden_states`` entry is taken after the final norm, a hook on the block's own output), forward
hooks this test puts on the modules named in transformers' modeling files, and each block's MLP
sub-block re-run by hand on ``hidden[l - 1] + attn[l]``. The identity
``hidden[l] == hidden[l - 1] + attn[l] + mlp[l]`` is checked per token and pooled (``mean``,
``last``). One slow test checks it on the bundled Gemma 3 270M.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from probekit import extract, from_arrays, load_model, record
from probekit.cli import main
from probekit.data import word_dataset
from probekit.errors import CacheMismatchError, ConfigError
from probekit.models.components import COMPONENTS, select_component
from probekit.runs.config import RunConfig

V = 30522  # the MiniLM tokenizer's vocabulary
TEXTS = [
    "a short one",
    "a much longer sentence that needs many more tokens than the first",
    "mid length text",
]
GQA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
GQA |= {"intermediate_size": 48, "num_key_value_heads": 1}
ATOL = 1e-6  # a sum of three float32 terms in another order; a missing term is off by ~1e-2


def _configs() -> dict[str, Any]:
    import transformers as T

    return {
        "gpt2": lambda: T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=2),
        "llama": lambda: T.LlamaConfig(vocab_size=V, **GQA),
        "qwen2": lambda: T.Qwen2Config(vocab_size=V, **GQA),
        "mistral": lambda: T.MistralConfig(vocab_size=V, **GQA),
        "gemma3": lambda: T.Gemma3TextConfig(vocab_size=V, head_dim=16, sliding_window=4, **GQA),
    }


# The test's own reading of each block's forward (transformers' modeling_*.py): the attention
# term added to the stream, and the MLP term as a function of the stream after attention.
def _attn_module(row: str, block: Any) -> Any:
    if row == "gpt2":
        return block.attn  # attn(ln_1(x)): c_proj, then resid_dropout
    if row == "gemma3":
        return block.post_attention_layernorm  # post_attention_layernorm(self_attn(...))
    return block.self_attn  # self_attn(input_layernorm(x))[0]


def _mlp_by_hand(row: str, block: Any, h: torch.Tensor) -> torch.Tensor:
    if row == "gpt2":
        return block.mlp(block.ln_2(h))
    if row == "gemma3":
        return block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(h)))
    return block.mlp(block.post_attention_layernorm(h))


def _blocks(model: Any) -> Any:
    return model.h if hasattr(model, "h") else model.layers


@pytest.fixture(scope="module", params=list(_configs()))
def decoder(request: pytest.FixtureRequest, tmp_path_factory: Any, minilm_tokenizer_dir: str):
    from transformers import AutoModel, AutoTokenizer

    row = request.param
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(row)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoModel.from_config(_configs()[row]()).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(path)
    return row, load_model(str(path))


def _reference_stream(lm: Any, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """hidden[0..L]: HF ``hidden_states[0..L-1]``, then the last block's own output (HF's last
    entry has the final norm applied)."""
    outs: list[torch.Tensor] = []
    block = _blocks(lm.model)[-1]
    handle = block.register_forward_hook(  # append returns None: the output stays
        lambda m, a, out: outs.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            hs = lm.model(**inputs, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    assert len(outs) == 1
    return [*hs[:-1], outs[0]]


def _pooled(t: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """A naive loop over each text's real tokens (either padding side)."""
    rows = []
    for i in range(t.shape[0]):
        real = t[i, mask[i].bool()]
        rows.append(real.mean(0) if how == "mean" else real[-1])
    return torch.stack(rows)


def test_the_stream_is_the_sum_of_its_components(decoder: Any, tmp_path: Path) -> None:
    row, lm = decoder
    inputs = lm.preprocess(TEXTS)
    mask = inputs["attention_mask"]
    blocks = _blocks(lm.model)
    hooked: dict[int, torch.Tensor] = {}

    def keep(i: int) -> Any:
        def hook(module: Any, args: Any, out: Any) -> None:  # returns None: the output stays
            hooked[i] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [_attn_module(row, b).register_forward_hook(keep(i)) for i, b in enumerate(blocks)]
    try:
        stream = _reference_stream(lm, inputs)
    finally:
        for h in handles:
            h.remove()
    L = len(stream) - 1
    assert L == len(blocks) == 2
    terms = {c: record(lm, TEXTS, pooling="tokens", component=c) for c in ("attn", "mlp")}
    data = from_arrays(TEXTS, [0, 1, 0], name="texts")
    caches = {
        c: extract(
            lm,
            data,
            tmp_path / c,
            pooling="mean+last",
            component=c,
            precision="fp32",
            progress=False,
        )
        for c in ("attn", "mlp")
    }
    assert sorted(terms["attn"]) == [f"attn.{l}.tokens" for l in range(1, L + 1)]
    real = mask.bool()
    for l in range(1, L + 1):
        attn, mlp = terms["attn"][f"attn.{l}.tokens"], terms["mlp"][f"mlp.{l}.tokens"]
        # the attention term is the named module's output; the MLP term that sub-block re-run
        # by hand on the stream after attention
        assert torch.equal(attn, hooked[l - 1]), l
        with torch.no_grad():
            by_hand = _mlp_by_hand(row, blocks[l - 1], stream[l - 1] + hooked[l - 1])
        assert torch.equal(mlp, by_hand), l
        assert attn[real].abs().max() > 1e-3 and mlp[real].abs().max() > 1e-3  # both terms count
        torch.testing.assert_close(
            (stream[l - 1] + attn + mlp)[real], stream[l][real], atol=ATOL, rtol=0
        )
        for how in ("mean", "last"):  # pooling is linear: the pooled identity holds too
            summed = (
                _pooled(stream[l - 1], mask, how)
                + caches["attn"][f"attn.{l}.{how}"]
                + caches["mlp"][f"mlp.{l}.{how}"]
            )
            torch.testing.assert_close(
                summed, _pooled(stream[l], mask, how), atol=ATOL, rtol=0, msg=f"{l} {how}"
            )


@pytest.mark.parametrize("decoder", ["gpt2"], indirect=True)
def test_resid_is_the_default_and_unchanged(
    decoder: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lm = decoder
    data = from_arrays(TEXTS, [0, 1, 0], name="texts")
    plain = extract(lm, data, tmp_path / "plain", precision="fp32", progress=False)
    resid = extract(
        lm, data, tmp_path / "resid", component="resid", precision="fp32", progress=False
    )
    attn = extract(lm, data, tmp_path / "attn", component="attn", precision="fp32", progress=False)
    assert "component" not in plain.manifest and plain.component == "resid"
    assert resid.fingerprint == plain.fingerprint
    assert attn.manifest["component"] == attn.component == "attn"
    assert attn.layer_names == ["attn.1", "attn.2"] and attn.fingerprint != plain.fingerprint
    with pytest.raises(CacheMismatchError):
        extract(lm, data, tmp_path / "plain", component="mlp", precision="fp32", progress=False)
    assert main(["info", str(tmp_path / "attn")]) == 0
    assert "component  attn" in capsys.readouterr().out


@pytest.mark.parametrize("decoder", ["llama"], indirect=True)
def test_word_rows_of_components_add_up(decoder: Any, tmp_path: Path) -> None:
    _, lm = decoder
    words = [["The", "unbelievably", "fluffy", "cat", "."], ["Dogs", "run", "home"]]
    tags = [["DET", "ADV", "ADJ", "NOUN", "PUNCT"], ["NOUN", "VERB", "ADV"]]
    data = word_dataset(words, tags, name="words", spec="test:words")
    opts = dict(unit="word", word_pooling="mean", precision="fp32", progress=False)
    c = {k: extract(lm, data, tmp_path / k, component=k, **opts) for k in COMPONENTS}
    assert len(c["attn"]) == len(c["resid"]) == 8 and c["attn"].unit == "word"
    summed = c["resid"]["layers.0.mean"] + c["attn"]["attn.1.mean"] + c["mlp"]["mlp.1.mean"]
    torch.testing.assert_close(summed, c["resid"]["layers.1.mean"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("decoder", ["gpt2", "llama"], indirect=True)
def test_layers_select_blocks(decoder: Any) -> None:
    row, lm = decoder

    def names(selection: Any, component: str = "attn") -> list[str]:
        return [s.name for s in select_component(lm, component, selection)]

    assert names(None) == names("attn.*") == ["attn.1", "attn.2"]
    assert names([1]) == names(["1"]) == names([-2]) == ["attn.1"]
    assert names(1) == names([-1]) == ["attn.2"]  # the last block
    assert names("mlp.2", "mlp") == names(["-1"], "mlp") == ["mlp.2"]
    assert names([2, 1]) == ["attn.2", "attn.1"]
    with pytest.raises(ConfigError, match="no layer 0"):
        names([0])
    with pytest.raises(ConfigError, match="blocks 1..2"):
        names([3])
    module = "h.*.mlp" if row == "gpt2" else "layers.*.mlp"
    assert names(module) == [module.replace("*", "0"), module.replace("*", "1")]
    assert names([0], "resid") == ["layers.0"]


@pytest.mark.slow
def test_gemma3_270m_stream_is_the_sum_of_its_components(gemma: Any) -> None:
    lm = gemma
    texts = ["The capital of France is", "Probes read hidden states"]
    inputs = lm.preprocess(texts)
    real = inputs["attention_mask"].bool()
    stream = _reference_stream(lm, inputs)
    attn = record(lm, texts, pooling="tokens", component="attn")
    mlp = record(lm, texts, pooling="tokens", component="mlp")
    assert len(stream) == 19 and len(attn) == len(mlp) == 18
    for l in range(1, 19):
        got = (stream[l - 1] + attn[f"attn.{l}.tokens"] + mlp[f"mlp.{l}.tokens"])[real]
        ref = stream[l][real]
        err = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
        assert err < 1e-4, (l, err)


# ---------------------------------------------------------------- errors and options


def test_other_architectures_are_refused_in_one_line(tiny_bert_dir: str, tmp_path: Path) -> None:
    lm = load_model(tiny_bert_dir)
    data = from_arrays(TEXTS, [0, 1, 0], name="texts")
    with pytest.raises(ConfigError, match=r"GPT-2, Llama, Mistral, Qwen2 and Gemma 3") as err:
        extract(lm, data, tmp_path / "c", component="attn", progress=False)
    assert "\n" not in str(err.value) and "bert" in str(err.value)
    assert not (tmp_path / "c").exists()  # refused before anything is written


def test_image_models_are_refused(tmp_path: Path) -> None:
    lm = load_model("timm:test_vit", weights="random")
    images = np.random.default_rng(0).integers(0, 255, (2, 40, 52, 3), dtype=np.uint8)
    data = from_arrays(images, [0, 1], name="noise")
    with pytest.raises(ConfigError, match=r"image model: use component=resid"):
        extract(lm, data, tmp_path / "c", component="mlp", progress=False)
    assert not (tmp_path / "c").exists()


def test_component_is_a_run_option() -> None:
    with pytest.raises(ConfigError, match=r"component must be one of resid, attn, mlp"):
        RunConfig(component="ffn")
    assert RunConfig(component="mlp").stage_options("extract")["component"] == "mlp"
    assert RunConfig().stage_options("extract")["component"] == "resid"
    with pytest.raises(ConfigError, match="unknown component 'ffn'"):  # before any loading
        extract("hf:no-such-model", "csv:no-such.csv", "unused", component="ffn")


@pytest.mark.parametrize("decoder", ["gpt2", "gemma3"], indirect=True)
def test_cli_layers_lists_a_component(decoder: Any, capsys: pytest.CaptureFixture[str]) -> None:
    row, lm = decoder
    assert main(["layers", lm.info["source"], "--component", "mlp"]) == 0
    out = capsys.readouterr().out
    module = (
        "h.{}.mlp"
        if row == "gpt2"
        else ("layers.{}.post_feedforward_layernorm" if row == "gemma3" else "layers.{}.mlp")
    )
    lines = [line.split() for line in out.splitlines()[2:4]]
    assert lines == [["1", "mlp.1", module.format(0), "32"], ["2", "mlp.2", module.format(1), "32"]]
