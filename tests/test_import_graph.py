"""The package's layout shows the flow spec -> compile -> run -> measure -> stats -> report: no module
imports, directly or through others, a module that imports it back.

The graph is read from the source with ``ast`` (every ``import`` statement, also those inside
functions: a lazy import is still a dependency), not by importing anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "interventions"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            for t in targets:
                if t.split(".")[0] != "interventions":
                    continue
                dep = resolve(t)
                if dep and dep != name:
                    graph[name].add(dep)
                # Importing a.b.c runs a/b/__init__.py first: a dependency too, unless the importer
                # lives inside that package (its own package's __init__ is not an extra edge).
                parent = (dep or "").rpartition(".")[0]
                while parent.count("."):
                    if not (name == parent or name.startswith(parent + ".")):
                        graph[name].add(parent)
                    parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "interventions.stats.analysis" in graph["interventions.cli.analyze"]  # imported inside a function
    assert "interventions.store" in graph["interventions.run.job"]


def test_a_planted_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


KNOWN_ELSEWHERE = {
}


def test_no_import_cycles_in_the_package():
    found = [c for c in cycles(import_graph()) if not any(known <= set(c) for known in KNOWN_ELSEWHERE)]
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


# The pipeline's stages, lowest first: a module may import its own stage and the stages below it,
# never one above (function-level imports included). ``docs/architecture.md`` says what each owns.
STAGES = ("core", "testbed", "models", "spec", "observation", "detection", "compile", "kinds", "measures", "run",
          "api", "stats", "report", "pipeline", "studies", "cli", "package")
CORE = {"interventions.errors", "interventions.registry", "interventions.progress", "interventions.jsonable",
        "interventions.store", "interventions.interrupts"}


def stage_of(module: str) -> str:
    """The stage a module belongs to: its subpackage, or a named top-level module."""
    if module in CORE:
        return "core"
    if module == "interventions":
        return "package"   # the lazy public API (names resolved on first use)
    return module.split(".")[1]


def stage_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({stage_of(m)}) imports {d} ({stage_of(d)})" for m, deps in graph.items() for d in deps
                  if STAGES.index(stage_of(d)) > STAGES.index(stage_of(m)))


def test_every_module_belongs_to_a_stage():
    unknown = sorted(m for m in import_graph() if stage_of(m) not in STAGES)
    assert not unknown, f"modules outside the declared stages (add them to STAGES or move them): {unknown}"


def test_no_stage_imports_a_stage_above_it():
    found = stage_violations(import_graph())
    assert not found, "imports that reach up a stage:\n" + "\n".join(found)


def test_a_planted_upward_import_is_found():
    graph = {"interventions.run.job": {"interventions.stats.analysis"}, "interventions.stats.analysis": set()}
    assert stage_violations(graph) == ["interventions.run.job (run) imports interventions.stats.analysis (stats)"]


def test_only_a_handful_of_modules_sit_at_the_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == ["api", "errors", "interrupts", "jsonable", "pipeline", "progress", "registry", "store"], top
