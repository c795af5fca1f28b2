"""Who may use the review page and what a request can reach: the refusal off loopback, the
token (Bearer, and the printed address exchanged for a cookie), CSRF, crafted ids and paths."""
from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.review import PROJECT_ROOT, Server, copy_library, review_env
from workers.schema import images

TOKEN = "s3cret-review-token-0123456789"


@pytest.fixture
def lib(processed_library, tmp_path, sqlite_url):
    return copy_library(processed_library, tmp_path / "photos", sqlite_url)


def review(*args, env=None):
    return subprocess.run([sys.executable, "-m", "workers", "review", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, env=env or review_env())


def test_refuses_other_addresses_without_a_token(lib):
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        run = review(str(lib.folder), "--db", lib.url, "--host", host, "--port", "0")
        assert run.returncode == 2 and run.stdout == ""
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("photo-pipeline review: refusing to start: ")
        assert "PHOTO_REVIEW_TOKEN" in lines[0]
    short = review(str(lib.folder), "--db", lib.url, "--host", "0.0.0.0",
                   env=review_env(PHOTO_REVIEW_TOKEN="short"))
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    empty = review(str(lib.folder.parent / "nowhere"))
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1
    not_processed = lib.folder.parent / "fresh"
    not_processed.mkdir()
    run = review(str(not_processed))
    assert run.returncode == 2 and "run `photo-pipeline process" in run.stderr


def test_token_by_bearer_and_by_the_printed_address(lib, browser):
    srv = Server(str(lib.folder), "--db", lib.url, "--no-rematch", env=review_env(PHOTO_REVIEW_TOKEN=TOKEN))
    try:
        assert srv.url == srv.base + f"?token={TOKEN}"
        assert httpx.get(srv.base).status_code == 401
        assert httpx.get(srv.base + "crop/160/1").status_code == 401
        assert httpx.get(srv.base, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        ok = httpx.get(srv.base + "people", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and TOKEN not in ok.text and lib.url not in ok.text
        assert "sqlite" not in ok.text and "Set-Cookie" not in ok.headers
        # a script changes rows with the header alone (a browser never sends it by itself)
        scripted = httpx.post(srv.base + "actions/not-a-face", data={"face": "1", "state-1": lib_state(lib, 1)},
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert scripted.status_code == 200 and lib.face(1).status == "not_face"

        context = browser.new_context()
        page = context.new_page()
        page.goto(srv.url)
        assert page.url == srv.base                       # the token left the address
        assert page.locator("h1").first.inner_text().startswith("Suggested people")
        assert TOKEN not in page.content()
        cookie, = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        page.goto(srv.base + "unknown")                   # the cookie carries on
        assert page.locator("h1").inner_text().startswith("Unknown faces")
        context.close()
        stranger = browser.new_context()
        tab = stranger.new_page()
        assert tab.goto(srv.base).status == 401
        assert tab.goto(srv.base + "?token=not-the-token-0123456789").status == 401
        stranger.close()
    finally:
        srv.stop()


def lib_state(lib, face_id: int) -> str:
    row = lib.face(face_id)
    return f"{row.status}:{row.parent_id or 0}:{row.suggested_group or 0}"


def test_csrf_and_host_are_checked(lib):
    srv = Server(str(lib.folder), "--db", lib.url, "--no-rematch")
    try:
        with httpx.Client(base_url=srv.base) as client:
            page = client.get("/unknown")
            assert page.status_code == 200 and "photo_review_session" in page.headers["set-cookie"]
            face = 54 if lib.face(54).status == "unknown" else None
            face = face or int(page.text.split('name="face" value="')[1].split('"')[0])
            state = lib_state(lib, face)
            form = {"face": str(face), f"state-{face}": state, "next": "/unknown"}
            for csrf in (None, "", "0" * 64):
                data = dict(form, **({"csrf": csrf} if csrf is not None else {}))
                r = client.post("/actions/not-a-face", data=data)
                assert r.status_code == 403 and "Nothing was changed" in r.text
            assert lib.face(face).status == "unknown"
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            other = client.post("/actions/not-a-face", data=dict(form, csrf=csrf),
                                headers={"Origin": "http://evil.example"})
            assert other.status_code == 403 and lib.face(face).status == "unknown"
            # a browser of another session has another CSRF value
            assert httpx.post(srv.base + "actions/not-a-face", data=dict(form, csrf=csrf)).status_code == 403
            done = client.post("/actions/not-a-face", data=dict(form, csrf=csrf))
            assert done.status_code == 303 and done.headers["location"] == "/unknown"
            assert lib.face(face).status == "not_face"
            # the open redirect: only paths of this site
            again = client.post("/actions/not-a-face", data=dict(form, csrf=csrf, next="//evil.example/x"))
            assert again.headers["location"] == "/"
            # a page reached under another name (DNS rebinding) is refused
            assert client.get("/", headers={"Host": "evil.example"}).status_code == 421
            assert client.get("/", headers={"Host": "localhost:" + srv.base.rsplit(":", 1)[1].strip("/")}).status_code == 200
    finally:
        srv.stop()


def test_crafted_ids_and_paths_get_404(lib):
    good, bad = (f for f in lib.faces_of("Colin_Powell")[:2])
    escaping = lib.face(bad).image_id
    with lib.engine.begin() as conn:   # a row whose path leaves the storage root
        conn.execute(images.update().where(images.c.id == escaping).values(path="../../../../etc/passwd"))
    srv = Server(str(lib.folder), "--db", lib.url, "--no-rematch")
    try:
        with httpx.Client(base_url=srv.base) as client:
            assert client.get(f"/crop/160/{good}").status_code == 200
            for path in ("/crop/160/999999", f"/crop/161/{good}", "/crop/160/abc", f"/crop/160/-{good}",
                         f"/crop/160/{good}.0", "/crop/160/99999999999999999999", "/crop/160/..%2F..%2Fetc%2Fpasswd",
                         f"/crop/160/{bad}", f"/view/{escaping}", "/view/999999", "/photos/999999", "/photos/1e3",
                         "/people/0", "/people/abc", "/people/999999", "/suggested/999999",
                         "/static/..%2Fapp.py", "/static/review.css%00", "/static/app.py",
                         "/etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
                r = client.get(path)
                assert r.status_code == 404, (path, r.status_code)
                assert "root:" not in r.text
            assert client.post("/actions/nothing", data={}).status_code in (403, 404)
            css = client.get("/static/review.css")
            assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
            home = client.get("/")
            assert "default-src 'none'" in home.headers["content-security-policy"]
            assert "<script" not in home.text
    finally:
        srv.stop()


def test_html_in_a_name_is_text(lib):
    with lib.engine.begin() as conn:
        from workers.schema import faces
        conn.execute(faces.update().where(faces.c.id == 2).values(status="ok", parent_id=None, suggested_group=None,
                                                                   name='<img src=x onerror="alert(1)">&amp;'))
    srv = Server(str(lib.folder), "--db", lib.url, "--no-rematch")
    try:
        for path in ("/", "/people", "/people/2", "/photos/" + str(lib.face(2).image_id), "/unknown"):
            text = httpx.get(srv.base + path.lstrip("/")).text
            assert '<img src=x' not in text and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;amp;" in text, path
    finally:
        srv.stop()


def test_queue_mode_reads_photos_under_the_storage_root(lib, tmp_path):
    """`review --db URL`: the photos are where PHOTO_STORAGE_ROOT says, crops cached beside the
    thumbnails there; a missing storage root or an unmigrated database is one line, exit 2."""
    env = review_env(PHOTO_STORAGE_ROOT=str(lib.folder), PHOTO_THUMBNAIL_ROOT=str(tmp_path / "thumbs"))
    srv = Server("--db", lib.url, env=env)
    try:
        face = lib.faces_of("Colin_Powell")[0]
        assert httpx.get(srv.base).status_code == 200
        assert httpx.get(srv.base + f"crop/96/{face}").headers["content-type"] == "image/jpeg"
        assert len(list((tmp_path / "thumbs" / "faces" / "96").glob("*.jpg"))) == 1
    finally:
        srv.stop()
    gone = review("--db", lib.url, env=review_env(PHOTO_STORAGE_ROOT=str(tmp_path / "nowhere")))
    assert gone.returncode == 2 and "PHOTO_STORAGE_ROOT" in gone.stderr and len(gone.stderr.splitlines()) == 1
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    run = review("--db", bare, env=review_env(PHOTO_STORAGE_ROOT=str(lib.folder)))
    assert run.returncode == 2 and "photo-pipeline migrate" in run.stderr and len(run.stderr.splitlines()) == 1
