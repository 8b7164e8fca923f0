"""Fault injection: corrupted bytes, truncated and deleted shards, killed extractions, a full disk.

Figures quoted in the README's reliability section come from this file:
``python -m pytest tests/test_fault_injection.py -q -s`` prints them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from probekit import extract, from_arrays, load_model
from probekit.cache import CacheError, CacheWriter, FeatureCache
from probekit.errors import DataError

LAYERS = [("layers.0", 6), ("layers.1", 9)]
POOLINGS = ["cls", "mean"]
N, SHARD = 20, 8  # 3 shards: 8, 8, 4 rows


def _manifest():
    return {
        "model": {"id": "toy"},
        "layers": [{"name": n, "dim": d} for n, d in LAYERS],
        "poolings": POOLINGS,
        "dtype": "float32",
        "dataset": {"name": "toy", "fingerprint": "f" * 64, "n": N, "label_names": ["a", "b", "c"]},
    }


def _build(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = {f"{n}.{p}": torch.randn(N, d, generator=g) for n, d in LAYERS for p in POOLINGS}
    labels = np.arange(N) % 3
    writer = CacheWriter.create(
        path, _manifest(), N, shard_size=SHARD, texts=[f"sample {i}" for i in range(N)]
    )
    for i in writer.missing_shards():
        a, b = writer.shard_range(i)
        writer.write_shard(i, {k: v[a:b] for k, v in feats.items()}, labels[a:b])
    writer.finalize()
    return feats


def _regions(path: Path) -> list[tuple[str, str, int, int]]:
    """``(relative file, region name, begin, end)`` for every part of every file of a cache."""
    out = [
        ("manifest.json", "manifest", 0, (path / "manifest.json").stat().st_size),
        ("texts.json", "texts", 0, (path / "texts.json").stat().st_size),
    ]
    for st in sorted((path / "shards").glob("*.safetensors")):
        raw = st.read_bytes()
        hlen = int.from_bytes(raw[:8], "little")
        rel = f"shards/{st.name}"
        out.append((rel, "header", 0, 8 + hlen))
        for key, e in json.loads(raw[8 : 8 + hlen]).items():
            if key != "__metadata__":
                b, end = e["data_offsets"]
                kind = key if key in ("labels", "index") else "tensor data"
                out.append((rel, kind, 8 + hlen + b, 8 + hlen + end))
        js = st.with_suffix(".json")
        out.append((f"shards/{js.name}", "shard json", 0, js.stat().st_size))
    return out


def _flip_positions(path: Path, count: int = 20, seed: int = 0) -> list[tuple[str, str, int, int]]:
    """``count`` seeded ``(file, region, offset, xor)``: the regions in turn, a random byte in each."""
    rng = np.random.default_rng(seed)
    regions = _regions(path)
    # every file and every kind of region first, then round-robin over the rest
    kinds = {(r[0], r[1]) for r in regions}
    order = sorted(range(len(regions)), key=lambda i: rng.random())
    picked, seen = [], set()
    for i in order:
        if (regions[i][0], regions[i][1]) not in seen:
            seen.add((regions[i][0], regions[i][1]))
            picked.append(regions[i])
    picked += [regions[i] for i in order]
    assert len(seen) == len(kinds)
    out = []
    for rel, kind, b, e in picked[:count]:
        out.append((rel, kind, int(rng.integers(b, e)), int(rng.integers(1, 256))))
    return out


def _read_everything(path: Path, feats: dict[str, torch.Tensor]) -> list[str]:
    """Try every read path; return those that handed back data (must be none when corrupt).

    A read path that raises CacheError is a detection; one that returns data is recorded even
    when the data happens to be right, since a corrupt cache must not be read at all.
    """
    loaded = []
    try:
        cache = FeatureCache.open(path)
    except CacheError:
        raise
    loaded.append("open")  # open itself reads only header, labels, index, texts: all checked
    for name, fn in (
        ("load", lambda: cache.load()),
        ("batches", lambda: list(FeatureCache.open(path).batches(5))),
        ("getitem", lambda: [FeatureCache.open(path)[k] for k in feats]),
    ):
        try:
            fn()
            loaded.append(name)
        except CacheError:
            pass
    return loaded


def test_twenty_flipped_bytes_are_all_detected(tmp_path):
    pristine = tmp_path / "pristine"
    feats = _build(pristine)
    flips = _flip_positions(pristine)
    assert len(flips) == 20
    files_hit = {rel for rel, *_ in flips}
    every_file = {str(p.relative_to(pristine)) for p in pristine.rglob("*") if p.is_file()}
    assert files_hit == every_file, every_file - files_hit
    assert {"header", "tensor data", "labels", "index", "texts", "manifest"} <= {
        k for _, k, *_ in flips
    }
    detected = 0
    for n, (rel, kind, offset, xor) in enumerate(flips):
        work = tmp_path / f"flip{n}"
        shutil.copytree(pristine, work)
        raw = bytearray((work / rel).read_bytes())
        raw[offset] ^= xor
        (work / rel).write_bytes(bytes(raw))
        name = Path(rel).name
        try:
            loaded = _read_everything(work, feats)
        except CacheError as e:  # rejected at open
            assert name in str(e) or (kind in ("manifest", "texts") and str(work) in str(e)), str(e)
            detected += 1
            continue
        # accepted at open only when the flip lies in a feature block, which no read may return
        assert kind == "tensor data", (rel, kind, offset)
        assert loaded == ["open"], (rel, kind, offset, loaded)
        with pytest.raises(CacheError, match=name):
            FeatureCache.open(work).load()
        detected += 1
    print(f"\nintegrity: {detected}/{len(flips)} flipped bytes detected, none loaded")
    assert detected == 20


def test_truncated_and_deleted_shards_are_named(tmp_path):
    _build(tmp_path / "c")
    shard = tmp_path / "c" / "shards" / "000001.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-3])
    with pytest.raises(CacheError, match="000001.safetensors.*(truncated|bytes on disk)"):
        FeatureCache.open(tmp_path / "c")
    shard.unlink()
    with pytest.raises(CacheError, match="missing shard .*000001.safetensors"):
        FeatureCache.open(tmp_path / "c")
    shard.write_bytes(raw)
    (tmp_path / "c" / "shards" / "000002.json").unlink()
    with pytest.raises(CacheError, match="000002.json"):
        FeatureCache.open(tmp_path / "c")


def test_a_shard_replaced_after_open_is_caught_at_read(tmp_path):
    feats = _build(tmp_path / "c")
    cache = FeatureCache.open(tmp_path / "c")
    shard = tmp_path / "c" / "shards" / "000000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="000000.safetensors"):
        cache.load()
    # the explicit opt-out hands back the altered bytes: the last feature row of shard 0 differs
    unchecked = FeatureCache.open(tmp_path / "c", verify=False)
    assert any(not torch.equal(unchecked[k][:SHARD], feats[k][:SHARD]) for k in feats)


def test_cli_fit_and_info_refuse_a_corrupt_cache(tiny_bert_dir, tmp_path, capsys):
    from probekit.cli import main

    lm = load_model(tiny_bert_dir)
    extract(lm, _data(), tmp_path / "c", batch_size=4, shard_size=16, progress=False)
    shard = tmp_path / "c" / "shards" / "000001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-7] ^= 0x10  # a feature byte: fit must not train on it
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    code = main(
        [
            "fit",
            "--cache",
            str(tmp_path / "c"),
            "--probes",
            "linear",
            "--out",
            str(tmp_path / "fit"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "000001.safetensors" in err[0], err
    assert not (tmp_path / "fit" / "metrics.csv").exists()
    # a flipped label byte is caught by every command that opens the cache, info included
    shard.write_bytes(bytes(raw[:-7]) + bytes([raw[-7] ^ 0x10]) + bytes(raw[-6:]))
    hlen = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + hlen])
    b, _ = header["labels"]["data_offsets"]
    fixed = bytearray(shard.read_bytes())
    fixed[8 + hlen + b] ^= 0x01
    shard.write_bytes(bytes(fixed))
    code = main(["info", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "000001.safetensors" in err[0], err


# ----------------------------------------------------------------------------- extraction


WORDS = [f"word{i} sample" for i in range(48)]


def _data():
    return from_arrays(WORDS, [i % 3 for i in range(48)], name="crash")


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_extract_reextracts_only_the_bad_shard(tiny_bert_dir, tmp_path, monkeypatch):
    lm = load_model(tiny_bert_dir)
    extract(lm, _data(), tmp_path / "c", batch_size=4, shard_size=8, progress=False)
    clean = _tree(tmp_path / "c")
    shard = tmp_path / "c" / "shards" / "000003.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="000003"):
        FeatureCache.open(tmp_path / "c").load()
    written = []
    original = CacheWriter.write_shard

    def counting(self, i, *a, **k):
        written.append(i)
        return original(self, i, *a, **k)

    monkeypatch.setattr(CacheWriter, "write_shard", counting)
    extract(lm, _data(), tmp_path / "c", batch_size=4, shard_size=8, progress=False)
    assert written == [3]
    assert _tree(tmp_path / "c") == clean


def test_empty_data_is_a_data_error(tiny_bert_dir, tmp_path):
    with pytest.raises(DataError, match="empty"):
        extract(tiny_bert_dir, from_arrays([], [], name="nothing"), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch
    torch.set_num_threads(1)  # no OpenMP team in the parent: forking stays safe
    from probekit import extract, from_arrays, load_model
    model_dir, root = sys.argv[1], sys.argv[2]
    model = load_model(model_dir)  # loaded once; each forked child extracts until killed
    words = [f"word{i} sample" for i in range(48)]
    for name, spec in (p.split("=") for p in sys.argv[3:]):
        pid = os.fork()
        if pid == 0:
            os.environ["PROBEKIT_TEST_KILL_AT"] = spec
            data = from_arrays(words, [i % 3 for i in range(48)], name="crash")
            extract(model, data, os.path.join(root, name), batch_size=4, shard_size=8,
                    progress=False)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        print(name, spec, "killed" if killed else f"status {status}", flush=True)
    """
)


def test_sigkill_at_ten_points_resumes_bitwise(tiny_bert_dir, tmp_path):
    # 48 samples, 6 shards of 8, 12 forwards of 4; 15 atomic writes (texts, manifest, 6 x
    # (shard, .json), the finished manifest)
    rng = np.random.default_rng(7)
    kinds = ["forward"] * 3 + ["mid-write"] * 2 + ["before-rename"] * 2 + ["shard-renamed"] * 2
    limits = {"forward": 12, "mid-write": 15, "before-rename": 15, "shard-renamed": 6}
    points = [f"{k}:{int(rng.integers(1, limits[k] + 1))}" for k in kinds] + ["finalize:1"]
    names = [f"k{i}" for i in range(len(points))]
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    root = tmp_path / "runs"
    root.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("PROBEKIT_TEST_KILL_AT", None)
    out = subprocess.run(
        [sys.executable, str(script), tiny_bert_dir, str(root)]
        + [f"{n}={p}" for n, p in zip(names, points, strict=True)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    ).stdout.splitlines()
    assert out == [f"{n} {p} killed" for n, p in zip(names, points, strict=True)], out

    lm = load_model(tiny_bert_dir)
    # the clean run with the killed runs' one thread (the manifest and each shard's .json record
    # it); the resumes below run on this process's threads and must compute with the recorded one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(lm, _data(), tmp_path / "clean", batch_size=4, shard_size=8, progress=False)
    finally:
        torch.set_num_threads(threads)
    clean = _tree(tmp_path / "clean")
    resumed = 0
    for name, point in zip(names, points, strict=True):
        killed = root / name
        with pytest.raises(CacheError):  # what a kill leaves is never a finished cache
            FeatureCache.open(killed)
        extract(lm, _data(), killed, batch_size=4, shard_size=8, progress=False)
        assert _tree(killed) == clean, point
        resumed += 1
    print(f"\ncrash: {resumed}/{len(points)} kill points resumed bitwise ({', '.join(points)})")
    assert resumed == 10


def test_disk_full_is_a_clear_error_and_resumes(tiny_bert_dir, tmp_path):
    if os.geteuid() != 0:
        print("\nSKIP disk-full test: mounting a tmpfs needs root")
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mnt)], check=True)
    try:
        lm = load_model(tiny_bert_dir)
        out = mnt / "c"
        with pytest.raises(CacheError, match=r"cannot write shard .*\.safetensors: No space left"):
            extract(lm, _data(), out, batch_size=4, shard_size=8, progress=False)
        shards = out / "shards"
        finals = sorted(shards.glob("*.safetensors"))
        assert not any(".tmp-" in p.name for p in shards.iterdir())
        for st in finals:  # every shard under its final name is whole and has its .json
            js = st.with_suffix(".json")
            assert js.is_file(), st
            assert (
                hashlib.sha256(st.read_bytes()).hexdigest() == json.loads(js.read_bytes())["sha256"]
            )
        assert len(finals) < 6
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        cache = extract(lm, _data(), out, batch_size=4, shard_size=8, progress=False)
        extract(lm, _data(), tmp_path / "clean", batch_size=4, shard_size=8, progress=False)
        assert _tree(out) == _tree(tmp_path / "clean")
        assert len(cache) == 48
        print(f"\ndisk full: ENOSPC after {len(finals)} of 6 shards, clear CacheError, resumed")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
