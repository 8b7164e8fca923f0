"""extract(): what is cached equals what is recorded; crash and resume; the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from probekit import CacheMismatchError, extract, from_arrays, load_model, record
from probekit._utils import runtime as _runtime
from probekit.cache import CacheWriter
from probekit.cli import main

WORDS = ["good", "bad", "great", "awful", "nice", "terrible", "lovely", "horrid"] * 5
LABELS = [0, 1] * 20


def _data():
    return from_arrays(WORDS, LABELS, label_names=["pos", "neg"], name="words")


def test_cache_equals_in_memory_record(tiny_bert_dir, tmp_path, device):
    lm = load_model(tiny_bert_dir)
    cache = extract(
        lm,
        _data(),
        tmp_path / "c",
        batch_size=7,
        shard_size=16,
        device=device,
        precision="fp32",
        progress=False,
    )
    assert len(cache) == 40 and cache.manifest["n_shards"] == 3
    assert cache.poolings == ["cls", "mean"] and cache.layer_names == [
        f"layers.{i}" for i in range(4)
    ]
    ref = record(lm.to("cpu"), WORDS, pooling="cls+mean", batch_size=7)
    for key, value in ref.items():
        torch.testing.assert_close(cache[key], value, atol=1e-5, rtol=1e-5)
    assert cache.texts == WORDS and cache.labels.tolist() == LABELS
    assert cache.load().shape == (40, 4, 2, 32)  # 4 layers x (cls, mean)
    assert cache.load(flat=True).shape == (40, 8, 32)
    assert cache.load(pooling="mean").shape == (40, 4, 32)


def test_finished_cache_is_reused_and_other_settings_refused(tiny_bert_dir, tmp_path, monkeypatch):
    lm = load_model(tiny_bert_dir)
    extract(lm, _data(), tmp_path / "c", shard_size=16, progress=False)
    writes = []
    monkeypatch.setattr(CacheWriter, "write_shard", lambda self, *a, **k: writes.append(a[0]))
    extract(lm, _data(), tmp_path / "c", shard_size=16, progress=False)
    assert writes == []
    with pytest.raises(CacheMismatchError, match="pooling"):
        extract(lm, _data(), tmp_path / "c", pooling="mean", progress=False)


def test_precision_is_recorded_and_close(tiny_bert_dir, tmp_path):
    lm = load_model(tiny_bert_dir)
    a = extract(lm, _data(), tmp_path / "fp32", precision="fp32", progress=False).load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # forced bf16 warns on CPUs without native bf16
        cache = extract(lm, _data(), tmp_path / "bf16", precision="bf16", progress=False)
    assert cache.manifest["precision"] == "bf16"
    b = cache.load()
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    assert cos.min() >= 0.99995
    # fp32 reruns are bitwise equal, so an ignored setting gives 0 here (bf16 measured ~8e-5)
    rel = ((b - a).norm(dim=-1) / a.norm(dim=-1)).max()
    assert rel > 1e-6


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_hardware(tiny_bert_dir, tmp_path, monkeypatch, native):
    monkeypatch.setattr(_runtime, "bf16_is_native", lambda device_type="cpu": native)
    lm = load_model(tiny_bert_dir)
    cache = extract(lm, _data(), tmp_path / "auto", progress=False)  # the default: "auto"
    assert cache.manifest["precision"] == ("bf16" if native else "fp32")
    ref = extract(
        lm, _data(), tmp_path / "ref", precision=cache.manifest["precision"], progress=False
    )
    assert torch.equal(cache.load(), ref.load())


def test_forced_bf16_warns_where_it_is_slow(monkeypatch):
    monkeypatch.setattr(_runtime, "bf16_is_native", lambda device_type="cpu": False)
    with pytest.warns(UserWarning, match="AVX512-BF16 or AMX"):
        assert _runtime.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(_runtime, "bf16_is_native", lambda device_type="cpu": True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _runtime.resolve_precision("bf16", "cpu") == "bf16"


def test_bf16_detection_reads_the_cpu_flags(monkeypatch):
    for flags, native in (
        ({"avx2", "avx512f"}, False),
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
    ):
        _runtime.bf16_is_native.cache_clear()
        monkeypatch.setattr(_runtime, "_cpu_flags", lambda flags=flags: flags)
        assert _runtime.bf16_is_native("cpu") is native
    _runtime.bf16_is_native.cache_clear()


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from probekit import extract, from_arrays, load_model
    from probekit.cache import CacheWriter
    write = CacheWriter.write_shard
    def announce(self, i, *a, **k):
        out = write(self, i, *a, **k)
        print(f"wrote {i}", flush=True)
        time.sleep(0.3)  # room for the kill to land mid-way
        return out
    CacheWriter.write_shard = announce
    words = [f"word{i} sample" for i in range(96)]
    data = from_arrays(words, [i % 3 for i in range(96)], name="crash")
    extract(load_model(sys.argv[1]), data, sys.argv[2], batch_size=4, shard_size=8, progress=False)
    print("finished", flush=True)
    """
)


def test_sigkill_midway_then_resume_gives_identical_cache(tiny_bert_dir, tmp_path, monkeypatch):
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), tiny_bert_dir, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("wrote") and int(line.split()[1]) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before = {p.name for p in (out / "shards").glob("*.json")}
    assert 4 <= len(done_before) < 12
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.safetensors")}

    written = []
    original = CacheWriter.write_shard

    def counting(self, i, *a, **k):
        written.append(i)
        return original(self, i, *a, **k)

    monkeypatch.setattr(CacheWriter, "write_shard", counting)
    data = from_arrays(
        [f"word{i} sample" for i in range(96)], [i % 3 for i in range(96)], name="crash"
    )
    lm = load_model(tiny_bert_dir)
    resumed = extract(lm, data, out, batch_size=4, shard_size=8, progress=False)
    assert sorted(f"{i:06d}.json" for i in written) == sorted(
        {f"{i:06d}.json" for i in range(12)} - done_before
    )
    for path, mtime in mtimes.items():
        if path.with_suffix(".json").name in done_before:
            assert path.stat().st_mtime_ns == mtime, f"{path.name} was recomputed"
    monkeypatch.setattr(CacheWriter, "write_shard", original)
    clean = extract(lm, data, tmp_path / "clean", batch_size=4, shard_size=8, progress=False)
    assert resumed.manifest["fingerprint"] == clean.manifest["fingerprint"]
    for key in clean.keys():
        assert torch.equal(resumed[key], clean[key]), key
    assert (resumed.labels == clean.labels).all() and (resumed.index == clean.index).all()


# ---------------------------------------------------------------- CLI


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_extract_and_info(tiny_bert_dir, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"{w},{l}\n" for w, l in zip(WORDS, LABELS)))
    code, out, err = _cli(
        capsys,
        "extract",
        "--model",
        f"hf:{tiny_bert_dir}",
        "--data",
        f"csv:{csv}",
        "--layers",
        "0,-1",
        "--pooling",
        "mean",
        "--out",
        tmp_path / "c",
    )
    assert code == 0, err
    code, out, _ = _cli(capsys, "info", tmp_path / "c")
    assert code == 0 and "layers.0:32, layers.3:32" in out
    code, out, _ = _cli(capsys, "info", tmp_path / "c", "--json")
    assert json.loads(out)["complete"] is True


@pytest.mark.parametrize(
    "case, message",
    [
        ("model", "scheme"),
        ("data", "unknown"),
        ("layer", "out of range"),
        ("column", "label"),
        ("empty", "empty"),
        ("other-cache", "other settings"),
        ("not-a-cache", "not a probekit cache"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(case, message, tiny_bert_dir, tmp_path, capsys):
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"{w},{l}\n" for w, l in zip(WORDS, LABELS)))
    out = tmp_path / "c"
    args = {"--model": f"hf:{tiny_bert_dir}", "--data": f"csv:{csv}", "--out": out}
    if case == "model":
        args["--model"] = "nonsense-model"
    elif case == "data":
        args["--data"] = "ftp:somewhere"
    elif case == "layer":
        args["--layers"] = "0,9"
    elif case == "column":
        args["--label-column"] = "sentiment"
    elif case == "empty":
        (tmp_path / "e.csv").write_text("text,label\n")
        args["--data"] = f"csv:{tmp_path / 'e.csv'}"
    elif case == "other-cache":
        assert (
            _cli(
                capsys, "extract", *sum(([k, v] for k, v in args.items()), []), "--pooling", "cls"
            )[0]
            == 0
        )
    elif case == "not-a-cache":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
    before = {p: p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file()}
    code, _, err = _cli(capsys, "extract", *sum(([k, v] for k, v in args.items()), []))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0].lower(), lines[0]
    after = {p: p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file()}
    assert after == before, "bad input changed files"


def test_cli_info_on_missing_cache(tmp_path, capsys):
    code, _, err = _cli(capsys, "info", tmp_path / "nothing")
    assert code == 2 and len(err.strip().splitlines()) == 1
