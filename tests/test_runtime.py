"""``import probekit`` stops glibc's malloc from page-faulting freed activations in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from probekit._utils import runtime as _runtime

CHILD = textwrap.dedent(
    """
    import json
    import probekit
    from probekit._utils import runtime as _runtime
    from tests.test_runtime import churn_faults
    print(json.dumps({"faults": churn_faults(), **_runtime.allocator_state()}))
    """
)


def churn_faults() -> int:
    """Minor page faults of 10 rounds of what a forward pass does per batch: allocate two
    32 MiB activations, write them, free them (after one round to grow the process)."""
    import resource

    import torch

    def rounds(n: int) -> None:
        for _ in range(n):
            a = torch.empty(8 << 20).fill_(1.0)
            b = torch.empty(8 << 20).fill_(2.0)
            del a, b

    rounds(1)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


@pytest.mark.skipif(_runtime._glibc() is None, reason="the allocator setting is glibc-only")
def test_import_keeps_freed_memory_and_the_opt_out_restores_glibc():
    assert _runtime.allocator_state()["tuned"]  # this process imported probekit
    tuned = churn_faults()
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PROBEKIT_MALLOC"] = "default"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True, cwd=root
    )
    default = json.loads(out.stdout.strip().splitlines()[-1])
    assert not default["tuned"] and default["reason"] == "PROBEKIT_MALLOC=default"
    # glibc maps each 32 MiB block afresh and faults its 8,192 pages in: ~160k faults
    assert default["faults"] > 20 * 4_000
    assert tuned < default["faults"] / 10  # at most one block faulted in once more


def test_tuning_is_skipped_off_glibc(monkeypatch):
    monkeypatch.setattr(_runtime, "_glibc", lambda: None)
    monkeypatch.setitem(_runtime._STATE, "tuned", False)
    assert _runtime.tune_allocator() is False
    assert _runtime.allocator_state()["reason"] == "not glibc"
