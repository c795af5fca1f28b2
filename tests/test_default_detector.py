"""YuNet is the default detector everywhere the face engine runs: the face API (/health), the
workers' in-process engine and `photo-pipeline process`; where yuface cannot be imported each of
them refuses to start with one line naming PHOTO_FACE_DETECTOR=hog, and hog still starts.

yuface is made unimportable for real: a sitecustomize on PYTHONPATH blocks its import in the
child process (nothing in the code under test is patched)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.support.face_api import start_face_api
from workers import db, schema

pytest.importorskip("yuface", reason="yuface has wheels for CPython 3.10/3.11 only")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")

BLOCK_YUFACE = '''import importlib.abc, sys
class _NoYuface(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "yuface" or name.startswith("yuface."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NoYuface())
'''


def _env(tmp_path: Path, block: bool, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PHOTO_FACE_DETECTOR"}
    paths = [str(PROJECT_ROOT)]
    if block:
        site = tmp_path / "no-yuface"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCK_YUFACE)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def _run(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def one_photo(tmp_path, shared_testdata):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(shared_testdata / "faces" / "two_people.jpg", d / "two_people.jpg")
    return d


def _engine_boxes(path: Path, detector: str) -> list[list[int]]:
    from face_api import engine
    from face_api.imaging import open_photo
    from face_api.settings import Settings
    s = Settings(face_detector=detector, debug_images=False)
    return engine.encode_image(open_photo(path.read_bytes(), s.max_pixels, draft=s.face_draft_decode), s).locations


# ------------------------------------------------------------------ the default is YuNet

def test_the_api_runs_yunet_by_default(tmp_path, shared_testdata, monkeypatch):
    monkeypatch.delenv("PHOTO_FACE_DETECTOR", raising=False)
    url, stop = start_face_api(tmp_path, [shared_testdata], workers=1)
    try:
        body = httpx.get(url + "/health", timeout=30).json()
    finally:
        stop()
    assert body["detector"] == "yunet" and body["detector_package"] == "yuface"


def test_the_workers_in_process_engine_runs_yunet_by_default(tmp_path, one_photo):
    code = ("import json, sys\nfrom pathlib import Path\nfrom workers.faces.client import detect\n"
            "from workers.settings import Settings\n"
            "found = detect(Settings(face_engine='inprocess'), Path(sys.argv[1]))\n"
            "print(json.dumps([box for _, box in found]))\n")
    photo = one_photo / "two_people.jpg"
    result = _run([sys.executable, "-c", code, str(photo)], _env(tmp_path, False), tmp_path)
    assert result.returncode == 0, result.stderr
    boxes = __import__("json").loads(result.stdout.strip().splitlines()[-1])
    yunet, hog = _engine_boxes(photo, "yunet"), _engine_boxes(photo, "hog")
    assert yunet != hog                      # the photo tells the two apart
    assert boxes == yunet


def test_process_runs_yunet_by_default(tmp_path, one_photo):
    url = f"sqlite:///{tmp_path / 'lib.db'}"
    result = _run([sys.executable, "-m", "workers", "process", str(one_photo), "--db", url,
                   "--workers", "1", "--no-progress"], _env(tmp_path, False), tmp_path)
    assert result.returncode == 0, result.stderr
    with db.engine_for(url).connect() as conn:
        stored = [list(r.location) if not isinstance(r.location, str) else __import__("json").loads(r.location)
                  for r in conn.execute(sa.select(schema.faces.c.location).order_by(schema.faces.c.face_index))]
    assert stored == _engine_boxes(one_photo / "two_people.jpg", "yunet")


# ------------------------------------------------------------------ without yuface

def _assert_refused(result: subprocess.CompletedProcess, program: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{program}: refusing to start: ")
    assert "PHOTO_FACE_DETECTOR=hog" in lines[0] and "yuface" in lines[0]


def test_without_yuface_the_api_refuses_to_start(tmp_path, shared_testdata):
    env = _env(tmp_path, True, PHOTO_STORAGE_ROOT=str(shared_testdata), FACE_API_BIND="127.0.0.1:1",
               PHOTO_LOG_DIR=str(tmp_path / "logs"), GUNICORN_CMD_ARGS="")
    result = _run([str(GUNICORN), "-c", str(PROJECT_ROOT / "face_api" / "gunicorn.conf.py"),
                   "face_api.app:app"], env, PROJECT_ROOT)
    _assert_refused(result, "face API")


def test_without_yuface_process_refuses_to_start_and_hog_runs(tmp_path, one_photo):
    url = f"sqlite:///{tmp_path / 'lib.db'}"
    args = [sys.executable, "-m", "workers", "process", str(one_photo), "--db", url, "--workers", "1",
            "--no-progress"]
    _assert_refused(_run(args, _env(tmp_path, True), tmp_path), "photo-pipeline process")
    with_hog = _run(args, _env(tmp_path, True, PHOTO_FACE_DETECTOR="hog"), tmp_path)
    assert with_hog.returncode == 0, with_hog.stderr
    with db.engine_for(url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.faces)).scalar() == 2


def test_without_yuface_an_in_process_consumer_refuses_to_start(tmp_path):
    env = _env(tmp_path, True, PHOTO_FACE_ENGINE="inprocess", PHOTO_STORAGE_ROOT=str(tmp_path),
               PHOTO_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F")
    result = _run([sys.executable, "-m", "workers", "consume", "--queue", "faces"], env, tmp_path)
    _assert_refused(result, "photo-pipeline consume")


def test_the_check_itself_sees_the_block(tmp_path):
    """The sitecustomize really makes yuface unimportable (and only yuface)."""
    code = "import importlib.util, dlib\ntry:\n    import yuface\nexcept ImportError:\n    print('blocked')\n"
    result = _run([sys.executable, "-c", code], _env(tmp_path, True), tmp_path)
    assert result.stdout.strip() == "blocked", result.stderr
