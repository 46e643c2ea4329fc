"""The package's import structure: no module-level import cycles, and a light core that never reaches the
developer tools, torch or gradio by importing it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "cosyvoice_onnx"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules that `path` imports when it is executed, i.e. outside any function or class body.

    `from . import x` and `from .pkg import name` resolve to the submodule when `x`/`name` is one, else to the
    package itself; importing a submodule also runs its parent packages' __init__ first.
    """
    name = module_name(path)
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    prefix = base[: len(base) - (node.level - 1)]
                    target = ".".join(prefix + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == PACKAGE:
                    target = node.module
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            visit(ast.iter_child_nodes(node))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)).body)
    # Importing a.b.c also executes a and a.b first, unless they are this module's own ancestors, which are
    # already executing when it runs (that implicit step is no dependency; an explicit `from a import name` is).
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    closed = set(found)
    for target in found:
        parts = target.split(".")
        closed.update(".".join(parts[:i]) for i in range(1, len(parts)))
    closed -= {m for m in closed - found if m in ancestors}
    closed.discard(name)
    return {m for m in closed if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): module_level_imports(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_graph_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert "cosyvoice_onnx.engine" in graph["cosyvoice_onnx"]
    assert "cosyvoice_onnx.errors" in graph["cosyvoice_onnx.engine"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_level_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    detail = "\n".join(
        " <-> ".join(c) + "\n    " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)
    assert not found, f"module-level import cycles:\n{detail}"


@pytest.mark.parametrize("module", ["cosyvoice_onnx", "cosyvoice_onnx.engine"])
def test_runtime_import_stays_light(module):
    code = (f"import sys, {module}\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'gradio', 'fastapi', 'uvicorn')\n"
            "               or m.split('.')[:2] in (['cosyvoice_onnx', 'tools'], ['cosyvoice_onnx', 'server']))\n"
            "print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", f"importing {module} also imports {res.stdout.strip()}"
