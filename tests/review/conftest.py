"""The review page's fixtures: a library made by really processing photos of known people with
the embedded mode (once per session), copied into a fresh SQLite or MariaDB database per test;
the `photo-pipeline review` command serving it; Debian's chromium driven by Playwright."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.review import (CHROMIUM, CHROMIUM_ARGS, PEOPLE, PROJECT_ROOT, WIDE, Library, Server,
                                  copy_library)

@pytest.fixture(scope="session")
def processed_library(tmp_path_factory, shared_testdata) -> Path:
    """Photos of six people and one of two people, processed by `photo-pipeline process` (faces, thumbnails, groups)."""
    folder = tmp_path_factory.mktemp("review-library") / "photos"
    for person in PEOPLE:
        shutil.copytree(shared_testdata / "people" / person, folder / person)
    (folder / "Friends").mkdir()
    shutil.copy(shared_testdata / "faces" / "two_people.jpg", folder / "Friends" / "two_people.jpg")
    # the tests' counts (faces per suggested person) are those of a library HOG processed
    env = {**os.environ, "PHOTO_FACE_DETECTOR": "hog"}
    run = subprocess.run([sys.executable, "-m", "workers", "process", str(folder), "--workers", "2",
                          "--no-progress"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
                         env=env)
    assert run.returncode == 0, run.stderr
    return folder


@pytest.fixture
def library(processed_library, tmp_path, any_db_url) -> Library:
    return copy_library(processed_library, tmp_path / "photos", any_db_url)


@pytest.fixture
def server(library):
    srv = Server(str(library.folder), "--db", library.url, "--no-rematch")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed (make test installs it)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=WIDE)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Screenshots go under the test run's temporary directory (and to PHOTO_REVIEW_SHOTS if set)."""
    return tmp_path_factory.mktemp("review-shots")
