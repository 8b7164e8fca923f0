"""One set of settings, checked once: TrainConfig recipes, the run options, the pooling spelling
and feature keys, and the CLI's error contract."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit import pipeline
from probekit.cache import CacheWriter, FeatureCache
from probekit.cli import build_parser, main
from probekit.errors import ConfigError, ProbekitError
from probekit.estimator import HEAD_DEFAULTS, ProbeClassifier
from probekit.estimator.recipes import recipe_for
from probekit.models.layers import parse_layers
from probekit.recording.pooling import FeatureKey, expand_poolings
from probekit.runs.config import RunConfig, load_config, run_name
from probekit.runs.summary import summary_table
from probekit.runs.tables import write_metrics
from probekit.train import TrainConfig

# --------------------------------------------------------------------------- TrainConfig


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("lr", -1.0, "> 0"),
        ("lr", [], "non-empty list"),
        ("weight_decay", [1e-3, -1.0], ">= 0"),
        ("solver", "sgd", "'adamw', 'adam', 'lbfgs'"),
        ("epochs", 0, "int >= 1"),
        ("epochs", 2.5, "int >= 1"),
        ("batch_size", True, "int >= 1"),
        ("val_size", 1.0, "[0, 1)"),
        ("jitter_p", 1.5, "[0, 1]"),
        ("patience", 0, "int >= 1 or None"),
        ("schedule", "linear", "'cosine', 'constant'"),
        ("class_weight", "auto", "'balanced', None"),
        ("grad_clip", 0.0, "> 0 or None"),
        ("C", float("nan"), "> 0"),
        ("vectorize", "jit", "'auto', 'vmap', 'loop'"),
    ],
)
def test_bad_train_setting_fails_at_construction_naming_the_range(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value})
    msg = str(info.value)
    assert f"TrainConfig.{field} must be" in msg and allowed in msg, msg
    # and through dataclasses.replace, the way recipes are overridden
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}"):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_good_settings_are_normalised_and_replace_keeps_the_rest():
    cfg = TrainConfig(lr=0.1, weight_decay=(0, np.float32(1e-3)), epochs=np.int64(3))
    assert cfg.lr == [0.1] and cfg.weight_decay == [0.0, pytest.approx(1e-3)]
    new = dataclasses.replace(cfg, solver="adam")
    assert (new.solver, new.lr, new.epochs) == ("adam", [0.1], 3)


def test_head_recipes_are_train_configs_and_user_values_override_them():
    assert all(isinstance(r, TrainConfig) for r in HEAD_DEFAULTS.values())
    assert HEAD_DEFAULTS["linear"].solver == "lbfgs" and HEAD_DEFAULTS["laya"].solver == "adam"
    alf = recipe_for("alf", {"lr": 0.05, "epochs": 3, "jitter": False})
    assert (alf.lr, alf.epochs, alf.min_steps, alf.jitter_p) == ([0.05], 3, 0, 0.0)
    assert alf.weight_decay == HEAD_DEFAULTS["alf"].weight_decay  # untouched fields kept
    assert recipe_for("laya", {"jitter": 0.25}).jitter_p == 0.25
    with pytest.raises(ConfigError, match="lbfgs"):
        recipe_for("laya", {"solver": "lbfgs"})
    with pytest.raises(ConfigError, match=r"TrainConfig.val_size must be a number in \[0, 1\)"):
        ProbeClassifier("laya", val_size=2.0).validate()
    with pytest.raises(ConfigError, match="takes no parameter"):
        ProbeClassifier("laya", head_params={"bogus": 1}).validate()


# --------------------------------------------------------------------------- poolings and keys


def test_pooling_spelling_and_feature_keys():
    assert expand_poolings("cls,mean") == expand_poolings("cls+mean") == ["cls", "mean"]
    assert expand_poolings(["cls", "mean+last"]) == ["cls", "mean", "last"]
    with pytest.raises(ConfigError, match="unknown pooling 'avg'"):
        expand_poolings("cls,avg")
    with pytest.raises(ConfigError, match="was not recorded"):
        expand_poolings("last", recorded=["cls", "mean"])
    key = FeatureKey.parse("blocks.1.norm2.mean")
    assert (key.layer, key.pooling, str(key)) == ("blocks.1.norm2", "mean", "blocks.1.norm2.mean")
    assert FeatureKey.all(["a", "b.1"], ["cls", "mean"]) == [
        "a.cls",
        "a.mean",
        "b.1.cls",
        "b.1.mean",
    ]
    with pytest.raises(ConfigError):
        FeatureKey.parse("layers.3.avg")


def test_feature_cache_select_is_public_and_accepts_commas(tmp_path):
    layers = [("layers.0", 3), ("layers.1", 5), ("layers.2", 4)]
    manifest = {
        "model": {"id": "tiny", "revision": "abc", "weights_sha256": "0" * 64},
        "layers": [{"name": n, "dim": d} for n, d in layers],
        "poolings": ["cls", "mean"],
        "dtype": "float32",
        "precision": "fp32",
        "preprocessing": {"max_length": 16},
        "dataset": {"name": "toy", "fingerprint": "f" * 64, "n": 6, "label_names": ["a", "b"]},
    }
    g = torch.Generator().manual_seed(0)
    feats = {
        str(FeatureKey(n, p)): torch.randn(6, d, generator=g)
        for n, d in layers
        for p in ("cls", "mean")
    }
    w = CacheWriter.create(tmp_path / "c", manifest, 6)
    w.write_shard(0, feats, torch.arange(6) % 2)
    cache = w.finalize()
    assert cache.select([0, "layers.2"], "cls,mean") == ([0, 2], ["cls", "mean"])
    assert cache.select(None, None) == ([0, 1, 2], ["cls", "mean"])
    # the estimator reads a cache through it: same features as loading by hand
    clf = ProbeClassifier("linear", layers=[-1], pooling="mean", random_state=0).fit(cache)
    x = clf.as_tensor(FeatureCache.open(tmp_path / "c"))
    torch.testing.assert_close(x[:, 0, :4], feats["layers.2.mean"], rtol=0, atol=0)


# --------------------------------------------------------------------------- run options


def _run_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    return {a.dest for a in run._actions if a.option_strings and a.dest != "help"}


def test_run_options_are_one_set_for_flags_config_keys_and_python(tmp_path):
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert _run_flags() == fields
    # every field is a config-file key ...
    values = {f.name: getattr(RunConfig(), f.name) for f in dataclasses.fields(RunConfig)}
    values["layers"], values["name"] = [0, -1], "n"
    (tmp_path / "all.json").write_text(json.dumps(values))
    (tmp_path / "all.yaml").write_text(
        "\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items())
    )
    (cfg,) = load_config(tmp_path / "all.yaml")
    assert cfg.to_dict() == json.loads((tmp_path / "all.json").read_text())
    # ... and a keyword of probekit.run (resolved without running anything)
    (same,) = pipeline.resolve_configs(**values)
    assert same.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown run options"):
        pipeline.resolve_configs(modle="x")


HAND_WRITTEN = {
    "extract": {"--out"},
    "fit": {"--cache", "--out"},
    "compare": {"--out", "--method"},
    "layers": {"--modules"},
    "info": {"--json"},
}
"""The flags that are not run options (a cache folder, a method, a switch of one command)."""


def test_every_subcommand_takes_its_run_options_from_runconfig(capsys):
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    taken = {}
    for command, p in sub.choices.items():
        flags = [a for a in p._actions if a.option_strings and a.dest != "help"]
        own = {a.option_strings[0] for a in flags} & HAND_WRITTEN.get(command, set())
        assert own == HAND_WRITTEN.get(command, set()), command
        for a in flags:
            if a.option_strings[0] in own:
                continue
            f = fields[a.dest]  # a KeyError: a hand-written run option
            assert a.option_strings == [f"--{f.name.replace('_', '-')}"]
            assert a.choices == f.metadata["choices"] and a.default is None
            assert a.help.startswith(f.metadata["help"].split(" (")[0].replace("%", "%%"))
        taken[command] = {a.dest for a in flags if a.option_strings[0] not in own}
    assert taken["fit"] == {
        "probes", "seed", "test_size", "bootstrap", "memory_budget", "task", "control", "mdl",
        "plugins",
    }  # fmt: skip
    assert taken["attribute"] == {"ablation", "memory_budget"}
    assert taken["compare"] == {"layers", "pooling"}
    stages = {n for n, f in fields.items() if f.metadata["stage"] in ("data", "model", "extract")}
    assert taken["extract"] == stages | {"model", "data", "plugins"}
    # the field parses the text: a bad value is the field's one-line error, before any loading
    argv = ["extract", "--model", "x", "--data", "y", "--out", "o", "--shard-size", "many"]
    assert main(argv) == 2 and "shard_size" in capsys.readouterr().err
    args = parser.parse_args(["fit", "--cache", "c", "--out", "o", "--control"])
    assert (args.control, args.probes, args.mdl) == ("true", None, None)


def test_options_are_parsed_alike_from_text():
    cfg = RunConfig.from_dict(
        {
            "probes": "linear, laya",
            "layers": "0,3,-1",
            "limit": "12",
            "probe-params": '{"laya": {"lr": 0.01}}',
            "pooling": "cls,mean",
        }
    )
    assert (cfg.probes, cfg.layers, cfg.limit) == (["linear", "laya"], [0, 3, -1], 12)
    assert cfg.probe_params == {"laya": {"lr": 0.01}}
    assert parse_layers("all") is None and parse_layers("4") == 4
    # the task has a default (classification) and reaches load_data as its target
    assert cfg.stage_options("data") == {"limit": 12, "target": "classification"}
    assert cfg.stage_options("extract")["layers"] == [0, 3, -1]
    for bad in (
        {"limit": "many"},
        {"pooling": "cls;mean"},
        {"test_size": 1.5},
        {"figures": "gif"},
        {"ablation": "sideways"},
        {"probe_params": "{not json"},
    ):
        with pytest.raises(ConfigError):
            RunConfig.from_dict(bad)


def test_runs_are_named_after_model_and_data():
    assert RunConfig().name == "minilm-l6_vader-valence"
    cfg = RunConfig(model="hf:/tmp/models/tiny bert/", data="csv:/data/my words.csv")
    assert cfg.name == "tiny-bert_my-words"
    assert run_name("timm:resnet18", "imagefolder:/x/pets") == "resnet18_pets"
    assert RunConfig(name="mine").name == "mine"
    # an override of model renames a run whose name was derived, not one that was given
    (derived,) = pipeline.resolve_configs(RunConfig(), model="bundled:efficientnet-lite0")
    (given,) = pipeline.resolve_configs(RunConfig(name="keep"), model="bundled:efficientnet-lite0")
    assert (derived.name, given.name) == ("efficientnet-lite0_vader-valence", "keep")


def test_summary_table_reads_the_metrics(tmp_path):
    e = {
        "accuracy": 0.9,
        "accuracy_ci": [0.8, 0.95],
        "balanced_accuracy": 0.875,
        "balanced_accuracy_ci": [0.81, 0.93],
    }
    per_layer = [
        dict(e, layer="layers.1", balanced_accuracy=0.7, balanced_accuracy_ci=[0.6, 0.8]),
        dict(e, layer="layers.2"),
    ]
    metrics = {
        "model": "m",
        "data": "d",
        "n_train": 8,
        "n_test": 2,
        "heads": {
            "linear": dict(e, per_layer=per_layer),
            "laya": dict(e, balanced_accuracy=0.5, balanced_accuracy_ci=[0.4, 0.6]),
        },
    }
    write_metrics(metrics, tmp_path)
    (tmp_path / "report.html").write_text("<html>")
    text = summary_table(tmp_path)
    assert "linear                  0.875  [0.810, 0.930]  <- best" in text
    assert "laya                    0.500  [0.400, 0.600]" in text
    assert "best layer (linear probe): layers.2  0.875 [0.810, 0.930]" in text
    assert f"report: {tmp_path / 'report.html'}" in text


# --------------------------------------------------------------------------- CLI errors


def _forbid_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the configuration was checked")

    monkeypatch.setattr(pipeline, "extract_stage", boom)
    monkeypatch.setattr(pipeline, "fit_stage", boom)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--probes", "linear,nope"], "unknown probe 'nope'"),
        (["--probe-params", '{"laya": {"bogus": 1}}', "--probes", "laya"], "bogus"),
        (["--probe-params", '{"laya": {"lr": -1}}', "--probes", "laya"], "trainconfig.lr must be"),
        (["--pooling", "cls;mean"], "unknown pooling"),
        (["--layers", "0"], "last 0 layers"),
        (["--limit", "ten"], "limit"),
    ],
)
def test_run_refuses_a_bad_configuration_before_any_work(
    argv, needle, tmp_path, capsys, monkeypatch
):
    _forbid_work(monkeypatch)
    out = tmp_path / "runs"
    code = main(["run", "--model", "bundled:minilm-l6", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert needle in err[0].lower(), err[0]
    assert not out.exists(), "a refused run left a folder"


def test_probekit_errors_are_one_line_and_bugs_show_a_traceback(tmp_path, capsys, monkeypatch):
    def user_error(path):
        raise ConfigError("no such thing, choose from a, b")

    monkeypatch.setattr(FeatureCache, "open", staticmethod(user_error))
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "probekit info: error: no such thing, choose from a, b\n"

    for bug in (
        IndexError("list index out of range"),
        KeyError("layers.3.cls"),
        ValueError("an internal shape mismatch"),
    ):

        def broken(path, bug=bug):
            raise bug

        monkeypatch.setattr(FeatureCache, "open", staticmethod(broken))
        assert main(["info", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and type(bug).__name__ in err
        assert "internal error" in err
    assert issubclass(ConfigError, ProbekitError)


def test_user_error_through_a_real_process(tmp_path):
    """The same contract from ``python -m probekit``: a missing cache is exit 2, one line."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "probekit", "info", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_warnings_are_one_line_each(tmp_path):
    """A warning from deep inside a command reaches the user as ``probekit CMD: warning: ...``,
    one line, without Python's file:line and source echo (here: a CKA map over the limit)."""
    import os
    import subprocess
    import sys

    from .test_estimator import _make_cache

    _make_cache(tmp_path / "cache")
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, probekit.runs.science as a; a.CKA_MAX_WORK = 1; from probekit.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    argv = [
        "fit",
        "--cache",
        str(tmp_path / "cache"),
        "--probes",
        "linear",
        "--bootstrap",
        "20",
        "--out",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PROBEKIT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower()]
    assert lines and all(ln.startswith("probekit fit: warning: ") for ln in lines), proc.stderr
    assert any("layer similarity skipped" in ln for ln in lines)
    assert "science.py" not in proc.stderr and "fit.py" not in proc.stderr


def test_cli_run_names_the_run_and_prints_the_summary(tmp_path, capsys, monkeypatch):
    """``probekit run`` without --name: the folder is named after model and data, and the
    command ends with the summary table (run_one stubbed: this checks the CLI, not the flow)."""
    seen = []

    def fake_run_one(cfg, progress=True):
        seen.append(cfg)
        e = {
            "accuracy": 0.75,
            "accuracy_ci": [0.5, 0.9],
            "balanced_accuracy": 0.7,
            "balanced_accuracy_ci": [0.55, 0.85],
        }
        cfg.run_dir.mkdir(parents=True)
        write_metrics(
            {"model": cfg.model, "data": cfg.data, "n_train": 4, "n_test": 2, "heads": {"laya": e}},
            cfg.run_dir,
        )
        return cfg.run_dir

    monkeypatch.setattr(pipeline, "run_one", fake_run_one)
    code = main(
        [
            "run",
            "--model",
            "bundled:efficientnet-lite0",
            "--data",
            "bundled:mnist",
            "--probes",
            "laya",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and [c.name for c in seen] == ["efficientnet-lite0_mnist"]
    assert f"run {tmp_path / 'efficientnet-lite0_mnist'}" in out
    assert "laya                    0.700  [0.550, 0.850]  <- best" in out
