"""The import rules of the package, read from the source (every import, module-level or inside a function):

- layers, lowest first: ``mixerzoo.registry`` <- ``layers`` <- ``mixers`` <- ``models`` (and the package root,
  which re-exports them) <- ``training`` <- the scripts (``train.py``, ``benchmark.py``, ``collect_results.py``,
  ``__main__.py``) and ``tools/``: a module imports only from its own layer or below;
- no script imports another script, and a tool imports no script: what two of them share lives in the package;
- no module imports a private name (``_name``) of another module;
- the import graph between modules has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mixerzoo"
SCRIPTS = {"train", "benchmark", "collect_results", "__main__"}
LAYERS = {"registry": 0, "layers": 1, "mixers": 2, "models": 3, "": 3, "training": 4, "tools": 5}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACKAGE, *parts])


def _sources() -> dict[str, Path]:
    folders = ["layers", "mixers", "models", "training", "tools"]
    files = [p for p in ROOT.glob("*.py")] + [p for f in folders for p in (ROOT / f).rglob("*.py")]
    return {_module_name(p): p for p in files}


SOURCES = _sources()


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS[""]
    if parts[1] in SCRIPTS:
        return 5
    return LAYERS.get(parts[1], LAYERS[""])


def _is_script(module: str) -> bool:
    parts = module.split(".")
    return len(parts) == 2 and parts[1] in SCRIPTS


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import of ``module`` inside the package."""
    path = SOURCES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in SOURCES]
            found += [(s, [], node.lineno) for s in submodules]
            found.append((base, [n for n in names if f"{base}.{n}" not in SOURCES], node.lineno))
    return [(target, names, line) for target, names, line in found if target in SOURCES and target != module]


GRAPH = {module: _imports(module) for module in SOURCES}


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_module_imports_only_its_own_layer_or_below(module: str) -> None:
    upward = [f"{target} (line {line})" for target, _, line in GRAPH[module] if _layer(target) > _layer(module)]
    assert not upward, f"{module} imports from a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_script_is_imported_by_another_module(module: str) -> None:
    scripts = [f"{target} (line {line})" for target, _, line in GRAPH[module] if _is_script(target)]
    assert not scripts, f"{module} imports a script: {scripts} (move what it needs into the package)"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_private_name_crosses_modules(module: str) -> None:
    private = [f"{target}.{n}" for target, names, _ in GRAPH[module] for n in names if n.startswith("_")]
    assert not private, f"{module} imports private names {private}"


def test_import_graph_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target, _, _ in GRAPH[module]:
            if not (module.startswith(f"{target}.") or target == PACKAGE):  # a package importing its own parent
                visit(target, [*path, module])
        done.add(module)

    for module in SOURCES:
        visit(module, [])


def test_the_rules_see_the_package() -> None:
    """The checks above read every module (a rule that parses nothing cannot fail)."""
    assert {"mixerzoo.train", "mixerzoo.models.factory", "mixerzoo.training.loop", "mixerzoo.tools.erf"} <= set(GRAPH)
    assert any(target == "mixerzoo.models.factory" for target, _, _ in GRAPH["mixerzoo.models"])
    assert any(target == "mixerzoo.training.loop" for target, _, _ in GRAPH["mixerzoo.train"])
