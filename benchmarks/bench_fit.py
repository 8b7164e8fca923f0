"""End-to-end ``probekit fit --probe linear`` on the bundled MiniLM cache, against an older commit.

The command a user types after ``probekit extract``: start-up, imports, reading and verifying
the cache, the stratified split, per-layer L-BFGS with the validation search and the refit,
test metrics with bootstrap intervals, the within-model CKA map, and the files of the run.

Both sides run in fresh processes on the same data (``bundled:minilm-l6`` over all 5,588 words
of ``bundled:vader-valence``, ``cls`` and ``mean`` pooling), interleaved (new, old, new, old,
...) so that a change in the machine's load hits both alike; the table gives medians of wall
time and of the child's CPU time (user + kernel). The baseline is a ``git worktree`` of
``--baseline`` (default: ``4d6c415``, main before the start-up and bootstrap work) with its own
cache, extracted by that commit's own code (its cache format differs).

Usage::

    python benchmarks/bench_fit.py                    # 5 rounds, about 3 minutes
    python benchmarks/bench_fit.py --repeats 3 --baseline HEAD~20
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(argv: list[str], src: Path, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of ``python -m probekit.cli ARGV`` with ``src`` on the path."""
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    cpu0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "probekit.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{src}: probekit {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--baseline", default="4d6c415", help="git revision to compare with")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--target", type=float, default=4.0, help="baseline / new wall time")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-fit-"))
    old_src = work / "baseline"
    try:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old_src), args.baseline],
            check=True,
            capture_output=True,
        )
        sides = {"new": ROOT, "old": old_src}
        extract = ["extract", "--model", "bundled:minilm-l6", "--data", "bundled:vader-valence"]
        for name, src in sides.items():
            t, _ = run([*extract, "--out", str(work / f"cache-{name}")], src, work)
            print(f"extracted the {name} cache in {t:.1f} s", flush=True)
        fits: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for r in range(args.repeats + 1):  # round 0 warms the page cache and is dropped
            for name, src in sides.items():
                out = work / f"run-{name}-{r}"
                t = run(
                    [
                        "fit",
                        "--cache",
                        str(work / f"cache-{name}"),
                        "--probe",
                        "linear",
                        "--out",
                        str(out),
                    ],
                    src,
                    work,
                )
                if r:
                    fits[name].append(t)
                    print(f"  round {r} {name}: {t[0]:.2f} s wall, {t[1]:.2f} s CPU", flush=True)
        print(
            f"\n`probekit fit --probe linear`, bundled MiniLM cache, medians of {args.repeats}"
            " interleaved fresh processes"
        )
        med = {
            n: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for n, v in fits.items()
        }
        for name in sides:
            label = "this tree" if name == "new" else f"baseline {args.baseline}"
            print(f"  {label:<22} {med[name][0]:7.2f} s wall {med[name][1]:7.2f} s CPU")
        ratio_wall = med["old"][0] / med["new"][0]
        ratio_cpu = med["old"][1] / med["new"][1]
        verdict = "met" if ratio_wall >= args.target else "not met"
        print(
            f"speed-up: {ratio_wall:.2f}x by wall, {ratio_cpu:.2f}x by CPU time "
            f"(target {args.target:g}x by wall: {verdict})"
        )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old_src)],
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
