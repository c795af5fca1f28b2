"""Embedded mode: `python -m workers process DIR` on SQLite, and `--enqueue` to RabbitMQ."""
import json
import os
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


def blocks(out: str) -> tuple[str, str]:
    """(this run's block, the library totals block) of the summary."""
    run, _, totals = out.partition("library totals")
    assert run.startswith("this run:"), out
    return run, totals


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
    run, totals = blocks(out)
    assert "faces: 1" in totals and "places: 1 distinct" in totals and "photos: 5\n" in totals
    # Thumbnails are stored relative to the storage root (the folder), as in the queue mode, and the
    # library inside the folder is never taken for photos.
    for thumbs in (json.loads(r.thumbnails) if isinstance(r.thumbnails, str) else r.thumbnails
                   for r in rows.values() if r.thumbnails):
        for rel in thumbs.values():
            assert rel.startswith(".photo-pipeline/thumbnails/") and (photo_dir / rel).is_file(), rel

    second = run_process(photo_dir, url)
    assert second.returncode == 0, second.stderr
    # Finished photos are skipped; only the bad files are tried again.
    assert "photos: 5 (2 processed, 3 already done)" in blocks(second.stdout)[0]
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


def test_this_run_is_kept_apart_from_the_database_totals(photo_dir, tmp_path, shared_testdata):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert run_process(photo_dir, url).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(shared_testdata / "faces" / "obama2.jpg", other / "IMG_1.jpg")
    res = run_process(other, url)
    assert res.returncode == 0, res.stderr
    run, totals = blocks(res.stdout)
    assert "photos: 1 (1 processed, 0 already done)" in run and "failures: 0" in run
    assert f"(database {url})" in totals and "photos: 6\n" in totals and "faces: 2" in totals


def test_default_library_lives_in_the_folder(photo_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PHOTO_DATABASE_URL"}
    res = subprocess.run([sys.executable, "-m", "workers", "process", "photos", "--no-progress"], cwd=photo_dir.parent,
                         env={**env, "PYTHONPATH": str(PROJECT_ROOT)}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (photo_dir / ".photo-pipeline" / "photo.db").is_file()
    assert f"(database sqlite:///{photo_dir / '.photo-pipeline' / 'photo.db'})" in res.stdout
    assert sorted(p.name for p in photo_dir.parent.iterdir()) == ["photos"]   # nothing in the cwd


def test_configured_settings_win_over_the_folder_defaults(tmp_path, monkeypatch):
    from workers.commands.process import embedded_settings
    monkeypatch.chdir(tmp_path)
    for name in ("PHOTO_DATABASE_URL", "PHOTO_THUMBNAIL_ROOT", "PHOTO_GEOCODER"):
        monkeypatch.delenv(name, raising=False)
    folder = embedded_settings(tmp_path, None)
    assert folder.database_url == f"sqlite:///{tmp_path / '.photo-pipeline' / 'photo.db'}"
    assert folder.thumbnails_dir == tmp_path / ".photo-pipeline" / "thumbnails" and folder.geocoder == "offline"
    (tmp_path / ".env").write_text("PHOTO_DATABASE_URL=sqlite:///elsewhere.db\nPHOTO_GEOCODER=nominatim\n")
    configured = embedded_settings(tmp_path, None)             # a .env counts as much as the environment
    assert configured.database_url == "sqlite:///elsewhere.db" and configured.geocoder == "nominatim"
    assert embedded_settings(tmp_path, "sqlite:///cli.db").database_url == "sqlite:///cli.db"


@pytest.mark.parametrize("make", ["missing", "file", "unreadable"])
def test_unusable_folder_is_one_line_and_a_failure(tmp_path, make):
    target = tmp_path / "photos"
    if make == "file":
        target.write_text("not a folder")
    elif make == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any folder")
        target.mkdir()
        target.chmod(0)
    res = run_process(target, f"sqlite:///{tmp_path / 'lib.db'}")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and str(target) in res.stderr, res.stderr
    assert {"missing": "no such folder", "file": "not a folder", "unreadable": "cannot read"}[make] in res.stderr
    assert not (tmp_path / "lib.db").exists()                 # nothing created for a bad folder


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
