"""The import contract: which part of collapse_ray may import which.

Read from the source (every `import`, at the top of a module, inside a function, or under
`if TYPE_CHECKING:`), so a lazy import cannot hide an upward one. Layers, lowest first:

  0  validation, atomic, faults, environment, theory, level_set   leaf modules: import nothing of ours
     (nor does the package root, collapse_ray/__init__.py, which anything may import for its version)
  1  core        the engine: chain, workflows, pools, checkpoints, the loop (no Ray, MLflow or YAML)
  2  text, neural    the language-model and neural-network libraries the tasks use
  3  tasks       one module per task setting
  4  tracking    the only package that imports MLflow
  5  analysis    the figures and tables (a package of its own, beside collapse_ray)
  6  sweep       spec, plan, Ray Tune fan-out, conclusions, search, cost
  7  cli

A module may import its own unit and the layers below it, never a unit beside it on the same
layer (text and neural stay apart). On top of that, no import cycle at any level: between
modules, and between units.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("collapse_ray", "analysis")

LAYERS: dict[str, int] = {
    "collapse_ray.validation": 0, "collapse_ray.atomic": 0, "collapse_ray.faults": 0,
    "collapse_ray.environment": 0, "collapse_ray.theory": 0, "collapse_ray.level_set": 0,
    "collapse_ray.core": 1,
    "collapse_ray.text": 2, "collapse_ray.neural": 2,
    "collapse_ray.tasks": 3,
    "collapse_ray.tracking": 4,
    "analysis": 5,
    "collapse_ray.sweep": 6,
    "collapse_ray.cli": 7,
}

KNOWN_VIOLATIONS: set[str] = set()
"""Violations the refactor has not removed yet, each as check_layers prints it; a fixed one
must leave this list (the test fails on a stale entry too)."""

MAX_MODULES_FOR_CHAIN = 6


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def _kind(node: ast.AST, type_checking: set[int], top: set[int]) -> str:
    if id(node) in type_checking:
        return "TYPE_CHECKING"
    return "top" if id(node) in top else "lazy"


def import_edges(files: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(importer, imported module of ours, kind) for every import statement."""
    edges = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        type_checking = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                         and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        top = {id(n) for n in tree.body}
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in files and target != name:
                    edges.append((name, target, _kind(node, type_checking, top)))
    return edges


def unit_of(module: str) -> str | None:
    """The layered unit a module belongs to (the longest LAYERS key it is in)."""
    best = None
    for unit in LAYERS:
        if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best)):
            best = unit
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def check_layers(edges: list[tuple[str, str, str]]) -> set[str]:
    """Every breach of the contract, one line each."""
    problems = set()
    for importer, imported, kind in edges:
        if importer in PACKAGES:  # a package root holds its version and docstring, nothing it imports
            problems.add(f"the package root {importer} imports {imported} ({kind})")
            continue
        if imported in PACKAGES:  # (its __version__): below everything, as it imports nothing
            continue
        a, b = unit_of(importer), unit_of(imported)
        if a is None or b is None:
            problems.add(f"{importer if a is None else imported} is in no layer")
            continue
        if a == b:
            continue
        if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a]) or LAYERS[a] == 0:
            problems.add(f"{importer} (layer {LAYERS[a]}) imports {imported} (layer {LAYERS[b]}) ({kind})")
    modules: dict[str, set[str]] = {}
    units: dict[str, set[str]] = {}
    for importer, imported, _ in edges:
        modules.setdefault(importer, set()).add(imported)
        a, b = unit_of(importer), unit_of(imported)
        if a and b and a != b:
            units.setdefault(a, set()).add(b)
    for component in _cycles(modules):
        problems.add("module cycle: " + " <-> ".join(component))
    for component in _cycles(units):
        problems.add("unit cycle: " + " <-> ".join(component))
    return problems


@pytest.fixture(scope="module")
def edges():
    return import_edges(module_files())


def test_every_module_is_in_a_layer(edges):
    files = module_files()
    assert not [m for m in files if m not in PACKAGES and unit_of(m) is None]


def test_the_import_contract_holds(edges):
    problems = check_layers(edges)
    assert problems - KNOWN_VIOLATIONS == set(), "new breaches of the layering"
    assert KNOWN_VIOLATIONS - problems == set(), "fixed breaches still listed in KNOWN_VIOLATIONS"


@pytest.mark.parametrize("kind", ["top", "lazy", "TYPE_CHECKING"])
def test_an_upward_import_is_caught(edges, kind):
    """The checker is not blind: one upward import of each kind, from the engine to the sweep, is a breach and a cycle."""
    added = edges + [("collapse_ray.core.chain", "collapse_ray.sweep.spec", kind)]
    new = check_layers(added) - check_layers(edges)
    assert f"collapse_ray.core.chain (layer 1) imports collapse_ray.sweep.spec (layer 6) ({kind})" in new
    assert any(line.startswith("unit cycle") and "collapse_ray.core" in line for line in new)


def test_an_upward_import_in_a_file_is_caught(tmp_path):
    """The same from source: a lazy upward import written into a copy of a core module is read and refused."""
    files = module_files()
    copy = tmp_path / "chain.py"
    copy.write_text(files["collapse_ray.core.chain"].read_text()
                    + "\n\ndef _later():\n    from collapse_ray.tracking.store import client_for  # noqa: F401\n")
    files["collapse_ray.core.chain"] = copy
    new = check_layers(import_edges(files)) - check_layers(import_edges(module_files()))
    assert any("collapse_ray.core.chain (layer 1) imports collapse_ray.tracking" in line and "(lazy)" in line
               for line in new), new


def test_the_chain_config_loads_few_modules():
    code = ("import json, sys; import collapse_ray.core.chain; "
            "print(json.dumps(sorted(m for m in sys.modules if m == 'collapse_ray' or m.startswith('collapse_ray.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = json.loads(out)
    assert len(loaded) <= MAX_MODULES_FOR_CHAIN, loaded
