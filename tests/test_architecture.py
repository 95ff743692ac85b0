"""The shape of the code base, checked: layering, no import cycles, no reach-ins to private members.

See ARCHITECTURE.md for the rules these tests keep.
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

REPO = Path(__file__).resolve().parents[1]
# Modules that wrap a third-party package's private parts, one place each, because it has no public API for them.
THIRD_PARTY_BRIDGES = {"dcsam/modeling/sam2_internals.py", "backend/labelstudio/sdk_bridge.py"}


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold():
    out = _lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_import_contracts_catch_a_model_library_importing_the_backend(tmp_path):
    for name in ("dcsam", "backend"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "dcsam" / "masks.py", "a") as fh:
        fh.write("\nfrom backend.settings import BackendSettings  # a deliberate violation\n")
    out = _lint_imports(tmp_path)
    assert out.returncode != 0
    assert "dcsam.masks -> backend.settings" in out.stdout and "BROKEN" in out.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over direct imports."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("dcsam", "backend", include_external_packages=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def _private_reach_ins(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``/``cls``/``super()``: another object's private member."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        if name in ("_replace", "_asdict", "_fields", "_make", "_exit"):  # namedtuple's and os's public API
            continue
        out.append(f"{path.relative_to(REPO)}:{node.lineno}: .{name}")
    return out


@pytest.mark.parametrize("folder", ["dcsam", "backend", "tests", "scripts", "docker"])
def test_no_module_reaches_into_another_objects_private_members(folder):
    found = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if str(path.relative_to(REPO)) not in THIRD_PARTY_BRIDGES:
            found += _private_reach_ins(path)
    assert found == []


def test_the_reach_in_finder_flags_another_objects_private_member(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    path = tmp_path / "m.py"
    path.write_text("class A:\n    def f(self, other):\n        self._ok()\n        return other._state._query('x')\n")
    assert _private_reach_ins(path) == ["m.py:4: ._query", "m.py:4: ._state"]
