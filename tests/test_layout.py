"""The shape of the tree: rooms by role, no import circles, and who may import whom."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / package).rglob("*.py")}


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time (lazy imports inside functions
    do not make a circle at import)."""
    mods = modules(package)
    # a module's own parent packages are initialised before it: importing them is no circle
    return {name: {m for m in imports(path, top_level_only=True)
                   if m in mods and m != name and not name.startswith(m + ".")}
            for name, path in mods.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
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

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_circle_in_workers():
    assert cycle(graph("workers")) is None


def test_no_import_circle_in_face_api():
    assert cycle(graph("face_api")) is None


def test_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_workers_import_only_the_public_encode_entry_of_face_api():
    used = {m for path in (ROOT / "workers").rglob("*.py") for m in imports(path, top_level_only=False)
            if m == "face_api" or m.startswith("face_api.")}
    assert used <= {"face_api", "face_api.engine"}, sorted(used)


def test_face_api_imports_nothing_from_workers():
    used = {m for path in (ROOT / "face_api").rglob("*.py") for m in imports(path, top_level_only=False)
            if m == "workers" or m.startswith("workers.")}
    assert used == set()


def test_few_modules_at_the_top_of_workers():
    top = sorted(p.name for p in (ROOT / "workers").glob("*.py"))
    assert len(top) <= 6, top
    assert {"__init__.py", "__main__.py"} <= set(top)


def test_no_test_imports_another_test_module_and_benches_import_only_test_support():
    for top in ("tests", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            for m in imports(path, top_level_only=False):
                if m.startswith("tests.") and not m.startswith("tests.support"):
                    raise AssertionError(f"{path.relative_to(ROOT)} imports {m}")


def test_every_exception_of_workers_has_the_one_root():
    import importlib
    import inspect

    from workers.errors import PipelineError
    strays = []
    for name in modules("workers"):
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if (inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name
                    and not issubclass(cls, PipelineError)):
                strays.append(f"{name}.{cls.__name__}")
    assert strays == []
