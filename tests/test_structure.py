"""The shape of the package: no import cycle, no module past 600 lines, a light start-up."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "probekit"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the probekit modules it imports, anywhere in its body (functions included),
    relative imports resolved, ``from pkg import submodule`` counted as the submodule; imports
    under ``if TYPE_CHECKING:`` are not executed and do not count."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(tree):
            if _under_type_checking(node, parents):
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for t in targets:
                while t and t not in modules:  # probekit.x.y where y is a name: the module x
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def _ancestor(a: str, b: str) -> bool:
    return a.startswith(b + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None. An edge from a module to a package above it is not counted:
    Python initialises a package before its submodules, so such an edge reads names the
    package's ``__init__`` defined before importing the submodule (the registry pattern of
    ``probekit.probes``)."""
    edges = {m: {t for t in ts if not _ancestor(m, t)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_walker_sees_function_body_and_relative_imports(tmp_path):
    graph = import_graph()
    # function-body import, relative, and "from . import submodule"
    assert "probekit.estimator" in graph["probekit.runs.fit"]
    assert "probekit.runs.folder" in graph["probekit.report.html"]
    assert "probekit.train.metrics" in graph["probekit.train.loop"]
    assert "probekit.viz.heatmaps" in graph["probekit.viz.curves"]
    # and the cycle finder finds a planted cycle (a -> b -> a, b's import inside a function)
    planted = {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}
    assert find_cycle(planted) in (["p.a", "p.b", "p.a"], ["p.b", "p.a", "p.b"])
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")))
def test_no_module_over_600_lines(module):
    n = len((ROOT / module).read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines (at most {MAX_LINES})"


def test_no_mention_of_design_documents_outside_the_repository():
    names = ("ARCHITECTURE" + ".md", "PROBES" + ".md", "STYLE" + ".md", "../" + "shared")
    files = [*PACKAGE.rglob("*.py"), ROOT / "README.md"]
    hits = [f"{p.relative_to(ROOT)}: {n}" for p in files for n in names if n in p.read_text()]
    assert not hits, hits


# ------------------------------------------------------------------------------- start-up

_PROBE = """
import runpy, sys, json
sys.argv = ["probekit", *json.loads(sys.argv[1])]
try:
    runpy.run_module("probekit", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "transformers", "sklearn", "captum", "timm", "numpy") if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _start(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["run", "--help"], 0),
        (["extract", "--help"], 0),
        (["run", "--limit"], 2),  # argparse error: missing value
        (["nosuchcommand"], 2),
        (["run", "--ablation", "sideways"], 2),  # a bad choice
    ],
)
def test_help_and_argument_errors_load_nothing_heavy(argv, code):
    result = _start(argv)
    assert result["code"] == code
    assert result["heavy"] == [], f"probekit {' '.join(argv)} imported {result['heavy']}"


def test_import_probekit_is_light_and_names_resolve():
    code = (
        "import sys, probekit; light = 'torch' not in sys.modules; "
        "names = sorted(set(probekit.__all__) - set(dir(probekit))); "
        "from probekit import ProbeClassifier, RunConfig, FeatureCache; "
        "print(light, names, 'torch' in sys.modules, ProbeClassifier.__module__)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    ).stdout.split()
    assert out == ["True", "[]", "True", "probekit.estimator.classifier"]


def test_every_public_name_is_importable_from_the_package():
    import importlib

    import probekit

    for name, module in probekit._EXPORTS.items():
        assert getattr(probekit, name) is getattr(
            importlib.import_module(f"probekit.{module}"), name
        )
    assert set(probekit._EXPORTS) == set(probekit.__all__) - {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        probekit.nope  # noqa: B018


def test_fit_on_a_cache_loads_neither_scikit_learn_nor_scipy(tmp_path):
    """`probekit fit` of a classification cache imports torch, not scikit-learn (1.3 s of SciPy)."""
    from .test_estimator import _make_cache

    _make_cache(tmp_path / "cache")  # 3 layers, cls and mean, 120 samples
    argv = [
        "fit",
        "--cache",
        str(tmp_path / "cache"),
        "--probes",
        "linear",
        "--out",
        str(tmp_path / "run"),
        "--bootstrap",
        "50",
    ]
    probe = _PROBE.replace(
        '("torch", "transformers", "sklearn", "captum", "timm", "numpy")',
        '("sklearn", "scipy", "transformers", "plotly", "pandas")',
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert result["heavy"] == [], f"probekit fit imported {result['heavy']}"
