"""install.sh into a fresh virtualenv: the `photo-pipeline` command and the face API work from
another directory, with nothing from the checkout on sys.path, and the rendered programs run
that venv's console script.

install.sh creates the venv, installs the pinned lock (`pip install -r requirements.txt`), then
the package (`pip install --no-deps`, built from a copy of the checkout) and runs `pip check`.
pip's wheel cache and the configured find-links make a second run quick; the first needs the index
or a wheelhouse."""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import time

import httpx
import pytest

from tests.support.services import PROJECT_ROOT, free_port

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """(filesystem root, venv) after install.sh --root: a fresh venv and the rendered config."""
    base = tmp_path_factory.mktemp("clean")
    root, venv = base / "root", base / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOTO_", "PYTHON", "VIRTUAL_ENV"))}
    res = subprocess.run([str(PROJECT_ROOT / "install.sh"), "--prefix", str(root / "var/www/photo"),
                          "--root", str(root), "--venv", str(venv), "--no-apt", "--no-services",
                          "--user", pwd.getpwuid(os.getuid()).pw_name, "--group", grp.getgrgid(os.getgid()).gr_name],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"python3 -m venv {venv}" in res.stdout and "No broken requirements found" in res.stdout
    return root, venv


@pytest.fixture(scope="module")
def venv(box):
    """bin/ of the fresh venv."""
    return box[1] / "bin"


@pytest.fixture
def elsewhere(tmp_path):
    """An unrelated working directory and an environment without the checkout or PHOTO_*."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PHOTO_", "FACE_API_", "PYTHON", "VIRTUAL_ENV"))}
    return cwd, env


def run(venv, cwd, env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "photo-pipeline"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_modules_come_from_the_installed_package(venv, elsewhere):
    cwd, env = elsewhere
    code = "import workers, face_api, json; print(json.dumps([workers.__file__, face_api.__file__]))"
    out = subprocess.run([str(venv / "python"), "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout
    for path in json.loads(out):
        assert "site-packages" in path and not path.startswith(str(PROJECT_ROOT)), path


def test_rendered_programs_run_the_venvs_console_script(box, elsewhere):
    root, venv = box
    cwd, env = elsewhere
    cli = venv / "bin" / "photo-pipeline"
    unit = (root / "etc/systemd/system/face-api.service").read_text()
    assert f"ExecStart={cli} serve-face-api\n" in unit
    for queue in ("thumbnails", "metadata", "geolocation", "faces"):
        conf = (root / f"etc/supervisor/conf.d/photo-{queue}-worker.conf").read_text()
        assert f" {cli} consume --queue {queue}\n" in conf or f"={cli} consume --queue {queue}\n" in conf
        res = subprocess.run([str(cli), "consume", "--queue", queue, "--help"], cwd=cwd, env=env,
                             capture_output=True, text=True)
        assert res.returncode == 0 and "--queue" in res.stdout, res.stderr
    for text in [unit] + [p.read_text() for p in (root / "etc/supervisor/conf.d").iterdir()]:
        assert str(PROJECT_ROOT) not in text


def test_cli_has_the_same_commands_as_python_m_workers(venv, elsewhere):
    cwd, env = elsewhere
    res = run(venv, cwd, env, "--help")
    assert res.returncode == 0, res.stderr
    for command in ("migrate", "schema", "consume", "process", "monitor", "render-config", "inspect",
                    "faces", "serve-face-api"):
        assert command in res.stdout
    same = subprocess.run([str(venv / "python"), "-m", "workers", "--help"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert same.returncode == 0 and same.stdout == res.stdout


def test_render_config_reads_templates_from_the_package(venv, elsewhere):
    cwd, env = elsewhere
    res = run(venv, cwd, env, "render-config", "--out", "conf")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (cwd / "conf").iterdir()) == sorted(
        [f"photo-{q}-worker.conf" for q in ("thumbnails", "metadata", "geolocation", "faces")] + ["face-api.service"])


def test_embedded_mode_from_another_directory(venv, elsewhere, shared_testdata):
    cwd, env = elsewhere
    photos = cwd.parent / "Pictures"
    (photos / "trip").mkdir(parents=True)
    shutil.copy(shared_testdata / "faces" / "obama.jpg", photos / "obama.jpg")
    shutil.copy(shared_testdata / "exif" / "jpg" / "gps" / "DSCN0010.jpg", photos / "trip" / "DSCN0010.jpg")
    res = run(venv, cwd, env, "process", "../Pictures", "--workers", "1", "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "this run:\n  photos: 2 (2 processed, 0 already done)" in res.stdout
    assert "library totals (database sqlite:///" in res.stdout and "faces: 1" in res.stdout
    with sqlite3.connect(photos / ".photo-pipeline" / "photo.db") as conn:
        rows = dict(conn.execute("SELECT path, thumbnails FROM images").fetchall())
    assert sorted(rows) == ["obama.jpg", "trip/DSCN0010.jpg"]
    for thumbs in map(json.loads, rows.values()):
        for rel in thumbs.values():                       # relative to the photo folder, and there
            assert not rel.startswith("/") and (photos / rel).is_file(), rel
    assert not list(cwd.iterdir())                        # nothing written where it was run from

    missing = run(venv, cwd, env, "process", "no-such-folder")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "no-such-folder: no such folder" in missing.stderr


def test_face_api_from_another_directory(venv, elsewhere, shared_testdata):
    cwd, env = elsewhere
    storage = cwd.parent / "storage"
    storage.mkdir()
    shutil.copy(shared_testdata / "faces" / "obama.jpg", storage / "obama.jpg")
    port = free_port()
    env = {**env, "PHOTO_STORAGE_ROOT": str(storage), "PHOTO_FACE_API_TOKEN": "s3cret",
           "FACE_API_WORKERS": "1", "PHOTO_LOG_DIR": str(cwd.parent / "logs"),
           "PROMETHEUS_MULTIPROC_DIR": str(cwd.parent / "metrics")}
    output = open(cwd.parent / "serve.out", "wb")
    proc = subprocess.Popen([str(venv / "photo-pipeline"), "serve-face-api", "--bind", f"127.0.0.1:{port}"],
                            cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (cwd.parent / "serve.out").read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "face API did not become ready"
            time.sleep(0.3)
        health = httpx.get(url + "/health").json()
        assert "site-packages" in health["models"]["directory"]
        assert httpx.post(url + "/encode", json={"path": "obama.jpg"}, timeout=60).status_code == 401
        ok = httpx.post(url + "/encode", json={"path": "obama.jpg"}, timeout=120,
                        headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and len(ok.json()["encodings"]) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        output.close()
    assert proc.returncode == 0                           # gunicorn stopped cleanly on TERM
