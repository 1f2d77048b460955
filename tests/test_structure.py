"""The package's shape: no import cycles between modules, no module using another's private names.

Walks every module's ``import`` statements (top level and inside functions: a lazy import is
still a dependency) with :mod:`ast`; nothing is imported, so the test is fast and cannot be
fooled by import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stimsim

ROOT = Path(stimsim.__file__).resolve().parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def resolve(importer: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(name: str, path: Path):
    """(imported module, imported names) for every import statement of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield resolve(name, is_package, node.level, node.module), [a.name for a in node.names]


def owner(target: str, mods: dict) -> str | None:
    """The stimsim module an import refers to (a name imported from a package may be a submodule)."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, names in imports(name, path):
            if not target.startswith("stimsim"):
                continue
            for n in names or [None]:
                sub = f"{target}.{n}" if n else target
                dep = sub if sub in mods else owner(target, mods)
                if dep and dep != name and not name.startswith(dep + ".") :
                    edges[name].add(dep)
    return edges


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ re-exports its submodules: collapse it into its members' cycle check
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if d.startswith(m + "."):
                continue  # a package importing its own submodules
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    mods = modules()
    offenders = []
    for name, path in mods.items():
        for target, names in imports(name, path):
            if not target.startswith("stimsim"):
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    offenders.append(f"{name}: from {target} import {n}")
            package, _, last = target.rpartition(".")
            # a private module belongs to its package: stimsim._logging to all of stimsim,
            # stimsim.fem._spr_numba to stimsim.fem only
            if last.startswith("_") and not last.startswith("__") and not name.startswith(package + "."):
                offenders.append(f"{name}: imports private module {target}")
    assert not offenders, "\n".join(offenders)


def test_the_walk_sees_real_imports():
    """The checks above can fail: the walk finds the pipeline's known dependencies."""
    edges = graph()
    assert "stimsim.head_model" in edges["stimsim.simulation"]
    assert "stimsim.fem.linear" in edges["stimsim.fem"]
