"""The import graph of sampa/: no cycles, and imports point one way (DEVELOPERS.md).

Every import counts: at module level, under ``TYPE_CHECKING`` and inside functions (an import hidden in
a function is still a dependency)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "sampa"
#: (importer prefix, forbidden prefixes): the layers of DEVELOPERS.md
FORBIDDEN = (
    ("sampa.optim", ("sampa.backends", "sampa.train", "sampa.data", "sampa.cli", "sampa.report")),
    ("sampa.batch", ("sampa.",)),
    ("sampa.backends", ("sampa.train", "sampa.cli", "sampa.report")),
    ("sampa.report", ("sampa.train", "sampa.backends", "sampa.optim")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the sampa modules it imports (``from a.b import c`` counts ``a.b.c`` if it is a module)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_contract_modules():
    graph = import_graph()
    assert {"sampa.optim.evaluation", "sampa.optim.flat", "sampa.batch"} <= graph["sampa.optim.contract"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_no_import_cycles_in_sampa():
    found = cycles(import_graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


@pytest.mark.parametrize(("importer", "forbidden"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_imports_point_one_way(importer, forbidden):
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module == importer or module.startswith(importer + ".")
        for target in targets
        if target.startswith(forbidden)
    )
    assert not wrong, f"imports against the layering: {wrong}"


def test_planning_does_not_import_the_compiler():
    # torch._dynamo costs about 1.4 s of CPU: the workflow's plan (method registry, validation) skips it
    import subprocess
    import sys

    code = (
        "import sys; from sampa import experiments as ex; from sampa.config import RunConfig, validate; "
        "import sampa.optim, sampa.train; validate(RunConfig(optimizer='sampa', model='tinycnn')); "
        "print('torch._dynamo' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
