"""Loading, layer discovery and recording: parity with what the models themselves return."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit import LayerRecorder, load_model, record, resolve_indices, select_layers
from probekit.models.loading import ModelError

TEXTS = [
    "a short one",
    "a much longer sentence that needs many more tokens than the first one does",
]


def _hidden_states(lm, inputs):
    with torch.no_grad():
        return lm.model(**inputs, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_hf_text_parity_every_layer(fixture, request, device):
    lm = load_model("hf:" + request.getfixturevalue(fixture), device=device)
    inputs = {k: v.to(device) for k, v in lm.preprocess(TEXTS).items()}
    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, inputs)
    hs = _hidden_states(lm, inputs)
    assert len(hs) == len(lm.layers)
    for l, spec in enumerate(lm.layers):
        assert torch.equal(got[spec.name], hs[l]), f"layer {l} differs from hidden_states[{l}]"


def test_gpt2_last_layer_is_after_ln_f(tiny_gpt2_dir):
    lm = load_model("hf:" + tiny_gpt2_dir)
    assert lm.layers[-1].module == "ln_f"
    assert lm.default_pooling == "last"


@pytest.mark.slow
def test_bundled_minilm_parity():
    lm = load_model("bundled:minilm-l6")
    assert lm.layer_names == [f"layers.{i}" for i in range(7)]
    inputs = lm.preprocess(TEXTS)
    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, inputs)
    for l, h in enumerate(_hidden_states(lm, inputs)):
        assert torch.equal(got[f"layers.{l}"], h)


def test_hf_vit_parity(tiny_hf_vit_dir):
    lm = load_model(tiny_hf_vit_dir)  # a bare directory is an hf: checkpoint
    assert lm.kind == "image" and lm.n_prefix_tokens == 1
    images = [np.full((32, 32, 3), v, dtype=np.uint8) for v in (0, 128)]
    inputs = lm.preprocess(images)
    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, inputs)
    for l, h in enumerate(_hidden_states(lm, inputs)):
        assert torch.equal(got[f"layers.{l}"], h)


def _tiny_timm_vit():
    return load_model(
        "timm:vit_small_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=64,
        num_heads=2,
    )


def test_timm_vit_parity_with_forward_intermediates():
    lm = _tiny_timm_vit()
    m = lm.model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), LayerRecorder(m, lm.layers) as rec:
        got = rec.run(lm.forward, {"x": x})
    with torch.no_grad():
        ref = m.forward_intermediates(
            x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
        )
        embed = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
    assert torch.equal(got["layers.0"], embed)
    for l, (patches, prefix) in enumerate(ref, start=1):
        assert torch.equal(got[f"layers.{l}"], torch.cat([prefix, patches], dim=1))


def test_timm_cnn_parity_with_forward_intermediates():
    lm = load_model("timm:resnet18", pretrained=False)
    assert lm.arch == "cnn" and lm.default_pooling == "mean"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, {"x": x})
    with torch.no_grad():
        ref = lm.model.forward_intermediates(x, intermediates_only=True)
    assert len(ref) == len(lm.layers)
    for spec, r in zip(lm.layers, ref):
        assert torch.equal(got[spec.name], r)


@pytest.mark.slow
def test_bundled_efficientnet_lite0_sees_sample_photos():
    from PIL import Image
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    lm = load_model("bundled:efficientnet-lite0")
    assert [s.dim for s in lm.layers] == [16, 24, 40, 112, 320]
    images = [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg
    with torch.no_grad():
        top = lm.forward(lm.preprocess(images)).softmax(-1).topk(5).indices
    info = ImageNetInfo()
    names = [[info.index_to_description(int(i)) for i in row] for row in top]
    assert any(w in " ".join(names[0]) for w in ("palace", "monastery", "pagoda", "bell cote")), (
        names[0]
    )
    assert "daisy" in " ".join(names[1]), names[1]


def test_mask_aware_pooling_is_independent_of_batch_neighbours(tiny_bert_dir, tiny_gpt2_dir):
    for path in (tiny_bert_dir, tiny_gpt2_dir):
        lm = load_model(path)
        alone = record(lm, TEXTS[:1], pooling="cls+mean+last")
        batched = record(lm, TEXTS, pooling="cls+mean+last")
        for key, value in alone.items():
            torch.testing.assert_close(batched[key][:1], value, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_mask_aware_mean_matches_sentence_transformers_recipe():
    lm = load_model("bundled:minilm-l6")
    alone = record(lm, TEXTS[:1], layers=[-1], pooling="mean")["layers.6.mean"]
    batched = record(lm, TEXTS, layers=[-1], pooling="mean")["layers.6.mean"][:1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def _hooks(model):
    """Every forward (pre-)hook on the model; transformers 5 installs some of its own, which stay."""
    return {
        (name, kind, key)
        for name, m in model.named_modules()
        for kind, hooks in (("fwd", m._forward_hooks), ("pre", m._forward_pre_hooks))
        for key in hooks
    }


def test_hooks_removed_after_success_bad_argument_and_model_error(tiny_bert_dir):
    lm = load_model(tiny_bert_dir)
    with torch.no_grad():
        lm.forward(lm.preprocess(TEXTS))  # let transformers install its own hooks first
    before = _hooks(lm.model)
    with LayerRecorder(lm.model, lm.layers) as rec:
        assert len(_hooks(lm.model) - before) == len(lm.layers)
        rec.run(lm.forward, lm.preprocess(TEXTS))
    assert _hooks(lm.model) == before
    with pytest.raises(ValueError):
        LayerRecorder(lm.model, [lm.layers[0].__class__("x", "no.such.module")])
    assert _hooks(lm.model) == before
    with pytest.raises((TypeError, ValueError)), LayerRecorder(lm.model, lm.layers) as rec:
        rec.run(lm.model, not_an_input=1)
    assert _hooks(lm.model) == before
    bad = {"input_ids": torch.full((1, 4), 10**6)}  # index out of the vocabulary: the model raises
    with pytest.raises(IndexError), LayerRecorder(lm.model, lm.layers) as rec:
        rec.run(lm.forward, bad)
    assert _hooks(lm.model) == before


def test_stop_early_skips_later_blocks(tiny_bert_dir):
    lm = load_model(tiny_bert_dir)
    calls = []
    handle = lm.model.encoder.layer[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        with LayerRecorder(lm.model, select_layers(lm.model, lm.layers, [1])) as rec:
            out = rec.run(lm.forward, lm.preprocess(TEXTS))
    finally:
        handle.remove()
    assert list(out) == ["layers.1"] and calls == []


def test_layer_selection_convention(tiny_bert_dir):
    assert resolve_indices(None, 4) == [0, 1, 2, 3]
    assert resolve_indices(2, 4) == [2, 3]
    assert resolve_indices([0, -1], 4) == [0, 3]
    with pytest.raises(IndexError, match=r"-4\.\.3"):
        resolve_indices([4], 4)
    lm = load_model(tiny_bert_dir)
    names = [s.name for s in select_layers(lm.model, lm.layers, "encoder.layer.*.output.LayerNorm")]
    assert names == [f"encoder.layer.{i}.output.LayerNorm" for i in range(3)]
    with pytest.raises(ValueError, match="no module matches"):
        select_layers(lm.model, lm.layers, "blocks.*.nothing")
    got = record(lm, TEXTS, layers="encoder.layer.*.output.LayerNorm", pooling="cls")
    assert set(got) == {f"encoder.layer.{i}.output.LayerNorm.cls" for i in range(3)}


def test_unknown_specs_raise_model_error():
    with pytest.raises(ModelError, match="scheme"):
        load_model("nonsense")
    with pytest.raises(ModelError, match="bundled"):
        load_model("bundled:nope")
    with pytest.raises(ModelError):
        load_model("timm:definitely_not_a_model")
