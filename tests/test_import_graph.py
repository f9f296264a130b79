"""Dependencies point one way (issue #26): no import cycle between qfa_deploy modules, and the layers of
../shared/DESIGN.md (space -> supernet -> checkpoint -> fold -> ONNX -> TVM; search reads tables) hold.

Imports are read from the source with ``ast`` (module level and inside functions, so a lazy import that
only dodges a cycle at run time still counts); nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qfa_deploy"

# Known backward edges, each with the issue that removes it. Keep this short: a new entry needs a reason.
# The first run (issue #26) found 7 (data <-> imagefolder, deploy.compile <-> deploy.tune, cli <-> commands,
# deploy.tune -> export/nn, export.parts_onnx -> lut.keys, export.verify -> commands.common); all are gone.
ALLOWED: set[tuple[str, str]] = set()

# (importer prefix, forbidden imported prefixes): the layers the design promises.
LAYER_RULES = [
    ("qfa_deploy.export", ("qfa_deploy.commands", "qfa_deploy.lut", "qfa_deploy.search")),
    # deploy/ reads ONNX files: nothing of the exporter or of what lies above it (supernet, fold, training).
    ("qfa_deploy.deploy", ("qfa_deploy.export", "qfa_deploy.commands", "qfa_deploy.lut", "qfa_deploy.search",
                           "qfa_deploy.nn", "qfa_deploy.quant", "qfa_deploy.train", "qfa_deploy.fold",
                           "qfa_deploy.extract", "qfa_deploy.calibrate")),
    ("qfa_deploy.lut", ("qfa_deploy.search", "qfa_deploy.commands")),
]


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) names."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The qfa_deploy modules ``module`` imports anywhere in its source (``from pkg import sub`` names sub)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` names the submodule; ``from mod import attr`` falls back to mod.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name, modules)
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    # A package's __init__ re-exporting its own modules is not a dependency of those modules on it.
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def allowed(src: str, dst: str) -> bool:
    return (src, dst) in ALLOWED


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle for each strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if allowed(v, w):
                continue
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [cycle_in(graph, set(c)) for c in components]


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if allowed(v, w):
                    continue
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            if allowed(src, dst):
                continue
            if under(dst, "qfa_deploy.commands") and not (under(src, "qfa_deploy.commands") or src == "qfa_deploy.cli"):
                bad.append(f"{src} -> {dst} (only cli.py imports commands/)")
            for prefix, forbidden in LAYER_RULES:
                if under(src, prefix) and any(under(dst, f) for f in forbidden):
                    bad.append(f"{src} -> {dst} ({prefix} must not import it)")
    return sorted(set(bad))


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_point_one_way():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the design's one-way flow:\n" + "\n".join(bad)


def test_allow_list_entries_still_exist():
    # A removed backward edge must leave the allow-list too, so it cannot come back unnoticed.
    graph = import_graph()
    stale = [f"{s} -> {d}" for s, d in ALLOWED if d not in graph.get(s, set())]
    assert not stale, "stale allow-list entries: " + ", ".join(stale)


@pytest.mark.parametrize("source, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set()}, None),
])
def test_cycle_finder_names_the_cycle(source, cycle):
    found = find_cycles(source)
    assert found == ([cycle] if cycle else [])


def test_reader_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "qfa_deploy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from qfa_deploy.sub import other\n")
    (pkg / "sub" / "other.py").write_text("from .leaf import f\n")
    modules = {module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    assert imports_of("qfa_deploy.sub.leaf", modules["qfa_deploy.sub.leaf"], modules) == {"qfa_deploy.sub.other"}
    assert imports_of("qfa_deploy.sub.other", modules["qfa_deploy.sub.other"], modules) == {"qfa_deploy.sub.leaf"}
    assert imports_of("qfa_deploy.sub", modules["qfa_deploy.sub"], modules) == {"qfa_deploy.sub.leaf"}
