import shutil
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.face_api import FACES, TESTDATA, start_face_api  # noqa: E402


@pytest.fixture(scope="module")
def original_recipe():
    """PHOTO_FACE_DETECTOR=hog for a module that checks the original's HOG recipe (the parity
    mode); YuNet is the default. Use as `pytestmark = pytest.mark.usefixtures("original_recipe")`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOTO_FACE_DETECTOR", "hog")
        yield


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not TESTDATA.is_dir():
        pytest.skip(f"{TESTDATA} missing")
    return TESTDATA


@pytest.fixture(scope="session")
def storage_roots(tmp_path_factory, testdata):
    """Two storage roots: root1 has faces/ (copied) plus an escaping symlink; root2 a symlink
    into root1 (allowed, stays inside the roots). `outside/` holds a secret file."""
    base = tmp_path_factory.mktemp("storage")
    root1, root2, outside = base / "root1", base / "root2", base / "outside"
    for d in (root1, root2, outside):
        d.mkdir()
    shutil.copytree(FACES, root1 / "faces")
    shutil.copy(FACES / "obama.jpg", outside / "secret.jpg")
    (root1 / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root1 / "escape_dir").symlink_to(outside)
    shutil.copy(FACES / "obama2.jpg", root2 / "second.jpg")
    return root1, root2, outside


@pytest.fixture(scope="session")
def face_api_service(tmp_path_factory, storage_roots):
    """(url, master_pid, tmpdir) of a real gunicorn face API with 2 workers, running the
    original's HOG recipe (PHOTO_FACE_DETECTOR=hog, the parity mode): its answers are checked
    against the original's."""
    tmp = tmp_path_factory.mktemp("face_api")
    url, stop = start_face_api(
        tmp, storage_roots[:2], workers=2,
        env={"PHOTO_MAX_UPLOAD_BYTES": str(5 * 1024 * 1024), "PHOTO_MAX_PIXELS": str(40_000_000),
             "PHOTO_FACE_DETECTOR": "hog"},
    )
    yield url, stop.pid, tmp
    stop()


@pytest.fixture(scope="session")
def face_api_url(face_api_service) -> str:
    return face_api_service[0]
