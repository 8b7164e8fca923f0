"""One cache, one set of numerics: the manifest's thread count is what every writer computes with.

The torchrun side (2 ranks against 1 process, in bf16) is in ``test_distributed.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from probekit import FeatureCache, extract, from_arrays, load_model
from probekit.cache.integrity import shard_meta_bytes

WORDS = [f"sample {i} " + "word " * (i % 4) for i in range(24)]
LABELS = [i % 2 for i in range(24)]


def _data():
    return from_arrays(WORDS, LABELS, label_names=["a", "b"], name="numerics")


def _files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*.*"))}


def _extract(model, out: Path, precision: str, threads: int | None = None) -> FeatureCache:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return extract(
            model, _data(), out, batch_size=4, shard_size=4, precision=precision, progress=False
        )
    finally:
        torch.set_num_threads(before)


def _drop(cache: Path, *shards: int) -> None:
    for i in shards:
        for suffix in (".safetensors", ".json"):
            (cache / "shards" / f"{i:06d}{suffix}").unlink()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_resume_on_other_threads_computes_with_the_recorded_ones(
    tiny_bert_dir, tmp_path, precision
):
    lm = load_model(tiny_bert_dir)
    cache = _extract(lm, tmp_path / "c", precision, threads=1)
    assert cache.manifest["threads"] == 1 and cache.manifest["precision"] == precision
    meta = json.loads((tmp_path / "c" / "shards" / "000002.json").read_bytes())
    assert meta["numerics"] == {"device": "cpu", "precision": precision, "threads": 1}
    before = _files(tmp_path / "c")

    _drop(tmp_path / "c", 2, 5)
    seen: list[int] = []
    hook = lm.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    ambient = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _extract(lm, tmp_path / "c", precision)  # the ambient count is 2
        assert torch.get_num_threads() == 2  # restored after
    finally:
        hook.remove()
        torch.set_num_threads(ambient)
    assert seen and set(seen) == {1}  # both resumed shards' forward passes ran on 1 thread
    assert _files(tmp_path / "c") == before  # every file, the manifest included


def test_a_cache_with_mixed_numerics_warns_naming_the_shards(tiny_bert_dir, tmp_path, monkeypatch):
    lm = load_model(tiny_bert_dir)
    _extract(lm, tmp_path / "c", "fp32", threads=1)
    # a shard from another machine / version: its .json says 3 threads
    js = tmp_path / "c" / "shards" / "000003.json"
    meta = json.loads(js.read_bytes())
    js.write_bytes(shard_meta_bytes(dict(meta, numerics=dict(meta["numerics"], threads=3))))
    _drop(tmp_path / "c", 5)
    with pytest.warns(UserWarning, match=r"different numerics.*shard 3 \(cpu, fp32, 3 threads\)"):
        _extract(lm, tmp_path / "c", "fp32")

    # a process that cannot set the cache's thread count says so, and the mix is named
    _drop(tmp_path / "c", 4)
    ambient = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    try:
        with pytest.warns(UserWarning) as caught:
            _extract(lm, tmp_path / "c", "fp32")
    finally:
        monkeypatch.undo()
        torch.set_num_threads(ambient)
    messages = [str(w.message) for w in caught]
    assert any("shards [4]" in m and "2 intra-op thread(s), not the 1" in m for m in messages)
    assert any("shard 4 (cpu, fp32, 2 threads)" in m for m in messages), messages
