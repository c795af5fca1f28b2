"""Two face workers, a rematch and a reviewer at once on real MariaDB: no review is lost, no face
is stored twice, our filings stay consistent (parent = matched_parent_id, always an approved root)
and, once things settle, no person is filed twice in one photo."""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from workers import db
from workers.faces import filing
from workers.jobs import faces as job
from workers.schema import face_metrics, face_rejections, faces, images
from workers.settings import Settings

PEOPLE = 4
IMAGES = 12
SECONDS = 6.0


def point(person: int, image: int) -> list[float]:
    v = np.zeros(128)
    v[person] = 1.0
    v[10 + image] = 0.1
    return v.tolist()


def retrying(fn, stats: dict):
    """What the queue does with a job that hit a deadlock: run it again."""
    for _ in range(20):
        try:
            return fn()
        except OperationalError as exc:
            if exc.orig is None or exc.orig.args[0] not in (1213, 1205):   # deadlock, lock wait
                raise
            stats["retried"] += 1
    raise AssertionError("still deadlocked after 20 tries")


def test_two_workers_a_rematch_and_a_reviewer_at_once(mysql_url):
    two_workers_a_rematch_and_a_reviewer(Settings(database_url=mysql_url, face_rematch_batch=5))


def test_the_same_with_the_metric_refitted_as_the_reviewer_approves(mysql_url):
    """Two people with two approved faces are enough to learn here: every approval refits."""
    settings = Settings(database_url=mysql_url, face_rematch_batch=5, face_metric_min_people=2)
    two_workers_a_rematch_and_a_reviewer(settings)
    with db.engine_for(mysql_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(face_metrics)).scalar() >= 1


def two_workers_a_rematch_and_a_reviewer(settings: Settings) -> None:
    mysql_url = settings.database_url
    engine = db.engine_for(mysql_url)
    now = db.now()
    with engine.begin() as conn:
        roots = {}
        for p in range(PEOPLE):
            image = conn.execute(images.insert().values(path=f"root{p}.jpg")).inserted_primary_key[0]
            v = np.zeros(128)
            v[p] = 1.0
            roots[p] = conn.execute(faces.insert().values(
                image_id=image, face_index=0, encoding=v.tolist(), status="ok", created_at=now,
                updated_at=now)).inserted_primary_key[0]
        photos = [conn.execute(images.insert().values(path=f"p{i}.jpg")).inserted_primary_key[0]
                  for i in range(IMAGES)]
    truth = {image: [(i % PEOPLE), ((i + 1) % PEOPLE)] for i, image in enumerate(photos)}
    detections = {image: [(point(p, i), [0, 10 + 20 * k, 10, 20 * k]) for k, p in enumerate(truth[image])]
                  for i, image in enumerate(photos)}

    stop = threading.Event()
    errors, stats = [], {"retried": 0, "jobs": 0, "rematches": 0}
    reviewed: dict[int, dict] = {}            # face id -> what the reviewer last wrote

    def worker(mine):
        rng = random.Random(len(mine))
        while not stop.is_set():
            image = rng.choice(mine)

            def run():
                with engine.begin() as conn:
                    job.store_faces(conn, engine, settings, image, detections[image])
                    filing.auto_rematch(conn, engine, settings, exclude_image=image)
            retrying(run, stats)
            stats["jobs"] += 1

    def rematcher():
        while not stop.is_set():
            retrying(lambda: filing.rematch(engine, settings), stats)
            stats["rematches"] += 1

    def reviewer():
        rng = random.Random(7)
        while not stop.is_set():
            with engine.connect() as conn:
                rows = conn.execute(sa.select(faces.c.id, faces.c.image_id, faces.c.face_index, faces.c.parent_id)
                                    .where(faces.c.status == "unknown")).all()
            if not rows:
                time.sleep(0.01)
                continue
            r = rng.choice(rows)
            action = rng.choice(["approve", "not_face", "not this person"])
            if action == "approve":
                values = {"status": "ok", "parent_id": roots[truth[r.image_id][r.face_index % 2]]}
            elif action == "not_face":
                values = {"status": "not_face"}
            else:
                if r.parent_id is None:
                    continue
                values = {"parent_id": None, "distance": None}
            with engine.begin() as conn:     # the Laravel screen: a plain UPDATE of the row it showed
                done = conn.execute(faces.update().where(faces.c.id == r.id, faces.c.status == "unknown")
                                    .values(updated_at=db.now(), **values)).rowcount
            if done:
                reviewed[r.id] = values
            time.sleep(0.005)

    def guarded(fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as exc:     # surfaced by the assertion below
                errors.append(exc)
                stop.set()
        return threading.Thread(target=run)

    threads = [guarded(worker, photos[0::2]), guarded(worker, photos[1::2]),
               guarded(rematcher), guarded(reviewer)]
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert stats["jobs"] > 10 and stats["rematches"] > 2 and reviewed

    filing.rematch(engine, settings)                # settled: one more pass
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(faces)).all()}
        rejected = set(conn.execute(sa.select(face_rejections.c.face_id, face_rejections.c.person_id)).all())
    ok_roots = {i for i, r in rows.items() if r.status == "ok" and r.parent_id is None}

    # no review lost: every reviewer write that took effect on a face that still exists holds
    for face_id, values in reviewed.items():
        row = rows.get(face_id)
        if row is None:
            assert values.get("status") is None, "a reviewed face was deleted"
            continue                         # an unknown face replaced by a reprocess: fine
        if "status" in values:
            assert row.status == values["status"], face_id
            assert row.parent_id == values.get("parent_id", row.parent_id), face_id
    # no face stored twice: every photo still has exactly its two faces
    for image in photos:
        mine = [r for r in rows.values() if r.image_id == image]
        assert sorted(r.face_index for r in mine) == [0, 1], (image, mine)
    # our filings: consistent, under an approved root, one person once per photo, never rejected
    for r in rows.values():
        if r.status == "unknown" and r.parent_id is not None and r.matched_parent_id is not None:
            assert r.parent_id == r.matched_parent_id and r.parent_id in ok_roots
            assert (r.id, r.parent_id) not in rejected
    for image in photos:
        mine = [r for r in rows.values() if r.image_id == image and r.status != "not_face"]
        persons = [r.parent_id or r.id for r in mine if r.status == "ok" or r.parent_id is not None]
        assert len(persons) == len(set(persons)), (image, mine)
