"""The layout's rules that import-linter's `layers` contract does not see: no import circle between
modules (imports inside functions included), and no module importing another module's private name.

The checker reads the source with `ast`; the last two tests run it on a small made-up package, so
they show that it finds a circle and a private import when there is one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the package's modules it imports, anywhere in its body; private imports found)."""
    files = {module_name(path, root): path for path in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith(package):
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    imported = submodule if submodule in files else target
                    if imported in files and imported != name:
                        graph[name].add(imported)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and target != name:
                        private.append(f"{name} imports {target}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in files and alias.name != name:
                        graph[name].add(alias.name)
    return graph, private


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_in_visionzoo():
    graph, _ = import_graph(SRC, "visionzoo")
    assert circles(graph) == []


def test_no_module_imports_another_modules_private_name():
    _, private = import_graph(SRC, "visionzoo")
    assert private == []


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from toy.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from toy import c\n    return c\n")
    (package / "c.py").write_text("def late():\n    from toy.a import helper\n    return helper\n")
    (package / "d.py").write_text("from toy.a import helper\n")  # imports into the circle, not part of it
    graph, _ = import_graph(tmp_path, "toy")
    assert circles(graph) == [["toy.a", "toy.b", "toy.c"]]


def test_the_checker_finds_a_private_import_across_modules(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def _secret():\n    pass\n")
    (package / "b.py").write_text("from __future__ import annotations\n\ndef f():\n    from toy.a import _secret\n")
    _, private = import_graph(tmp_path, "toy")
    assert private == ["toy.b imports toy.a._secret"]


# Model files hold a whole family on one screen or two (STYLE.md); none is over 500 lines today.
LONG_FILES_ALLOWED = ("visionzoo/models/",)


def test_no_function_over_100_lines_and_no_module_over_500():
    long_functions, long_files = [], []
    for path in sorted((SRC / "visionzoo").rglob("*.py")):
        text = path.read_text()
        name = str(path.relative_to(SRC))
        if text.count("\n") > 500 and not name.startswith(LONG_FILES_ALLOWED):
            long_files.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long_functions.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long_functions == [] and long_files == []
