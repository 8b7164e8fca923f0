"""Local checkpoints (timm and HF), shape-checked loading, file hashes, one-line load errors, and
the seeded random-weights baseline."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from probekit import extract, from_arrays, load_data, load_model, record
from probekit.errors import CacheMismatchError, ModelError
from probekit.models._weights import explain_load_error

TEXTS = ["a short one", "a much longer sentence that needs many more tokens than the first"]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def finetuned_timm():
    """A 'fine-tuned' timm test_resnet: random weights under another seed than timm's default."""
    import timm

    torch.manual_seed(123)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    return model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_state_dict_checkpoint(tmp_path, finetuned_timm, suffix):
    state = finetuned_timm.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(
            {"state_dict": {"module." + k: v for k, v in state.items()}}, path
        )  # DDP + wrapper
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    lm = load_model("timm:test_resnet", checkpoint=path)
    for key, value in state.items():
        assert torch.equal(lm.model.state_dict()[key], value), key
    assert lm.info["weights_sha256"] == _sha(path)
    assert lm.info["checkpoint"] == str(path.resolve())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = finetuned_timm.forward_intermediates(x, intermediates_only=True)
    from probekit import LayerRecorder

    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, {"x": x})
    for spec, r in zip(lm.layers, ref):
        assert torch.equal(got[spec.name], r)


def test_timm_checkpoint_mismatch_names_the_key(tmp_path, finetuned_timm):
    state = dict(finetuned_timm.state_dict())
    first = next(iter(state))
    missing = dict(state)
    missing.pop("layer1.0.conv1.weight")
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(
        ModelError,
        match=r"cannot load timm:test_resnet: .*1 missing keys, first "
        r"'layer1\.0\.conv1\.weight'",
    ):
        load_model("timm:test_resnet", checkpoint=tmp_path / "missing.pt")
    torch.save(dict(state, extra_head=torch.zeros(3)), tmp_path / "extra.pt")
    with pytest.raises(ModelError, match=r"1 unexpected keys, first 'extra_head'"):
        load_model("timm:test_resnet", checkpoint=tmp_path / "extra.pt")
    bad = dict(state)
    bad[first] = torch.zeros(1, 2, 3)
    torch.save(bad, tmp_path / "shape.pt")
    shape = tuple(state[first].shape)
    with pytest.raises(
        ModelError, match=re.escape(f"{first}: checkpoint (1, 2, 3) vs model {shape}")
    ):
        load_model("timm:test_resnet", checkpoint=tmp_path / "shape.pt")


def _tuned_timm(name: str, num_classes: int) -> torch.nn.Module:
    """A 'fine-tune' of ``name`` with its own classifier size: random weights under seed 123."""
    import timm

    torch.manual_seed(123)
    return timm.create_model(name, pretrained=False, num_classes=num_classes).eval()


def _save_state(state: dict, path, wrap: bool = False) -> None:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(
            {"state_dict": {"module." + k: v for k, v in state.items()}} if wrap else state, path
        )


def _timm_reference(tuned: torch.nn.Module, arch: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The fine-tuned model's own stages (CNN) or block outputs with prefix tokens (ViT)."""
    if arch == "cnn":
        return list(tuned.forward_intermediates(x, intermediates_only=True))
    inter = tuned.forward_intermediates(
        x, output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True
    )
    return [torch.cat([prefix, tokens], dim=1) for tokens, prefix in inter]


@pytest.mark.parametrize(
    "name, suffix",
    [
        ("test_resnet", ".pth"),
        ("resnet18", ".safetensors"),
        ("test_efficientnet", ".pt"),
        ("test_convnext", ".safetensors"),
        ("test_vit", ".pth"),
    ],
)
def test_timm_finetune_with_its_own_classifier_size(tmp_path, name, suffix):
    """A 3-class fine-tune loads as a 3-class model: every stage and the logits are its own."""
    from probekit import LayerRecorder

    tuned = _tuned_timm(name, 3)
    path = tmp_path / f"ft{suffix}"
    _save_state(tuned.state_dict(), path, wrap=name == "test_resnet")
    lm = load_model(f"timm:{name}", checkpoint=path)
    assert lm.info["classifier"] == {"num_classes": 3, "from": "checkpoint"}
    assert lm.info["weights_sha256"] == _sha(path)
    size = lm.example["x"].shape[-1]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, {"x": x})
    with torch.no_grad():
        ref = _timm_reference(tuned, lm.arch, x)
        logits = tuned(x)
    names = [s.name for s in lm.layers][-len(ref) :]  # a ViT's layers.0 is the blocks' input
    assert len(ref) == len(lm.layers) - (lm.arch == "transformer")
    for layer, r in zip(names, ref):
        assert torch.equal(got[layer], r), layer
    with torch.no_grad():
        out = lm.forward({"x": x})
    assert out.shape == (2, 3) and torch.equal(out, logits)


def test_timm_headless_finetune_loads_without_a_classifier(tmp_path):
    from probekit import LayerRecorder

    tuned = _tuned_timm("test_resnet", 0)  # saved after reset_classifier(0): no fc.* keys
    assert not any(k.startswith("fc.") for k in tuned.state_dict())
    torch.save(tuned.state_dict(), tmp_path / "headless.pt")
    lm = load_model("timm:test_resnet", checkpoint=tmp_path / "headless.pt")
    assert lm.info["classifier"] == {"num_classes": 0, "from": "checkpoint"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), LayerRecorder(lm.model, lm.layers) as rec:
        got = rec.run(lm.forward, {"x": x})
    with torch.no_grad():
        ref = tuned.forward_intermediates(x, intermediates_only=True)
        assert torch.equal(lm.forward({"x": x}), tuned(x))  # pooled features
    for spec, r in zip(lm.layers, ref, strict=True):
        assert torch.equal(got[spec.name], r), spec.name


def test_timm_finetune_with_a_bad_backbone_key_is_still_refused(tmp_path):
    """Another classifier size is taken from the checkpoint; a backbone misfit is not."""
    state = dict(_tuned_timm("test_resnet", 3).state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(
        ModelError,
        match=re.escape("layer1.0.conv1.weight: checkpoint (1, 2, 3, 3) vs model"),
    ):
        load_model("timm:test_resnet", checkpoint=tmp_path / "shape.pt")
    state.pop("layer1.0.conv1.weight")
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match=r"1 missing keys, first 'layer1\.0\.conv1\.weight'"):
        load_model("timm:test_resnet", checkpoint=tmp_path / "missing.pt")
    # an explicit num_classes is the user's: a checkpoint of another size does not fit it
    torch.save(_tuned_timm("test_resnet", 3).state_dict(), tmp_path / "ft.pt")
    with pytest.raises(
        ModelError, match=re.escape("fc.weight: checkpoint (3, 96) vs model (5, 96)")
    ):
        load_model("timm:test_resnet", checkpoint=tmp_path / "ft.pt", num_classes=5)


class _NotATensor:
    pass


def test_unreadable_or_missing_checkpoints(tmp_path):
    torch.save({"weight": _NotATensor()}, tmp_path / "pickled.pt")  # weights_only refuses it
    with pytest.raises(
        ModelError,
        match=r"^cannot load timm:test_resnet: checkpoint .*pickled\.pt "
        r"is not a readable state dict",
    ):
        load_model("timm:test_resnet", checkpoint=tmp_path / "pickled.pt")
    with pytest.raises(ModelError, match="does not exist"):
        load_model("timm:test_resnet", checkpoint=tmp_path / "nothing.pth")
    (tmp_path / "weights.txt").write_text("not weights")
    with pytest.raises(ModelError, match=r"is not one of \.safetensors"):
        load_model("timm:test_resnet", checkpoint=tmp_path / "weights.txt")


def test_hf_local_folder_hash_is_the_file(tiny_bert_dir):
    from pathlib import Path

    lm = load_model("hf:" + tiny_bert_dir)
    assert lm.info["weights_sha256"] == _sha(Path(tiny_bert_dir) / "model.safetensors")


def test_hf_config_plus_finetuned_state_dict(tmp_path, tiny_bert_dir):
    """A BertForSequenceClassification state dict over the folder's config: the base model's
    weights are loaded (``bert.`` prefix stripped), the classifier head is left out."""
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(7)
    tuned = BertForSequenceClassification(AutoConfig.from_pretrained(tiny_bert_dir)).eval()
    path = tmp_path / "finetuned.pth"
    state = dict(tuned.state_dict())
    # older transformers saved this non-persistent buffer; it is not an unexpected key
    state["bert.embeddings.position_ids"] = torch.arange(128)[None]
    torch.save(state, path)
    lm = load_model("hf:" + tiny_bert_dir, checkpoint=path)
    assert lm.info["ignored_keys"] == 3  # classifier.weight, classifier.bias, position_ids
    assert lm.info["weights_sha256"] == _sha(path)
    inputs = lm.preprocess(TEXTS)
    with torch.no_grad():
        ref = tuned.bert(**inputs, output_hidden_states=True).hidden_states
    got = record(lm, TEXTS, pooling="cls")
    for l, h in enumerate(ref):
        torch.testing.assert_close(got[f"layers.{l}.cls"], h[:, 0], rtol=0, atol=0)


def _tuned_bert(cls_name: str, tiny_bert_dir: str) -> torch.nn.Module:
    """A 3-label fine-tune of the tiny BERT, random weights under seed 17."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_bert_dir, num_labels=3)
    torch.manual_seed(17)
    return getattr(transformers, cls_name)(config).eval()


def _assert_bert_layers(lm, tuned) -> None:
    """probekit's layers are the fine-tuned model's own hidden states, bit for bit."""
    inputs = lm.preprocess(TEXTS)
    with torch.no_grad():
        ref = tuned(**inputs, output_hidden_states=True).hidden_states
    got = record(lm, TEXTS, pooling=["cls", "mean"])
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    assert len(lm.layers) == len(ref)
    for l, h in enumerate(ref):
        assert torch.equal(got[f"layers.{l}.cls"], h[:, 0]), l
        mean = (h * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(got[f"layers.{l}.mean"], mean, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "cls_name", ["BertForSequenceClassification", "BertForTokenClassification"]
)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_hf_three_label_finetune_as_a_state_dict(tmp_path, tiny_bert_dir, cls_name, suffix):
    """``hf:<base config> --checkpoint``: the ``bert.`` weights load whatever ``num_labels`` the
    head has; a token classifier (no pooler in its weights) drops the pooler, nothing random."""
    tuned = _tuned_bert(cls_name, tiny_bert_dir)
    path = tmp_path / f"state{suffix}"
    _save_state(tuned.state_dict(), path)
    lm = load_model("hf:" + tiny_bert_dir, checkpoint=path)
    assert lm.info["ignored_keys"] == 2  # classifier.weight, classifier.bias (3 labels)
    assert lm.info["weights_sha256"] == _sha(path)
    pooled = cls_name == "BertForSequenceClassification"
    assert lm.info.get("dropped") == (None if pooled else ["pooler"])
    assert (lm.model.pooler is not None) == pooled
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, tuned.state_dict()["bert." + key]), key
    _assert_bert_layers(lm, tuned.bert)


@pytest.mark.parametrize(
    "cls_name", ["BertForSequenceClassification", "BertForTokenClassification"]
)
def test_hf_three_label_finetune_as_a_saved_folder(tmp_path, tiny_bert_dir, cls_name):
    """``hf:FOLDER`` of ``save_pretrained``: AutoModel leaves the head out; every encoder weight
    is the fine-tune's, and a pooler-less fine-tune's folder is not refused."""
    import shutil

    tuned = _tuned_bert(cls_name, tiny_bert_dir)
    folder = tmp_path / "ft"
    tuned.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(tiny_bert_dir) / name).exists():
            shutil.copy(Path(tiny_bert_dir) / name, folder / name)
    lm = load_model(f"hf:{folder}")
    assert lm.info["weights_sha256"] == _sha(folder / "model.safetensors")
    pooled = cls_name == "BertForSequenceClassification"
    assert lm.info.get("dropped") == (None if pooled else ["pooler"])
    for key, value in lm.model.state_dict().items():
        assert torch.equal(value, tuned.state_dict()["bert." + key]), key
    _assert_bert_layers(lm, tuned.bert)


def test_hf_vit_image_classifier_finetune(tmp_path):
    """A 3-label ``ViTForImageClassification`` (its ViT has no pooler) as a state dict over a
    ``ViTModel`` config folder and as its own ``save_pretrained`` folder."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

    from probekit import LayerRecorder

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
    )
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    torch.manual_seed(4)
    tuned = ViTForImageClassification(ViTConfig(**{**config.to_dict(), "num_labels": 3})).eval()
    torch.save(tuned.state_dict(), tmp_path / "state.pt")
    tuned.save_pretrained(tmp_path / "ft")
    processor.save_pretrained(tmp_path / "ft")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tuned.vit(pixel_values=x, output_hidden_states=True).hidden_states
    for spec, checkpoint in (
        (f"hf:{tmp_path / 'base'}", tmp_path / "state.pt"),
        (f"hf:{tmp_path / 'ft'}", None),
    ):
        lm = load_model(spec, checkpoint=checkpoint)
        assert lm.info["dropped"] == ["pooler"]
        with torch.no_grad():
            with LayerRecorder(lm.model, lm.layers) as rec:
                out = rec.run(lm.forward, {"pixel_values": x})
        assert len(lm.layers) == len(ref)
        for l, h in enumerate(ref):
            assert torch.equal(out[f"layers.{l}"], h), (spec, l)


def test_hf_partial_pooler_is_refused(tmp_path, tiny_bert_dir):
    """Only a pooler missing whole is dropped: half of one is a broken checkpoint."""
    state = dict(_tuned_bert("BertForSequenceClassification", tiny_bert_dir).state_dict())
    state.pop("bert.pooler.dense.bias")
    torch.save(state, tmp_path / "half.pt")
    with pytest.raises(ModelError, match=r"1 missing keys, first 'pooler\.dense\.bias'"):
        load_model("hf:" + tiny_bert_dir, checkpoint=tmp_path / "half.pt")


def test_hf_folder_with_missing_weights_is_refused(tmp_path, tiny_bert_dir):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    state.pop("encoder.layer.1.output.dense.weight")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ModelError,
        match=r"first missing or mismatched key "
        r"'encoder\.layer\.1\.output\.dense\.weight'",
    ):
        load_model(str(folder))


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("timm:resnet18", "no weights offline and none given with --checkpoint"),
        ("hf:no-such-org/no-such-model-probekit", "no weights offline"),
        ("hf:/no/such/folder", "not a local folder, and not a valid hub id"),
        ("timm:resnet1888", "unknown timm model"),
        ("timm:resnet18.no_such_tag", "unknown pretrained tag"),
    ],
)
def test_load_failures_are_one_line_model_errors(spec, reason):
    with pytest.raises(ModelError) as info:
        load_model(spec)
    message = str(info.value)
    assert message.startswith(f"cannot load {spec}: {reason}") and "\n" not in message


def test_remote_code_needs_trust(tmp_path):
    import json

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "probekit_custom",
                "auto_map": {
                    "AutoConfig": "configuration_x.XConfig",
                    "AutoModel": "modeling_x.XModel",
                },
            }
        )
    )
    with pytest.raises(ModelError, match="needs its own code: pass trust_remote_code=True"):
        load_model(str(tmp_path))


def _hub_error(name: str, text: str) -> BaseException:
    from huggingface_hub import errors

    cls = getattr(errors, name)
    err = cls.__new__(cls)  # these need an HTTP response to construct; only the type matters
    Exception.__init__(err, text)
    return err


@pytest.mark.parametrize(
    "name, reason",
    [
        ("GatedRepoError", "the repository is gated"),
        ("RevisionNotFoundError", "revision 'v9' does not exist"),
        ("RepositoryNotFoundError", "no such repository on the hub (a typo?"),
    ],
)
def test_hub_errors_are_explained(name, reason):
    try:  # as transformers raises them: an OSError caused by the hub's error
        try:
            raise _hub_error(name, "404 Client Error\nlong hub text")
        except Exception as inner:
            raise OSError("hub says no") from inner
    except OSError as err:
        got = explain_load_error(err, "hf:org/model", revision="v9")
    assert isinstance(got, ModelError)
    assert str(got).startswith(f"cannot load hf:org/model: {reason}") and "\n" not in str(got)


# ------------------------------------------------------------------ random weights


def test_random_weights_are_seeded_and_fingerprinted(tmp_path, tiny_bert_dir):
    a = load_model(tiny_bert_dir, weights="random", seed=1)
    b = load_model(tiny_bert_dir, weights="random", seed=1)
    c = load_model(tiny_bert_dir, weights="random", seed=2)
    trained = load_model(tiny_bert_dir)
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    differ = [
        k for k, v in a.model.state_dict().items() if not torch.equal(v, c.model.state_dict()[k])
    ]
    assert len(differ) > 10
    assert a.info["weights"] == "random" and a.info["seed"] == 1
    assert a.info["weights_sha256"] == b.info["weights_sha256"] != c.info["weights_sha256"]
    assert a.info["weights_sha256"] != trained.info["weights_sha256"]
    torch.manual_seed(99)
    before = torch.rand(3)
    torch.manual_seed(99)
    load_model(tiny_bert_dir, weights="random", seed=5)
    assert torch.equal(torch.rand(3), before)  # the caller's RNG is left alone

    data = from_arrays(
        ["good", "bad", "fine", "awful", "nice", "ugly"],
        [1, 0, 1, 0, 1, 0],
        label_names=["neg", "pos"],
    )
    ca = extract(a, data, tmp_path / "a", progress=False)
    cb = extract(b, data, tmp_path / "b", progress=False)
    assert ca.fingerprint == cb.fingerprint
    for key in ca.keys():
        assert torch.equal(ca[key], cb[key]), key
    extract(trained, data, tmp_path / "trained", progress=False)
    with pytest.raises(CacheMismatchError):  # the random model never reuses the trained one's cache
        extract(a, data, tmp_path / "trained", progress=False)
    with pytest.raises(CacheMismatchError):
        extract(c, data, tmp_path / "a", progress=False)


def test_random_timm_weights_are_seeded():
    a = load_model("timm:test_resnet", weights="random", seed=3)
    b = load_model("timm:test_resnet", weights="random", seed=3)
    c = load_model("timm:test_resnet", weights="random", seed=4)
    x = {"x": torch.randn(2, 3, 64, 64)}
    with torch.no_grad():
        assert torch.equal(a.forward(x), b.forward(x))
        assert not torch.allclose(a.forward(x), c.forward(x))
    assert a.info["weights_sha256"] == b.info["weights_sha256"] != c.info["weights_sha256"]


def test_bad_weights_option():
    with pytest.raises(ModelError, match="choose pretrained or random"):
        load_model("timm:test_resnet", weights="untrained")


@pytest.mark.slow
def test_pretrained_minilm_beats_random_minilm_on_word_valence():
    from probekit import ProbeClassifier

    data = load_data("bundled:vader-valence", limit=400, seed=0)
    y = np.asarray(data.labels)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:300], order[300:]
    accuracy = {}
    for weights in ("pretrained", "random"):
        lm = load_model("bundled:minilm-l6", weights=weights, seed=0)
        feats = record(lm, data.texts, pooling="mean", batch_size=64)
        X = torch.stack([feats[f"layers.{l}.mean"] for l in range(len(lm.layers))], dim=1).numpy()
        clf = ProbeClassifier(head="linear", random_state=0).fit(X[train], y[train])
        accuracy[weights] = clf.score(X[test], y[test])
    assert accuracy["pretrained"] >= 0.75, accuracy
    assert accuracy["pretrained"] - accuracy["random"] >= 0.1, accuracy
