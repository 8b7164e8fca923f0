"""Several processes (torchrun, gloo on CPU): shards split by rank, bitwise equal to one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit import FeatureCache
from probekit.cli import main
from probekit.errors import CacheError

N_SAMPLES = 26  # 7 shards of 4: the last one short, rank 0 owns one more than rank 1


def _csv(tmp_path: Path, n: int = N_SAMPLES) -> str:
    path = tmp_path / "words.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            w.writerow([f"sample number {i} " + "word " * (i % 5), "pos" if i % 3 else "neg"])
    return f"csv:{path}"


def _args(
    model: str, data: str, out: Path, pooling: str = "cls+mean", precision: str | None = None
) -> list[str]:
    return [
        "extract",
        "--model",
        model,
        "--data",
        data,
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--shard-size",
        "4",
        "--pooling",
        pooling,
        *(["--precision", precision] if precision else []),
    ]


def _in_process(
    model: str, data: str, out: Path, precision: str | None = None, threads: int = 1
) -> None:
    """``probekit extract`` in this process, on one thread like each rank (or ``threads``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert main(_args(model, data, out, precision=precision)) == 0
    finally:
        torch.set_num_threads(before)


def _torchrun(
    model: str,
    data: str,
    out: Path,
    nproc: int,
    pooling: str = "cls+mean",
    precision: str | None = None,
    **env: str,
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "probekit",
        *_args(model, data, out, pooling, precision),
    ]
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROBEKIT_TEST_KILL")}
    # one thread everywhere (torchrun's own default per rank): the same BLAS blocking in both runs
    full_env = {
        **base,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=300)


def _shard_bytes(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((cache / "shards").iterdir())}


def test_two_processes_bitwise_equal_one_and_a_killed_rank_resumes(tiny_bert_dir, tmp_path):
    data = _csv(tmp_path)
    _in_process(tiny_bert_dir, data, tmp_path / "one")
    ref = FeatureCache.open(tmp_path / "one")
    ref_shards = _shard_bytes(tmp_path / "one")
    assert len(ref_shards) == 2 * 7  # .safetensors + .json per shard

    two = _torchrun(tiny_bert_dir, data, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    got = FeatureCache.open(tmp_path / "two")
    assert got.manifest["fingerprint"] == ref.manifest["fingerprint"]
    assert _shard_bytes(tmp_path / "two") == ref_shards
    assert (tmp_path / "two" / "texts.json").read_bytes() == (
        tmp_path / "one" / "texts.json"
    ).read_bytes()

    # rank 1 dies (SIGKILL) in its second shard (its 3rd forward pass of 2-sample batches): the
    # job fails, the cache is unfinished; a 1-process rerun fills only the missing shards
    killed = _torchrun(
        tiny_bert_dir,
        data,
        tmp_path / "killed",
        2,
        PROBEKIT_TEST_KILL_AT="forward:3",
        PROBEKIT_TEST_KILL_RANK="1",
    )
    assert killed.returncode != 0
    with pytest.raises(CacheError):
        FeatureCache.open(tmp_path / "killed")
    shards = tmp_path / "killed" / "shards"
    # finished shards: a .safetensors with its .json (the writer thread may have renamed the
    # data of a shard and been killed before writing its .json: that shard counts as missing)
    before = {
        p.name: p.stat().st_ino
        for p in shards.glob("*.safetensors")
        if p.with_suffix(".json").is_file()
    }
    assert "000003.safetensors" not in before and "000005.safetensors" not in before
    assert 0 < len(before) < 7
    _in_process(tiny_bert_dir, data, tmp_path / "killed")
    assert _shard_bytes(tmp_path / "killed") == ref_shards
    after = {p.name: p.stat().st_ino for p in shards.iterdir() if p.suffix == ".safetensors"}
    assert all(after[name] == ino for name, ino in before.items())  # finished shards untouched
    assert (
        FeatureCache.open(tmp_path / "killed").manifest["fingerprint"]
        == ref.manifest["fingerprint"]
    )


def test_other_settings_fail_on_every_rank_and_ranks_repair_a_finished_cache(
    tiny_bert_dir, tmp_path
):
    """Rank 0 refuses a folder holding another cache; the other rank gets the same one-line error
    instead of waiting. A corrupt shard of a finished cache is rewritten by the rank that owns it
    and the cache is finished again."""
    data = _csv(tmp_path)
    _in_process(tiny_bert_dir, data, tmp_path / "cache")
    before = _shard_bytes(tmp_path / "cache")
    done = _torchrun(tiny_bert_dir, data, tmp_path / "cache", 2, pooling="mean")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "probekit extract: error:" in line]
    assert len(errors) == 2, done.stderr[-3000:]
    assert all("poolings" in line and "other settings" in line for line in errors), errors
    assert sum("(on another rank)" in line for line in errors) == 1
    assert _shard_bytes(tmp_path / "cache") == before

    shard = tmp_path / "cache" / "shards" / "000001.safetensors"  # rank 1's
    damaged = bytearray(shard.read_bytes())
    damaged[-3] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    with pytest.raises(CacheError):
        FeatureCache.open(tmp_path / "cache").verify()
    repaired = _torchrun(tiny_bert_dir, data, tmp_path / "cache", 2)
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert FeatureCache.open(tmp_path / "cache").manifest["complete"] is True
    assert _shard_bytes(tmp_path / "cache") == before


def _cpu_computes_bf16() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    except RuntimeError:
        return False


def _numerics(cache: Path) -> dict[str, dict]:
    """Each shard's recorded numerics, from its ``.json``."""
    return {
        p.stem: json.loads(p.read_bytes()).get("numerics")
        for p in sorted((cache / "shards").glob("*.json"))
    }


@pytest.mark.skipif(not _cpu_computes_bf16(), reason="this CPU cannot run bfloat16 autocast")
def test_bf16_two_processes_bitwise_equal_one_and_ranks_keep_the_cache_threads(
    tiny_bert_dir, tmp_path
):
    """bf16 autocast (oneDNN kernels may block by thread count): 2 ranks on 1 thread each give
    the shard files of 1 process on 1 thread; ranks filling a cache made with 2 threads compute
    on 2 threads (its manifest's count) and give that cache's bytes."""
    data = _csv(tmp_path)
    _in_process(tiny_bert_dir, data, tmp_path / "one", precision="bf16", threads=1)
    one = FeatureCache.open(tmp_path / "one")
    assert one.manifest["precision"] == "bf16" and one.manifest["threads"] == 1
    cpu_bf16_1 = {"device": "cpu", "precision": "bf16", "threads": 1}
    assert set(map(str, _numerics(tmp_path / "one").values())) == {str(cpu_bf16_1)}

    two = _torchrun(tiny_bert_dir, data, tmp_path / "two", 2, precision="bf16")
    assert two.returncode == 0, two.stderr[-2000:]
    got = FeatureCache.open(tmp_path / "two")
    assert got.manifest["fingerprint"] == one.manifest["fingerprint"]
    assert got.manifest["threads"] == 1
    assert torch.equal(got.load(), one.load())  # every feature of every layer and pooling
    assert _shard_bytes(tmp_path / "two") == _shard_bytes(tmp_path / "one")

    # a cache made with 2 threads; shards of both ranks deleted; the ranks (1 thread each by
    # torchrun's OMP_NUM_THREADS) recompute them on the cache's 2 threads: the same bytes
    _in_process(tiny_bert_dir, data, tmp_path / "wide", precision="bf16", threads=2)
    assert FeatureCache.open(tmp_path / "wide").manifest["threads"] == 2
    wide = _shard_bytes(tmp_path / "wide")
    for name in ("000000", "000001", "000003"):
        for suffix in (".safetensors", ".json"):
            (tmp_path / "wide" / "shards" / f"{name}{suffix}").unlink()
    filled = _torchrun(tiny_bert_dir, data, tmp_path / "wide", 2, precision="bf16")
    assert filled.returncode == 0, filled.stderr[-2000:]
    assert _shard_bytes(tmp_path / "wide") == wide
    assert all(n["threads"] == 2 for n in _numerics(tmp_path / "wide").values())
    assert "different numerics" not in filled.stderr
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert filled.stderr.count("oversubscribed") == (1 if 2 * 2 > (cores or 1) else 0)


def test_word_rows_two_processes_bitwise_equal_one(tiny_bert_dir, tmp_path):
    """A word cache: shards of whole sentences, rows per shard from the manifest, across ranks."""
    conllu = tmp_path / "words.conllu"
    lines = []
    for i in range(N_SAMPLES):
        words = ["sample", "number", str(i)] + ["word"] * (i % 5)
        tags = ["NOUN", "NOUN", "NUM"] + ["NOUN"] * (i % 5)
        for j, (w, t) in enumerate(zip(words, tags, strict=True), start=1):
            lines.append(f"{j}\t{w}\t_\t{t}\t_\t_\t0\troot\t_\t_")
        lines.append("")
    conllu.write_text("\n".join(lines) + "\n")
    data = f"conllu:{conllu}"
    extra = ["--unit", "word"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = [a for a in _args(tiny_bert_dir, data, tmp_path / "one") if a != "cls+mean"]
        args.remove("--pooling")
        assert main([*args, *extra]) == 0
    finally:
        torch.set_num_threads(before)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "probekit",
        *[a if a != str(tmp_path / "one") else str(tmp_path / "two") for a in args],
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    one_cache, two_cache = FeatureCache.open(tmp_path / "one"), FeatureCache.open(tmp_path / "two")
    assert one_cache.unit == two_cache.unit == "word"
    assert one_cache.manifest["shard_rows"] == two_cache.manifest["shard_rows"]
    assert len(one_cache.manifest["shard_rows"]) > 2
    for key in one_cache.keys():
        assert torch.equal(one_cache[key], two_cache[key]), key
    assert np.array_equal(one_cache.samples, two_cache.samples)
    assert np.array_equal(one_cache.positions, two_cache.positions)


@pytest.mark.slow
def test_bundled_decoder_two_processes_bitwise_equal_one(tmp_path):
    """The real decoder (Gemma 3 270M, fp32): 2 ranks give the shard files of 1 process."""
    data = _csv(tmp_path, n=12)  # 3 shards of 4: rank 0 computes two, rank 1 one
    model = "bundled:gemma3-270m"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = _args(model, data, tmp_path / "one", pooling="last,mean", precision="fp32")
        assert main(args) == 0
    finally:
        torch.set_num_threads(before)
    two = _torchrun(model, data, tmp_path / "two", 2, pooling="last,mean", precision="fp32")
    assert two.returncode == 0, two.stderr[-2000:]
    one, got = FeatureCache.open(tmp_path / "one"), FeatureCache.open(tmp_path / "two")
    assert got.manifest["fingerprint"] == one.manifest["fingerprint"]
    assert len(one.layer_names) == 19  # the embeddings and 18 blocks
    assert _shard_bytes(tmp_path / "two") == _shard_bytes(tmp_path / "one")
