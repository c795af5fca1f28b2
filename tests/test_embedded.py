"""Embedded mode: `python -m workers process DIR` on SQLite, and `--enqueue` to RabbitMQ."""
import json
import shutil
import subprocess
import sys

import pika
import pytest
import sqlalchemy as sa

from workers import db, schema
from workers.laravel import decode_payload, queue_key

PROJECT_ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture
def photo_dir(tmp_path, shared_testdata):
    d = tmp_path / "photos"
    (d / "trip").mkdir(parents=True)
    shutil.copy(shared_testdata / "faces" / "obama.jpg", d / "obama.jpg")
    shutil.copy(shared_testdata / "exif" / "jpg" / "gps" / "DSCN0010.jpg", d / "trip" / "DSCN0010.jpg")
    shutil.copy(shared_testdata / "exif" / "jpg" / "orientation" / "portrait_6.jpg", d / "portrait_6.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "empty.png").write_bytes(b"")
    (d / "notes.txt").write_text("not a photo")        # ignored: not a photo suffix
    return d


def run_process(photo_dir, db_url, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "workers", "process", str(photo_dir), "--db", db_url,
                           "--workers", "2", "--no-progress", *extra],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_process_folder_then_resume(photo_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'lib.db'}"
    first = run_process(photo_dir, url)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "photos: 5 (5 processed, 0 already done)" in out
    assert "failures: " in out and "broken.jpg" in out and "empty.png" in out   # reported, not fatal
    assert "not photos (skipped): 1: notes.txt" in out
    eng = db.engine_for(url)
    with eng.connect() as c:
        rows = {r.path: r for r in c.execute(sa.select(schema.images))}
        faces = c.execute(sa.select(schema.faces)).all()
    assert set(rows) == {"obama.jpg", "trip/DSCN0010.jpg", "portrait_6.jpg", "broken.jpg", "empty.png"}
    gps = rows["trip/DSCN0010.jpg"]
    assert gps.latitude == pytest.approx(43.4674, abs=1e-3) and gps.place_source == "offline" and gps.city
    assert rows["obama.jpg"].faces_count == 1 and len([f for f in faces if f.image_id == rows["obama.jpg"].id]) == 1
    assert rows["portrait_6.jpg"].thumbnails and rows["portrait_6.jpg"].orientation == 6
    assert "faces: 1" in out and "places: 1 distinct" in out

    second = run_process(photo_dir, url)
    assert second.returncode == 0, second.stderr
    # Finished photos are skipped; only the bad files are tried again.
    assert "photos: 5 (2 processed, 3 already done)" in second.stdout
    with eng.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(schema.faces)).scalar() == len(faces)

    # A photo whose geolocation did not finish is not "already done": the next run geocodes it.
    with eng.begin() as c:
        c.execute(schema.images.update().where(schema.images.c.id == gps.id).values(geocoded_at=None))
    third = run_process(photo_dir, url)
    assert third.returncode == 0, third.stderr
    assert "photos: 5 (3 processed, 2 already done)" in third.stdout
    assert "geolocation 1" in third.stdout and "metadata 1," not in third.stdout
    with eng.connect() as c:
        again = c.execute(sa.select(schema.images).where(schema.images.c.id == gps.id)).one()
    assert again.geocoded_at is not None and again.city == gps.city


def test_enqueue_publishes_laravel_jobs_once(photo_dir, mysql_url, rabbitmq):
    env = {**__import__("os").environ, "PHOTO_AMQP_URL": rabbitmq.url}
    first = run_process(photo_dir, mysql_url, "--enqueue", env=env)
    assert first.returncode == 0, first.stderr
    assert "metadata published: 5" in first.stdout
    again = run_process(photo_dir, mysql_url, "--enqueue", env=env)
    assert "metadata already queued: 5" in again.stdout           # dedup rows stop a second backfill
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    ch = conn.channel()
    bodies = []
    while (msg := ch.basic_get("metadata", auto_ack=True))[0]:
        bodies.append(msg)
    conn.close()
    assert len(bodies) == 5
    keys = {queue_key("App\\Jobs\\MetadataProcessJob", decode_payload(b, p.headers).data) for _, p, b in bodies}
    with db.engine_for(mysql_url).connect() as c:
        stored = set(c.execute(sa.select(schema.queues.c.queue_key)).scalars())
    assert keys <= stored and len(stored) == 15
    _, props, body = bodies[0]
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert json.loads(body)["displayName"] == "App\\Jobs\\MetadataProcessJob"
