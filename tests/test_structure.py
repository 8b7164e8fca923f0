"""The shape of the package: no private name imported across packages, no import cycle between
modules or packages (lazy exports and registries included), few top-level modules, complexity
limits (ruff C901 / PLR0915), a light start-up."""

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
MAX_TOP_LEVEL_MODULES = 6


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


def _package(module: str) -> str:
    """The package a module belongs to at the top of probekit: ``probekit.cache.rows`` ->
    ``probekit.cache``; a top-level module (``probekit.cli``) and ``probekit`` are their own."""
    return ".".join(module.split(".")[:2])


def _lazy_exports(path: Path, package: str) -> set[str]:
    """The modules a package ``__init__`` exports lazily: the values of its ``attach(__name__,
    {name: module})`` call or of its ``_EXPORTS`` dict, as absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        mapping = None
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "attach":
            mapping = next((a for a in node.args if isinstance(a, ast.Dict)), None)
        elif isinstance(node, ast.AnnAssign | ast.Assign) and "_EXPORTS" in ast.unparse(node):
            mapping = node.value if isinstance(node.value, ast.Dict) else None
        if mapping is not None:
            found |= {
                f"{package}.{v.value}"
                for v in mapping.values
                if isinstance(v, ast.Constant) and isinstance(v.value, str)
            }
    return found


def package_graph(graph: dict[str, set[str]] | None = None) -> dict[str, set[str]]:
    """Package -> the packages it imports: :func:`import_graph` plus the lazy exports of every
    ``__init__``, collapsed to :func:`_package`; edges inside a package and edges to the root
    ``probekit`` (initialised before anything below it) are left out."""
    modules = _modules()
    graph = import_graph() if graph is None else graph
    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        path = modules.get(name)
        if path is not None and path.name == "__init__.py":
            targets = targets | _lazy_exports(path, name)
        src = _package(name)
        out.setdefault(src, set()).update(
            _package(t) for t in targets if _package(t) not in (src, "probekit")
        )
    return out


def private_imports(root: Path = PACKAGE, top: str = "probekit") -> list[str]:
    """Every ``from X import _name`` (``as`` anything) in a module under ``root`` whose ``X`` lies
    in another package (:func:`_package`) than the importing module: ``"file:line: _name from
    X"``. Dunder names are not private; ``import X`` of a module is never counted."""
    hits = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(name, is_package, node.level, node.module)
            if not (source == top or source.startswith(top + ".")):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and _package(source) != _package(name):
                    hits.append(
                        f"{path.relative_to(root.parent)}:{node.lineno}: {alias.name} from {source}"
                    )
    return hits


def test_the_private_import_scan_catches_a_planted_example(tmp_path):
    pkg = tmp_path / "probekit"
    for sub in ("cache", "runs"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cache" / "rows.py").write_text("_x = 1\n__version__ = 2\n")
    (pkg / "cache" / "reader.py").write_text("from .rows import _x\n")  # same package: fine
    (pkg / "runs" / "fit.py").write_text(
        "from ..cache.rows import _x\n"
        "from ..cache.rows import __version__\n"
        "def f():\n    from probekit.cache.rows import _x as y\n"
    )
    assert private_imports(pkg) == [
        "probekit/runs/fit.py:1: _x from probekit.cache.rows",
        "probekit/runs/fit.py:4: _x from probekit.cache.rows",
    ]


def test_no_private_name_is_imported_across_packages():
    hits = private_imports()
    assert not hits, "private names imported across packages (make them public):\n" + "\n".join(
        hits
    )


def test_package_graph_counts_lazy_exports_and_finds_a_planted_package_cycle():
    graph = package_graph()
    # lazy exports count: probekit's __init__ imports no subpackage, its _EXPORTS name them
    assert not any(t.startswith("probekit.") for t in import_graph()["probekit"])
    assert {"probekit.estimator", "probekit.data", "probekit.probes"} <= graph["probekit"]
    # and so do attach() entries: probekit.models exports probekit.models.loading lazily
    assert "probekit.models.loading" in _lazy_exports(
        PACKAGE / "models" / "__init__.py", "probekit.models"
    )
    # the registries: a head module imports probes.registry, inside the package (no edge)
    assert "probekit.probes" not in graph["probekit.probes"]
    assert "probekit.probes" in graph["probekit.estimator"]
    planted = package_graph(
        {"probekit.cache.rows": {"probekit.runs.fit"}, "probekit.runs.fit": {"probekit.cache"}}
    )
    assert find_cycle(planted) in (
        ["probekit.cache", "probekit.runs", "probekit.cache"],
        ["probekit.runs", "probekit.cache", "probekit.runs"],
    )


def test_no_import_cycle_between_packages():
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_few_modules_beside_the_packages():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_complexity_limits_hold():
    """ruff's C901 (mccabe) and PLR0915 (statements per function), as set in pyproject.toml."""
    pytest.importorskip("ruff")
    config = (ROOT / "pyproject.toml").read_text()
    assert '"C901"' in config and '"PLR0915"' in config
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "C901,PLR0915", "probekit", "tests"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_graph_walker_sees_function_body_and_relative_imports(tmp_path):
    graph = import_graph()
    # function-body import, relative, and "from . import submodule"
    assert "probekit.estimator" in graph["probekit.runs.task"]  # `from .. import estimator`
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
