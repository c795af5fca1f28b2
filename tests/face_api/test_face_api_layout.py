"""The face API's shape: no import circle among its modules, the workers reach it only through
its public entry (face_api.engine), and importing the app module does no work."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FACE_API = PROJECT_ROOT / "face_api"
WORKERS = PROJECT_ROOT / "workers"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules `path` imports, at its top or inside functions, relative imports resolved;
    `from package import name` counts as importing package.name when that is a module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                where = ".".join(base + ([node.module] if node.module else []))
            else:
                where = node.module
            for alias in node.names:
                sub = f"{where}.{alias.name}"
                found.add(sub if sub in known else where)
    return found


def test_face_api_has_no_import_circle():
    known = modules(FACE_API)
    graph = {name: sorted(i for i in imports(path, set(known)) if i in known and i != name)
             for name, path in known.items()}
    assert "face_api.engine" in graph and "face_api.boxes" in graph
    done, stack = set(), []

    def visit(node):
        if node in stack:
            circle = stack[stack.index(node):] + [node]
            raise AssertionError("import circle: " + " -> ".join(circle))
        if node in done:
            return
        stack.append(node)
        for nxt in graph[node]:
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_face_api_imports_nothing_from_workers():
    known = modules(FACE_API)
    for name, path in known.items():
        bad = sorted(i for i in imports(path, set(known)) if i == "workers" or i.startswith("workers."))
        assert not bad, f"{name} imports {bad}"


def test_workers_use_only_the_public_entry():
    known = set(modules(FACE_API))
    used = {}
    for name, path in modules(WORKERS).items():
        for imported in imports(path, known):
            if imported == "face_api" or imported.startswith("face_api."):
                used.setdefault(imported, []).append(name)
    assert set(used) <= {"face_api.engine"}, used
    assert "face_api.engine" in used      # the in-process engine and the box IoU come from it


def test_importing_the_app_module_does_no_work(tmp_path):
    """Settings are checked and models loaded when the app is built (`face_api.app:app` is built on
    first access), not when the module is imported."""
    code = ("import sys\nimport face_api.app\nfrom face_api import engine\n"
            "assert not engine.models_loaded()\n"
            "assert 'app' not in vars(sys.modules['face_api.app'])\nprint('imported')\n")
    env = {**os.environ, "PHOTO_FACE_SCALES": "big", "PHOTO_STORAGE_ROOT": str(tmp_path / "missing")}
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "imported", res.stderr
