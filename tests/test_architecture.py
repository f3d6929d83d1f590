"""The shape of the code (docs/architecture.md §1): layers, no cycles, no self-guarding imports, thin pages.

The layer contract lives in pyproject.toml (``[tool.importlinter]``) and is checked by import-linter;
these tests run it, show once that it catches an upward import, and add what it cannot see: cycles
(module and package level, counting imports inside functions), ``except ImportError`` around npdg's
own modules, and the imports of the dashboard pages (scripts, outside the package).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_import_linter_contracts_are_kept():
    res = _lint(ROOT, ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 kept, 0 broken" in res.stdout


def test_contract_fails_on_an_upward_import(tmp_path):
    """A copy of the package where a bottom-layer module imports the CLI must break the contract."""
    shutil.copytree(ROOT / "npdg", tmp_path / "npdg", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    labels = tmp_path / "npdg" / "labels.py"
    labels.write_text(labels.read_text() + "\n\ndef _upward():\n    import npdg.cli  # noqa: F401\n")
    res = _lint(tmp_path, tmp_path)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "npdg.labels -> npdg.cli" in res.stdout


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("npdg", cache_dir=None)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph (as a node list), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_between_modules(graph):
    edges = {m: {n for n in graph.find_modules_directly_imported_by(m) if n.startswith("npdg")}
             for m in graph.modules if m.startswith("npdg")}
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"


def test_no_import_cycles_between_subpackages(graph):
    """Siblings of one layer may import each other, but never in a circle (e.g. pruning <-> sensitivity)."""
    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    edges: dict[str, set[str]] = {}
    for m in graph.modules:
        for n in graph.find_modules_directly_imported_by(m):
            if n.startswith("npdg.") and top(n) != top(m) and m.startswith("npdg."):
                edges.setdefault(top(m), set()).add(top(n))
    assert _cycle(edges) is None, f"subpackage cycle: {' -> '.join(_cycle(edges))}"


def _py_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def test_no_except_importerror_around_own_modules():
    bad = []
    for path in _py_files("npdg"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if not caught & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"}:
                continue
            for stmt in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                names = [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) else (
                    [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [])
                if any(n.startswith("npdg") for n in names) or (isinstance(stmt, ast.ImportFrom) and stmt.level):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"except ImportError around npdg's own modules: {bad}"


#: What no page or app module may import: the engine's own libraries (go through npdg.service).
ENGINE_LIBRARIES = ("torch", "torchvision", "segmentation_models_pytorch", "torch_pruning", "captum", "timm")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from npdg import service` names npdg.service; other `from X import y` name X
            out += [f"npdg.{a.name}" for a in node.names] if node.module == "npdg" else [node.module]
    return out


def test_pages_and_app_use_only_the_services():
    """Pages are scripts import-linter cannot see: they (and app/) reach npdg only through npdg.service,
    and never import the engine's libraries themselves."""
    bad = []
    for path in _py_files("pages", "app"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "npdg" and not (name == "npdg.service" or name.startswith("npdg.service.")):
                bad.append(f"{path.relative_to(ROOT)}: {name}")
            if top in ENGINE_LIBRARIES:
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, f"pages/app import the engine directly: {bad}"


def test_a_widget_key_shared_by_pages_is_the_same_kind_of_widget():
    """Session state outlives a page switch: a key that is a slider on one page and a radio on another
    hands one widget the other's value (a traceback on the next page). Same key → same widget call."""
    seen: dict[str, set[str]] = {}
    for path in _py_files("pages", "app"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                for kw in node.keywords:
                    if kw.arg == "key" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        seen.setdefault(kw.value.value, set()).add(node.func.attr)
    clashes = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
    assert not clashes, f"widget keys used for different kinds of widgets: {clashes}"
