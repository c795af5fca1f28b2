"""FaceProcessJob against a real face API (gunicorn) and real MariaDB/SQLite; RootIndex matching."""
from __future__ import annotations

import http.server
import json
import shutil
import threading

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from tests.support.face_api import FACES, free_port, start_face_api
from workers import db
from workers.faces import filing
from workers.jobs import Context, JobFailed
from workers.jobs import faces as job
from workers.faces import client
from workers.commands import faces as faces_commands
from workers.faces.index import RootIndex
from workers.schema import faces, images
from workers.settings import Settings

PEOPLE = sorted(p.name for p in (FACES / "people").iterdir())


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """A storage root: a copy of testdata/faces plus a photo without faces and broken files."""
    root = tmp_path_factory.mktemp("storage")
    shutil.copytree(FACES, root / "faces")
    (root / "faces").chmod(0o755)
    gradient = np.tile(np.linspace(0, 255, 800, dtype=np.uint8), (600, 1))
    Image.fromarray(np.stack([gradient, gradient[::-1], gradient // 2], axis=-1)).save(root / "noface.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 50)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    return root


@pytest.fixture(scope="module")
def face_api(tmp_path_factory, storage):
    # the original's HOG recipe (the parity mode): the boxes below are the original's
    url, stop = start_face_api(tmp_path_factory.mktemp("face_api"), [storage], workers=2,
                               env={"PHOTO_FACE_DETECTOR": "hog"})
    yield url
    stop()


def settings_for(url, storage, api="http://127.0.0.1:9", **kw) -> Settings:
    kw = {"face_api_retries": 1, "face_api_timeout": 120, **kw}
    return Settings(database_url=url, storage_root=storage, face_api_url=api, **kw)


def add_image(settings, path: str) -> int:
    with db.engine_for(settings.database_url).begin() as conn:
        return conn.execute(images.insert().values(path=path)).inserted_primary_key[0]


def run_job(settings, image_id):
    engine = db.engine_for(settings.database_url)
    with engine.begin() as conn:
        return job.handle(Context(settings=settings, db=conn, engine=engine, queue="faces"),
                          {"image_id": image_id})


def face_rows(settings, image_id=None):
    q = sa.select(faces).order_by(faces.c.id)
    if image_id is not None:
        q = q.where(faces.c.image_id == image_id)
    with db.engine_for(settings.database_url).connect() as conn:
        return conn.execute(q).all()


def approve(settings, face_id):
    """What the Laravel review screen does: status ok, no parent, updated_at bumped."""
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(faces.update().where(faces.c.id == face_id)
                     .values(status="ok", parent_id=None, distance=None, updated_at=db.now()))


def set_status(settings, face_id, status):
    with db.engine_for(settings.database_url).begin() as conn:
        conn.execute(faces.update().where(faces.c.id == face_id).values(status=status, updated_at=db.now()))


def person_photos():
    return {name: sorted(f"faces/people/{name}/{p.name}" for p in (FACES / "people" / name).iterdir())
            for name in PEOPLE}


# ---------------------------------------------------------------- grouping end to end

@pytest.mark.parametrize("rule", ["people", "roots"])
def test_people_grouped_under_approved_roots(mysql_url, storage, face_api, rule):
    s = settings_for(mysql_url, storage, face_api, face_grouping=rule)
    photos = person_photos()
    ids = {path: add_image(s, path) for paths in photos.values() for path in paths}
    for image_id in ids.values():                       # nothing approved yet: no parents
        assert run_job(s, image_id) == []
    rows = face_rows(s)
    assert len(rows) == len(ids) and all(r.status == "unknown" and r.parent_id is None for r in rows)
    assert all(len(r.encoding) == 128 and len(r.location) == 4 for r in rows)

    # A reviewer approves the first photo of each person; rematch groups the others.
    roots = {}
    for name, paths in photos.items():
        (face,) = face_rows(s, ids[paths[0]])
        approve(s, face.id)
        roots[name] = face.id
    assert filing.rematch(db.engine_for(mysql_url), s)["matched"] == len(ids) - len(PEOPLE)
    expected = {ids[p]: roots[name] for name, paths in photos.items() for p in paths[1:]}

    def check():
        for r in face_rows(s):
            if r.id in roots.values():
                assert r.status == "ok" and r.parent_id is None
            else:
                assert r.parent_id == expected[r.image_id], r.image_id
                assert 0 < r.distance < 0.6
    check()
    assert filing.rematch(db.engine_for(mysql_url), s)["matched"] == 0   # idempotent

    # Processing after the approval (a new upload, a redelivery) groups through the job itself,
    # and reprocessing a root's photo keeps the approved face without adding a duplicate.
    before = {r.id: r for r in face_rows(s)}
    for image_id in ids.values():
        run_job(s, image_id)
    check()
    after = face_rows(s)
    assert len(after) == len(before)
    for root in roots.values():
        assert [r for r in after if r.id == root] == [before[root]]

    st = faces_commands.stats(db.engine_for(mysql_url).connect())
    assert st["roots"] == len(PEOPLE) and st["grouped"] == len(ids) - len(PEOPLE)
    assert st["photos_with_faces"] == len(ids) and st["per_status"]["ok"] == len(PEOPLE)


def test_workers_rematch_by_themselves_after_approvals(any_db_url, storage):
    """No `faces rematch`: the next face job after an approval files the older faces."""
    s = settings_for(any_db_url, storage, face_engine="inprocess")
    ids = [add_image(s, p) for p in ("faces/obama.jpg", "faces/obama2.jpg", "faces/obama3.jpg")]
    for image_id in ids:
        run_job(s, image_id)
    (root,) = face_rows(s, ids[0])
    approve(s, root.id)
    run_job(s, add_image(s, "faces/biden.jpg"))          # any face job, on another photo
    assert [face_rows(s, i)[0].parent_id for i in ids[1:]] == [root.id, root.id]


def test_unrelated_faces_get_no_parent(mysql_url, storage, face_api):
    s = settings_for(mysql_url, storage, face_api)
    root_img = add_image(s, "faces/people/obama/obama.jpg")
    run_job(s, root_img)
    approve(s, face_rows(s, root_img)[0].id)
    for path in ("faces/people/biden/biden.jpg", "faces/people/rose_leslie/img1.jpg",
                 "faces/people/kit_harington/john1.jpeg", "faces/alex-lacamoire.png"):
        image_id = add_image(s, path)
        run_job(s, image_id)
        (row,) = face_rows(s, image_id)
        assert row.parent_id is None and row.distance is None and row.status == "unknown"


def test_reprocess_keeps_reviewed_faces(mysql_url, storage, face_api):
    s = settings_for(mysql_url, storage, face_api)
    image_id = add_image(s, "faces/two_people.jpg")
    run_job(s, image_id)
    first = face_rows(s, image_id)
    assert len(first) == 2 and sorted(r.face_index for r in first) == [0, 1]
    ok, other = first
    approve(s, ok.id)
    (approved,) = [r for r in face_rows(s, image_id) if r.id == ok.id]

    run_job(s, image_id)                     # reviewed face kept as is; the unknown one replaced
    second = face_rows(s, image_id)
    assert len(second) == 2
    assert [r for r in second if r.id == ok.id] == [approved]
    (new,) = [r for r in second if r.id != ok.id]
    assert new.id != other.id and new.status == "unknown" and new.location == other.location
    assert new.face_index == other.face_index
    assert np.allclose(new.encoding, other.encoding, atol=1e-9)

    set_status(s, new.id, "not_face")
    snapshot = face_rows(s, image_id)
    run_job(s, image_id)                     # both reviewed now: nothing changes at all
    assert face_rows(s, image_id) == snapshot
    with db.engine_for(mysql_url).connect() as conn:
        assert conn.execute(sa.select(images.c.faces_count).where(images.c.id == image_id)).scalar() == 1


def test_reviewed_face_elsewhere_does_not_block_detections(mysql_url, storage, face_api):
    """A manually drawn ok face that overlaps no detection stays, and detections are stored."""
    s = settings_for(mysql_url, storage, face_api)
    image_id = add_image(s, "faces/obama.jpg")
    with db.engine_for(mysql_url).begin() as conn:
        conn.execute(faces.insert().values(image_id=image_id, face_index=0, status="ok",
                                           location=[0, 100, 100, 0], encoding=None))
    run_job(s, image_id)
    rows = face_rows(s, image_id)
    assert [r.status for r in rows] == ["ok", "unknown"]
    assert rows[1].location == [142, 617, 409, 349] and rows[1].face_index == 1


def test_children_of_replaced_faces_are_unlinked(any_db_url, storage, face_api):
    s = settings_for(any_db_url, storage, face_api)
    a = add_image(s, "faces/obama.jpg")
    b = add_image(s, "faces/obama2.jpg")
    run_job(s, a)
    run_job(s, b)
    (fa,), (fb,) = face_rows(s, a), face_rows(s, b)
    with db.engine_for(any_db_url).begin() as conn:   # an odd state: a child of an unknown face
        conn.execute(faces.update().where(faces.c.id == fb.id).values(parent_id=fa.id, distance=0.3))
    run_job(s, a)
    (child,) = face_rows(s, b)
    assert child.parent_id is None and child.distance is None


def test_photo_without_faces(any_db_url, storage, face_api):
    s = settings_for(any_db_url, storage, face_api)
    image_id = add_image(s, "noface.jpg")
    run_job(s, image_id)
    assert face_rows(s, image_id) == []
    with db.engine_for(any_db_url).connect() as conn:
        row = conn.execute(sa.select(images).where(images.c.id == image_id)).one()
    assert row.faces_count == 0 and row.faces_at is not None


@pytest.mark.parametrize("send", ["path", "bytes"])
@pytest.mark.parametrize("path", ["broken.jpg", "empty.jpg", "text.jpg", "missing.jpg"])
def test_bad_photo_fails_permanently(mysql_url, storage, face_api, send, path):
    s = settings_for(mysql_url, storage, face_api, face_api_send=send)
    image_id = add_image(s, path)
    with pytest.raises(JobFailed) as info:
        run_job(s, image_id)
    assert str(info.value) and "\n" not in str(info.value)
    assert face_rows(s) == []


def test_bad_job_data(mysql_url, storage, face_api):
    s = settings_for(mysql_url, storage, face_api)
    with pytest.raises(JobFailed, match="does not exist"):
        run_job(s, 12345)
    escaping = add_image(s, "../../etc/passwd")
    with pytest.raises(JobFailed, match="escapes"):
        run_job(s, escaping)


def test_face_api_down_is_retryable(mysql_url, storage):
    s = settings_for(mysql_url, storage, f"http://127.0.0.1:{free_port()}")
    image_id = add_image(s, "faces/obama.jpg")
    with pytest.raises(client.FaceApiError) as info:
        run_job(s, image_id)
    assert not isinstance(info.value, JobFailed)


def test_face_api_5xx_retried_then_retryable(mysql_url, storage):
    hits = []

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({"detail": "models are not loaded yet"}).encode()
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = settings_for(mysql_url, storage, f"http://127.0.0.1:{server.server_port}", face_api_retries=2)
        image_id = add_image(s, "faces/obama.jpg")
        with pytest.raises(client.FaceApiError, match="503.*not loaded"):
            run_job(s, image_id)
        assert hits == ["/encode"] * 3
    finally:
        server.shutdown()
        server.server_close()


def test_bytes_and_path_modes_agree(mysql_url, storage, face_api):
    out = {}
    for send in ("path", "bytes"):
        s = settings_for(mysql_url, storage, face_api, face_api_send=send)
        image_id = add_image(s, "faces/two_people.jpg")
        run_job(s, image_id)
        out[send] = [(r.encoding, r.location) for r in face_rows(s, image_id)]
    assert len(out["path"]) == 2 and out["path"] == out["bytes"]


@pytest.fixture
def inprocess_hog(monkeypatch):
    """The in-process engine on the recipe this module's face API runs (PHOTO_FACE_DETECTOR=hog)."""
    from face_api.settings import get_settings
    monkeypatch.setenv("PHOTO_FACE_DETECTOR", "hog")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_inprocess_engine_matches_api(any_db_url, storage, face_api, inprocess_hog):
    out = {}
    for engine in ("http", "inprocess"):
        s = settings_for(any_db_url, storage, face_api, face_engine=engine)
        image_id = add_image(s, "faces/two_people.jpg")
        run_job(s, image_id)
        out[engine] = face_rows(s, image_id)
    assert len(out["http"]) == len(out["inprocess"]) == 2
    for a, b in zip(out["http"], out["inprocess"]):
        assert a.location == b.location
        assert np.max(np.abs(np.array(a.encoding) - np.array(b.encoding))) < 1e-6
        # dlib descriptors are float32 values: the float32 matrix holds them exactly
        assert np.array_equal(np.float32(a.encoding).astype(np.float64), np.array(a.encoding))


def test_inprocess_bad_photo(mysql_url, storage):
    s = settings_for(mysql_url, storage, face_engine="inprocess")
    with pytest.raises(JobFailed, match="bad photo"):
        run_job(s, add_image(s, "broken.jpg"))
    with pytest.raises(JobFailed, match="cannot read"):
        run_job(s, add_image(s, "missing.jpg"))


def test_cli_stats_and_rematch(mysql_url, capsys):
    from workers.commands.cli import main
    assert main(["faces", "stats", "--db", mysql_url]) == 0
    assert "roots" in capsys.readouterr().out
    assert main(["faces", "rematch", "--db", mysql_url]) == 0
    assert "faces given a parent: 0" in capsys.readouterr().out


# ---------------------------------------------------------------- RootIndex

def unit(i, scale=1.0):
    v = np.zeros(128)
    v[i] = scale
    return v


def insert_face(conn, image_id, enc, status="ok", parent=None):
    now = db.now()
    return conn.execute(faces.insert().values(
        image_id=image_id, face_index=0, encoding=list(map(float, enc)), status=status,
        parent_id=parent, created_at=now, updated_at=now)).inserted_primary_key[0]


@pytest.fixture
def dbconn(any_db_url):
    engine = db.engine_for(any_db_url)
    with engine.begin() as conn:
        image_id = conn.execute(images.insert().values(path="x.jpg")).inserted_primary_key[0]
    return engine, image_id


def test_nearest_root_wins_over_first_under_threshold(dbconn):
    engine, image_id = dbconn
    with engine.begin() as conn:
        far = insert_face(conn, image_id, unit(0, 0.5))       # inserted first, distance 0.5
        near = insert_face(conn, image_id, unit(1, 0.25))     # distance 0.25
        insert_face(conn, image_id, unit(2, 0.0625), status="unknown")   # not a root
        index = RootIndex()
        index.refresh(conn)
    (m,) = index.nearest([np.zeros(128)], 0.6)
    assert m.face_id == near and m.distance == 0.25
    (m,) = index.nearest([unit(0, 0.5)], 0.6)
    assert m.face_id == far and m.distance == 0.0


def test_threshold_is_strict(dbconn):
    engine, image_id = dbconn
    with engine.begin() as conn:
        root = insert_face(conn, image_id, unit(0, 0.5))
        index = RootIndex()
        index.refresh(conn)
    assert index.nearest([np.zeros(128)], 0.5) == [None]                 # distance == threshold
    assert index.nearest([np.zeros(128)], 0.5 + 1e-12)[0].face_id == root
    assert index.nearest([unit(0, 0.5 - 2 ** -20)], 2 ** -20) == [None]
    assert index.nearest([], 0.6) == []


def test_ties_and_many_queries(dbconn):
    engine, image_id = dbconn
    rng = np.random.default_rng(1)
    roots = rng.normal(0, 0.12, (3000, 128)).astype(np.float32).astype(np.float64)
    with engine.begin() as conn:
        a = insert_face(conn, image_id, unit(0, 0.25))
        insert_face(conn, image_id, unit(1, 0.25))            # same distance to 0: lower id wins
        ids = [insert_face(conn, image_id, r) for r in roots]
        index = RootIndex()
        index.refresh(conn)
    assert index.nearest([np.zeros(128)], 0.6)[0].face_id == a
    queries = roots[:50] + rng.normal(0, 0.02, (50, 128))
    got = index.nearest(queries, 0.6)
    for q, m, root_id in zip(queries, got, ids):
        exact = np.linalg.norm(roots - q, axis=1)
        assert m.face_id == ids[int(exact.argmin())] == root_id and m.distance == exact.min()


def test_incremental_refresh_sees_approved_and_rejected_roots(dbconn):
    engine, image_id = dbconn
    index = RootIndex()
    with engine.begin() as conn:
        first = insert_face(conn, image_id, unit(0, 0.25))
        candidate = insert_face(conn, image_id, unit(1, 0.125), status="unknown")
        assert index.refresh(conn) == "full"
        assert index.refresh(conn) == "unchanged"
    assert index.nearest([unit(1, 0.125)], 0.6)[0].face_id == first

    with engine.begin() as conn:     # a reviewer approves the unknown face: it becomes a root
        conn.execute(faces.update().where(faces.c.id == candidate).values(status="ok", updated_at=db.now()))
        assert index.refresh(conn) == "incremental"
    assert index.nearest([unit(1, 0.125)], 0.6)[0].face_id == candidate
    assert sorted(index.ids) == [first, candidate]

    with engine.begin() as conn:     # ... and rejects it again
        conn.execute(faces.update().where(faces.c.id == candidate).values(status="not_face", updated_at=db.now()))
        assert index.refresh(conn) == "incremental"
    assert index.nearest([unit(1, 0.125)], 0.6)[0].face_id == first

    with engine.begin() as conn:     # a root demoted under another (merge) and a new root, no timestamps
        new = insert_face(conn, image_id, unit(2, 0.25))
        conn.execute(faces.update().where(faces.c.id == first).values(parent_id=new))
        assert index.refresh(conn) == "incremental"
        assert list(index.ids) == [new]
        bad = insert_face(conn, image_id, [1.0] * 3)         # unusable encoding: counted, not matched
        assert index.refresh(conn) == "incremental"
        assert index.refresh(conn) == "unchanged"
        conn.execute(faces.delete().where(faces.c.id == bad))
        assert index.refresh(conn) == "incremental"
        assert index.refresh(conn) == "unchanged"
    assert len(index) == 1 and index.nearest([unit(2, 0.25)], 0.6)[0].face_id == new
    assert index.reloads["full"] == 1


def test_changes_that_cancel_out_are_seen_by_the_sweep(dbconn):
    engine, image_id = dbconn
    index = RootIndex()
    with engine.begin() as conn:
        a, b, c, d = (insert_face(conn, image_id, unit(i, 0.25), status=s)
                      for i, s in enumerate(["ok", "unknown", "unknown", "ok"]))
        top = insert_face(conn, image_id, unit(9, 0.25))
        assert index.refresh(conn) == "full"
        # same count, same id sum, same max id: the token cannot tell
        for face_id, status in ((a, "not_face"), (d, "not_face"), (b, "ok"), (c, "ok")):
            conn.execute(faces.update().where(faces.c.id == face_id).values(status=status, updated_at=db.now()))
        assert index.refresh(conn) == "unchanged"
        assert index.refresh(conn, force_sweep=True) == "incremental"   # what the 60 s sweep does
    assert sorted(index.ids) == [b, c, top]
    got = index.nearest([unit(i, 0.25) for i in (0, 1, 2, 3, 9)], 0.1)
    assert [m and m.face_id for m in got] == [None, b, c, None, top]


def test_parse_rows_bulk_and_fallbacks():
    from workers.faces.index import parse_rows
    good = np.random.default_rng(3).normal(0, 0.12, (3, 128))
    rows = [(1, json.dumps(good[0].tolist())), (2, good[1].tolist()),
            (3, json.dumps(json.dumps(good[2].tolist()))),           # double-encoded string
            (4, None), (5, "[1, 2]"), (6, "[" + ",".join(["NaN"] * 128) + "]"),
            (7, "[" + ",".join(["x"] * 128) + "]"), (8, b"[" + b",".join([b"0.5"] * 128) + b"]")]
    ids, mat, bad = parse_rows(rows)
    assert sorted(bad) == [4, 5, 6, 7]
    got = dict(zip(ids.tolist(), mat))
    assert sorted(got) == [1, 2, 3, 8]
    for i in range(3):
        assert np.array_equal(got[i + 1], good[i])      # bit-exact, like json.loads
    assert np.all(got[8] == 0.5)
