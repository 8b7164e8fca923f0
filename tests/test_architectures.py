"""The architecture matrix: every layer and pooling of a cache equals the model's own reference.

Random weights, tiny configs, fp32. Each row builds a model, runs ``probekit.extract`` on a few
inputs with every pooling the model has, and compares the cache with what the model itself
returns: timm's ``forward_intermediates`` (channels-last stages permuted back by timm), HF's
``output_hidden_states``, and pooled references computed here one sample at a time (a naive loop
over each text's real tokens, a ViT's patches after its prefix tokens). ALBERT (one block shared
by every layer) and encoder-decoders without an encoder class are refused in one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from probekit import extract, from_arrays, load_model, record
from probekit.errors import ConfigError, ModelError

TEXTS = [
    "a short one",
    "a much longer sentence that needs many more tokens than the first one does",
    "mid length text here",
]
IMAGES = [np.random.default_rng(i).integers(0, 255, (40, 52, 3), dtype=np.uint8) for i in range(3)]
MEAN_ATOL = 2e-6  # a mean over H, W in another reduction order; a wrong axis is off by far more


def _cached(cache: Any, key: str) -> torch.Tensor:
    return cache[key].float()


def _check_pooled(cache: Any, key: str, ref: torch.Tensor, exact: bool) -> None:
    got = _cached(cache, key)
    assert got.shape == ref.shape, (key, tuple(got.shape), tuple(ref.shape))
    if exact:
        assert torch.equal(got, ref), (key, (got - ref).abs().max().item())
    else:
        torch.testing.assert_close(got, ref, atol=MEAN_ATOL, rtol=1e-5, msg=key)


# ---------------------------------------------------------------- timm

TIMM = {
    "vit": ("test_vit", {}),
    "deit-distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    ),
    "dinov2-registers": (
        "vit_small_patch14_reg4_dinov2",
        {"img_size": 28, "patch_size": 14, "depth": 2, "embed_dim": 32, "num_heads": 2},
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 64, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
        | {"window_size": 4},
    ),
    "swinv2": (
        "swinv2_tiny_window8_256",
        {"img_size": 64, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
        | {"window_size": 4},
    ),
    "mambaout": ("test_mambaout", {}),
    "convnext": ("test_convnext", {}),
    "maxvit": ("test_maxvit", {}),
    "resnet": ("test_resnet", {}),
    "efficientnet": ("test_efficientnet", {}),
}
PREFIX = {"vit": 1, "deit-distilled": 2, "dinov2-registers": 5}
CHANNELS_LAST = {"swin", "swinv2", "mambaout"}


@pytest.mark.parametrize("row", list(TIMM))
def test_timm_matrix(row: str, tmp_path: Path) -> None:
    name, kwargs = TIMM[row]
    lm = load_model(f"timm:{name}", weights="random", **kwargs)
    m = lm.model
    data = from_arrays(np.stack(IMAGES), [0, 1, 0], name="noise")
    x = lm.preprocess(data.get_items(range(3)))["x"]
    size = kwargs.get("img_size")
    if size is not None:  # preprocessing follows the size the model was built for
        assert tuple(x.shape[-2:]) == (size, size)
    vit = row in PREFIX
    poolings = "cls+mean" if vit else "mean"
    tokens_got = record(lm, data.get_items(range(3)), pooling="tokens")
    cache = extract(lm, data, tmp_path / "c", pooling=poolings, precision="fp32", progress=False)
    with torch.no_grad():
        if vit:
            assert lm.n_prefix_tokens == PREFIX[row] == m.num_prefix_tokens
            inter = m.forward_intermediates(
                x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
            )
            refs = [m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))]
            refs += [torch.cat([prefix, patches], dim=1) for patches, prefix in inter]
        else:
            assert lm.arch == "cnn" and lm.n_prefix_tokens == 0
            assert all(s.channels_last == (row in CHANNELS_LAST) for s in lm.layers)
            refs = list(m.forward_intermediates(x, intermediates_only=True))  # (B, C, H, W)
    assert len(refs) == len(lm.layers)
    for spec, ref in zip(lm.layers, refs):
        if vit:
            k = lm.n_prefix_tokens
            _check_pooled(cache, f"{spec.name}.cls", ref[:, 0], exact=True)
            _check_pooled(cache, f"{spec.name}.mean", ref[:, k:].mean(1), exact=False)
            tokens = ref
        else:
            _check_pooled(cache, f"{spec.name}.mean", ref.mean((2, 3)), exact=False)
            tokens = ref.flatten(2).transpose(1, 2)  # (B, H*W, C)
        assert torch.equal(tokens_got[f"{spec.name}.tokens"], tokens), spec.name
    if not vit:
        with pytest.raises(ConfigError, match="feature maps"):
            extract(lm, data, tmp_path / "cls", pooling="cls", precision="fp32", progress=False)


# ---------------------------------------------------------------- HF text

V = 30522  # the MiniLM tokenizer's vocabulary
SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
SMALL |= {"intermediate_size": 48}


def _text_configs() -> dict[str, Any]:
    import transformers as T

    gqa = SMALL | {"num_key_value_heads": 1}
    return {
        "bert": lambda: T.BertConfig(vocab_size=V, **SMALL),
        "distilbert": lambda: T.DistilBertConfig(
            vocab_size=V, dim=32, n_layers=3, n_heads=2, hidden_dim=48
        ),
        "roberta": lambda: T.RobertaConfig(vocab_size=V, pad_token_id=0, **SMALL),
        "electra": lambda: T.ElectraConfig(vocab_size=V, embedding_size=16, **SMALL),
        "modernbert": lambda: T.ModernBertConfig(
            vocab_size=V, pad_token_id=0, global_attn_every_n_layers=2, **SMALL
        ),
        "gpt2": lambda: T.GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=2),
        "llama": lambda: T.LlamaConfig(vocab_size=V, **gqa),
        "qwen2": lambda: T.Qwen2Config(vocab_size=V, **gqa),
        "gemma3": lambda: T.Gemma3TextConfig(vocab_size=V, head_dim=16, sliding_window=4, **gqa),
        "mamba": lambda: T.MambaConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=3, state_size=4
        ),
        "rwkv": lambda: T.RwkvConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=3,
            attention_hidden_size=32,
            intermediate_size=48,
            context_length=64,
            rescale_every=1,  # eval mode halves the stream after every block
        ),
        "t5-encoder": lambda: T.T5Config(
            vocab_size=V, d_model=32, d_kv=16, d_ff=48, num_layers=3, num_heads=2
        ),
    }


DECODERS = {"gpt2", "llama", "qwen2", "gemma3", "mamba", "rwkv"}
NO_EMBEDDINGS = {"mamba", "rwkv"}  # their hidden_states start after block 0


def _save(model: Any, path: Path, tokenizer_dir: str | None = None, processor: Any = None) -> str:
    from transformers import AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path)
    if tokenizer_dir is not None:
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    if processor is not None:
        processor.save_pretrained(path)
    return str(path)


def _text_reference(row: str, model: Any, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Layer 0..L of the reference model on ``inputs``, in probekit's convention."""
    with torch.no_grad():
        if row == "t5-encoder":  # the full encoder-decoder's own encoder
            hs = model.encoder(**inputs, output_hidden_states=True).hidden_states
            return list(hs)
        hs = model(**inputs, output_hidden_states=True).hidden_states
        if row in NO_EMBEDDINGS:  # layer 0 = the embeddings; layer l = hidden_states[l - 1]
            embed = model.get_input_embeddings()(inputs["input_ids"])
            return [embed, *hs[:-2], hs[-1]]
        return list(hs)


@pytest.mark.parametrize("row", list(_text_configs()))
def test_hf_text_matrix(row: str, tmp_path: Path, minilm_tokenizer_dir: str) -> None:
    from transformers import AutoModel, T5Model

    torch.manual_seed(0)
    config = _text_configs()[row]()
    full = T5Model if row == "t5-encoder" else AutoModel  # T5: the encoder-decoder is saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = full(config) if row == "t5-encoder" else full.from_config(config)
        path = _save(saved, tmp_path / "m", minilm_tokenizer_dir)
        ref_model = full.from_pretrained(path).eval().requires_grad_(False)  # frozen as ours
    lm = load_model(path)
    assert lm.default_pooling == ("last" if row in DECODERS else "cls+mean")
    if row == "t5-encoder":
        assert type(lm.model).__name__ == "T5EncoderModel"
    inputs = lm.preprocess(TEXTS)
    refs = _text_reference(row, ref_model, inputs)
    assert len(refs) == len(lm.layers) == config.num_hidden_layers + 1
    data = from_arrays(TEXTS, [0, 1, 0], name="texts")
    cache = extract(
        lm, data, tmp_path / "c", pooling="cls+mean+last", precision="fp32", progress=False
    )
    lengths = inputs["attention_mask"].sum(1).tolist()
    for spec, ref in zip(lm.layers, refs):
        # one sample at a time, over its real tokens only (right padding)
        mean = torch.stack([ref[i, :n].mean(0) for i, n in enumerate(lengths)])
        last = torch.stack([ref[i, n - 1] for i, n in enumerate(lengths)])
        _check_pooled(cache, f"{spec.name}.cls", ref[:, 0], exact=True)
        _check_pooled(cache, f"{spec.name}.last", last, exact=True)
        _check_pooled(cache, f"{spec.name}.mean", mean, exact=False)


def test_albert_is_refused_in_one_line(tmp_path: Path, minilm_tokenizer_dir: str) -> None:
    from transformers import AlbertConfig, AlbertModel

    model = AlbertModel(AlbertConfig(vocab_size=V, embedding_size=16, **SMALL))
    path = _save(model, tmp_path / "albert", minilm_tokenizer_dir)
    with pytest.raises(ModelError, match=r"shares its blocks across 3 layers") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_encoder_decoder_without_encoder_class_is_refused(
    tmp_path: Path, minilm_tokenizer_dir: str
) -> None:
    from transformers import BartConfig, BartModel

    config = BartConfig(
        vocab_size=V,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
    )
    path = _save(BartModel(config), tmp_path / "bart", minilm_tokenizer_dir)
    with pytest.raises(ModelError, match=r"BartModel is an encoder-decoder") as err:
        load_model(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- HF vision


def _vision_rows() -> dict[str, Any]:
    import transformers as T

    vit = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    square = {"height": 32, "width": 32}
    return {
        "vit": (
            lambda: T.ViTConfig(intermediate_size=48, image_size=32, patch_size=8, **vit),
            lambda: T.ViTImageProcessor(size=square),
            1,
        ),
        "deit": (
            lambda: T.DeiTConfig(intermediate_size=48, image_size=32, patch_size=8, **vit),
            lambda: T.ViTImageProcessor(size=square),
            2,
        ),
        "dinov2-registers": (
            lambda: T.Dinov2WithRegistersConfig(
                mlp_ratio=2, image_size=28, patch_size=14, num_register_tokens=4, **vit
            ),
            lambda: T.BitImageProcessor(
                size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
            ),
            5,
        ),
        "swin": (
            lambda: T.SwinConfig(
                image_size=32,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[1, 1],
                window_size=4,
            ),
            lambda: T.ViTImageProcessor(size=square),
            0,
        ),
        "convnext": (
            lambda: T.ConvNextConfig(
                image_size=32, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2
            ),
            lambda: T.ConvNextImageProcessor(size={"shortest_edge": 32}),
            0,
        ),
    }


@pytest.mark.parametrize("row", list(_vision_rows()))
def test_hf_vision_matrix(row: str, tmp_path: Path) -> None:
    from transformers import AutoModel

    config, processor, n_prefix = _vision_rows()[row]
    torch.manual_seed(0)
    ref_model = AutoModel.from_config(config()).eval()
    lm = load_model(_save(ref_model, tmp_path / "m", processor=processor()))
    assert lm.n_prefix_tokens == n_prefix
    assert lm.default_pooling == ("cls+mean" if n_prefix else "mean")
    data = from_arrays(np.stack(IMAGES), [0, 1, 0], name="noise")
    inputs = lm.preprocess(data.get_items(range(3)))
    with torch.no_grad():
        refs = ref_model(**inputs, output_hidden_states=True).hidden_states
    assert len(refs) == len(lm.layers)
    cache = extract(
        lm, data, tmp_path / "c", precision="fp32", progress=False
    )  # the default pooling
    assert cache.poolings == lm.default_pooling.split("+")
    for spec, ref in zip(lm.layers, refs):
        if ref.ndim == 4:  # ConvNeXt: (B, C, H, W) maps
            _check_pooled(cache, f"{spec.name}.mean", ref.mean((2, 3)), exact=False)
            continue
        _check_pooled(cache, f"{spec.name}.mean", ref[:, n_prefix:].mean(1), exact=False)
        if n_prefix:
            _check_pooled(cache, f"{spec.name}.cls", ref[:, 0], exact=True)
    if not n_prefix:
        with pytest.raises(ConfigError, match="class token|feature maps"):
            extract(
                lm, data, tmp_path / "cls", pooling="cls+mean", precision="fp32", progress=False
            )


# ---------------------------------------------------------------- the same through the CLI


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    return tmp_path / "images"


def _extract_cli(model: str, data: str, out: Path, *extra: str) -> int:
    from probekit.cli import main

    argv = ["extract", "--model", model, "--data", data, "--out", str(out), "--precision", "fp32"]
    return main([*argv, *extra])


def test_cli_channels_last_and_prefix_free_models(
    tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from probekit import FeatureCache

    data = f"imagefolder:{image_folder}"
    # timm MambaOut (channels-last stages), random weights: the CLI cache equals the API's
    assert _extract_cli("timm:test_mambaout", data, tmp_path / "cli", "--random-init") == 0
    lm = load_model("timm:test_mambaout", weights="random")
    api = extract(lm, data, tmp_path / "api", precision="fp32", progress=False)
    cli = FeatureCache.open(tmp_path / "cli")
    assert cli.keys() == api.keys() == [f"stages.{i}.mean" for i in range(4)]
    for key in api.keys():
        assert torch.equal(cli[key], api[key]), key
    # HF Swin: no class token, so the default pooling is mean and cls is refused in one line
    import transformers as T

    torch.manual_seed(0)
    config = T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4
    )
    swin = _save(
        T.SwinModel(config),
        tmp_path / "swin",
        processor=T.ViTImageProcessor(size={"height": 32, "width": 32}),
    )
    assert _extract_cli(swin, data, tmp_path / "swin-cache") == 0
    assert FeatureCache.open(tmp_path / "swin-cache").poolings == ["mean"]
    capsys.readouterr()
    assert _extract_cli(swin, data, tmp_path / "swin-cls", "--pooling", "cls") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no class token" in err[0], err


def test_cli_t5_encoder_and_albert(
    tmp_path: Path, minilm_tokenizer_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformers as T

    from probekit import FeatureCache

    csv = tmp_path / "texts.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS * 2)))
    config = T.T5Config(vocab_size=V, d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2)
    t5 = _save(T.T5Model(config), tmp_path / "t5", minilm_tokenizer_dir)
    assert _extract_cli(t5, f"csv:{csv}", tmp_path / "t5-cache") == 0
    cache = FeatureCache.open(tmp_path / "t5-cache")
    assert cache.manifest["model"]["class"] == "T5EncoderModel"
    assert cache.layer_names == ["layers.0", "layers.1", "layers.2"]
    albert = _save(
        T.AlbertModel(T.AlbertConfig(vocab_size=V, embedding_size=16, **SMALL)),
        tmp_path / "albert",
        minilm_tokenizer_dir,
    )
    capsys.readouterr()
    assert _extract_cli(albert, f"csv:{csv}", tmp_path / "albert-cache") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot tell its layers apart" in err[0], err
