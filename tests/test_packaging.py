"""pyproject.toml and the requirements.txt lock stay in step; no development-machine paths."""
from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.services import PROJECT_ROOT


def pyproject() -> dict:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


def project() -> dict:
    return pyproject()["project"]


def direct_requirements() -> list[Requirement]:
    p = project()
    return [Requirement(r) for r in p["dependencies"] + sum(p["optional-dependencies"].values(), [])]


def lock() -> dict[str, Requirement]:
    out = {}
    for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def test_every_direct_requirement_is_pinned_alike_in_the_lock():
    locked = lock()
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in requirements.txt"
        assert str(req.specifier).startswith("=="), f"{req}: pin it (==) as in the lock"
        assert req.specifier == locked[name].specifier, f"{req} vs lock {locked[name]}"
        assert str(req.marker or "") == str(locked[name].marker or ""), f"{req} vs lock {locked[name]}"


def test_every_lock_entry_is_needed_by_the_project():
    """The lock holds the direct requirements and what they pull in (installed metadata): a pin
    nothing needs any more is flagged, so the lock does not grow stale."""
    needed: set[str] = set()
    todo = [r for r in direct_requirements() if r.marker is None or r.marker.evaluate()]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in needed:
            continue
        needed.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue                      # not installed here: its own needs cannot be walked
        for spec in map(Requirement, requires):
            env = [{"extra": extra} for extra in req.extras] or [{"extra": ""}]
            if spec.marker is None or any(spec.marker.evaluate(e) for e in env):
                todo.append(spec)
    applicable = {n for n, r in lock().items() if r.marker is None or r.marker.evaluate()}
    assert applicable - needed == set(), "pinned in requirements.txt but needed by nothing in pyproject.toml"


def test_console_script_and_package_data_are_declared():
    assert project()["scripts"] == {"photo-pipeline": "workers.commands.cli:main"}
    templates = sorted(p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / "etc").rglob("*.j2"))
    assert templates == ["etc/supervisor/photo-worker.conf.j2", "etc/systemd/face-api.service.j2"]
    setuptools = pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"workers.etc": "etc"}
    assert setuptools["package-data"] == {"workers.etc.supervisor": ["*.j2"], "workers.etc.systemd": ["*.j2"],
                                          "workers.commands.review": ["templates/*.html", "static/*"]}
    review = PROJECT_ROOT / "workers" / "commands" / "review"
    assert list((review / "templates").glob("*.html")) and list((review / "static").glob("*"))


def test_every_package_in_the_tree_is_listed():
    """pyproject lists the packages (etc/ is mapped into workers.etc), so a new one must be added."""
    on_disk = {".".join(p.parent.relative_to(PROJECT_ROOT).parts)
               for top in ("workers", "face_api") for p in (PROJECT_ROOT / top).rglob("__init__.py")}
    on_disk |= {"workers.etc." + p.name for p in (PROJECT_ROOT / "etc").iterdir() if p.is_dir()}
    assert set(pyproject()["tool"]["setuptools"]["packages"]) == on_disk | {"workers.etc"}


# A development machine's own directories; built from parts so this file does not match itself.
DEV_PATH = re.compile("/" + "work/|/" + r"home/[a-z]|/" + "Users/|/" + "root/")


def path_literals(path) -> list[tuple[int, str]]:
    """(line, text) of what the code uses: string literals of Python files other than docstrings
    (usage notes such as a shared lock file are documentation), non-comment lines of the rest."""
    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return [(n, line) for n, line in enumerate(text.splitlines(), 1) if not line.lstrip().startswith(("#", ";"))]
    docstrings = {node.value.lineno for node in ast.walk(ast.parse(text))
                  if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                  and isinstance(node.value.value, str)}
    return [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
            if tok.type == tokenize.STRING and tok.start[0] not in docstrings]


def test_no_development_machine_paths():
    """Code, tests and benches find files relative to the repo, the package or the settings."""
    tracked = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    offenders = []
    for rel in tracked:
        path = PROJECT_ROOT / rel
        if path.suffix not in (".py", ".sh", ".toml", ".ini", ".j2", ".php", "") or not path.is_file():
            continue
        offenders += [f"{rel}:{n}: {text.strip()}" for n, text in path_literals(path) if DEV_PATH.search(text)]
    assert offenders == []
