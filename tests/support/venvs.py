"""Throwaway virtualenvs that already hold the pinned lock, for tests that install the package.

A fresh venv (no pip, no packages: a fraction of a second) gets one `.pth` line naming a directory
of symlinks to the running interpreter's site-packages, i.e. the project's venv, minus the test
oracle of requirements-nodeps.txt (it requires `dlib`, which dlib-bin provides without the name,
so `pip check` would fail on it; a box never has it). Every pinned dependency is then present and
`pip install --no-deps <checkout>` puts the package into the new venv alone.
tests/deploy/test_package.py builds a really fresh venv from the index with install.sh instead.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from tests.support.services import PROJECT_ROOT


def _oracle_entries() -> set[str]:
    """Top-level site-packages entries of the requirements-nodeps.txt distributions."""
    names = set()
    for line in (PROJECT_ROOT / "requirements-nodeps.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            dist = metadata.distribution(Requirement(line).name)
        except metadata.PackageNotFoundError:
            continue
        names |= {Path(f).parts[0] for f in dist.files or ()}
    return names


def locked_venv(path: Path) -> Path:
    """A new venv at `path` that sees the lock's packages; returns `path`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    shared = Path(sysconfig.get_path("purelib"))
    view = path / "lock-site-packages"
    view.mkdir()
    skip = _oracle_entries()
    for entry in shared.iterdir():
        if entry.name not in skip and entry.name != "__pycache__":
            (view / entry.name).symlink_to(entry)
    own = subprocess.run([str(path / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    (Path(own) / "project-lock.pth").write_text(f"{view}\n")
    return path


def install_checkout(venv: Path) -> None:
    """`pip install --no-deps` of this checkout, built from a copy as install.sh does (an in-tree
    build leaves build/ behind, whose stale modules would reach the next wheel). The build backend
    comes from pip's index or find-links, as on the box."""
    build = venv / "build-src"
    build.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, build / name)
    for package in ("workers", "face_api", "etc"):
        shutil.copytree(PROJECT_ROOT / package, build / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", str(build)],
                   check=True, capture_output=True, timeout=300)
