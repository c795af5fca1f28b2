"""PHOTO_FACE_API_TOKEN over real HTTP: a gunicorn face API with the token set, and the faces job
sending it. (Without a token every other face API test runs unguarded.)"""
from __future__ import annotations

import secrets
import shutil

import httpx
import pytest
import sqlalchemy as sa

from tests.support.face_api import FACES, start_face_api
from workers import db
from workers.jobs import Context, JobFailed
from workers.jobs import faces as job
from workers.schema import faces, images
from workers.settings import Settings

TOKEN = "t0k-" + secrets.token_urlsafe(24)
ENCODING = [0.01 * i for i in range(128)]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """(url, storage root, log dir) of a face API that requires TOKEN."""
    storage = tmp_path_factory.mktemp("storage")
    shutil.copy(FACES / "obama.jpg", storage / "obama.jpg")
    tmp = tmp_path_factory.mktemp("face_api_token")
    url, stop = start_face_api(tmp, [storage], workers=1, env={"PHOTO_FACE_API_TOKEN": TOKEN})
    yield url, storage, tmp / "logs"
    stop()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_health_and_metrics_stay_open(guarded):
    url, _, _ = guarded
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    assert httpx.get(url + "/metrics", timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), bearer(TOKEN[:-1]), {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}])
def test_encode_and_compare_refuse_a_missing_or_wrong_token(guarded, headers):
    url, _, _ = guarded
    for path, body in (("/encode", {"path": "obama.jpg"}),
                       ("/compare", {"encoding": ENCODING, "known_encodings": [ENCODING]})):
        r = httpx.post(url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in r.text


def test_unlisted_routes_are_guarded_too(guarded):
    url, _, _ = guarded
    assert httpx.get(url + "/docs", timeout=10).status_code == 401
    assert httpx.get(url + "/openapi.json", timeout=10).status_code == 401


def test_the_right_token_is_served(guarded):
    url, _, _ = guarded
    r = httpx.post(url + "/encode", json={"path": "obama.jpg"}, headers=bearer(TOKEN), timeout=120)
    assert r.status_code == 200, r.text
    assert len(r.json()["encodings"]) == 1
    r = httpx.post(url + "/compare", json={"encoding": ENCODING, "known_encodings": [ENCODING]},
                   headers={"authorization": f"bearer {TOKEN}"}, timeout=30)   # the scheme is case-insensitive
    assert r.status_code == 200 and r.json() == {"distances": [0.0]}


def _run_faces_job(url: str, storage, db_url: str, **settings) -> tuple[int, Settings]:
    s = Settings(database_url=db_url, storage_root=storage, face_api_url=url, face_api_retries=0, **settings)
    engine = db.engine_for(s.database_url)
    with engine.begin() as conn:
        image_id = conn.execute(images.insert().values(path="obama.jpg")).inserted_primary_key[0]
    with engine.begin() as conn:
        job.handle(Context(settings=s, db=conn, engine=engine, queue="faces"), {"image_id": image_id})
    return image_id, s


@pytest.mark.parametrize("send", ["path", "bytes"])
def test_faces_job_sends_the_token(guarded, sqlite_url, send):
    url, storage, _ = guarded
    image_id, _ = _run_faces_job(url, storage, sqlite_url, face_api_token=TOKEN, face_api_send=send)
    with db.engine_for(sqlite_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(faces)
                            .where(faces.c.image_id == image_id)).scalar() == 1


def test_faces_job_without_the_token_fails_with_the_reason(guarded, sqlite_url):
    url, storage, _ = guarded
    with pytest.raises(JobFailed, match="401.*bearer token"):
        _run_faces_job(url, storage, sqlite_url)


def test_the_token_is_never_logged(guarded):
    url, _, logs = guarded
    httpx.post(url + "/encode", json={"path": "obama.jpg"}, headers=bearer(TOKEN), timeout=120)
    httpx.post(url + "/compare", json={}, headers=bearer("wrong-" + TOKEN), timeout=30)
    text = "".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
    assert "POST /encode" in text              # the access log is there, and it holds no token
    assert TOKEN not in text
    assert TOKEN not in repr(Settings(face_api_token=TOKEN))
