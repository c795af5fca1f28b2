"""App\\Jobs\\FaceProcessJob: detect and encode the faces of one photo, store them, and file
each new face under a person (workers/faces/rules.py: all approved faces vote; or the original's
nearest root with face_grouping=roots).

    photo --(workers/faces/client.py: face API POST /encode, or the engine in-process)
          --> encodings + boxes
          --(one transaction)--> replace the image's unreviewed faces (process/unknown),
                                 keep reviewed ones (ok/not_face) and skip new boxes overlapping
                                 them (IoU >= 0.5), insert the rest as `unknown` with parent_id =
                                 the person's root (always an approved root, distance < 0.6) or
                                 none, update images.faces_count / faces_at,
                                 then one bounded automatic rematch step if approvals changed

images.faces_count counts the image's face rows except `not_face` after the job.
"""
from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa
from face_api import engine as face_engine   # its box_iou: [top, right, bottom, left], as the API answers

from workers import db as dbmod
from workers.faces import filing
from workers.faces.client import detect
from workers.faces.rules import Decision
from workers.jobs import Context, image_id_of
from workers.schema import faces, images
from workers.settings import Settings

QUEUE = "faces"
UNREVIEWED = ("process", "unknown")       # ours to replace; anything else a reviewer decided
OVERLAP_IOU = 0.5


def handle(ctx: Context, data: dict) -> list:
    image_id = image_id_of(data)
    image = ctx.image(image_id)
    path = ctx.photo_path(image.path)
    detections = detect(ctx.settings, path)
    stored = store_faces(ctx.db, ctx.engine, ctx.settings, image_id, detections)
    ctx.log.info("image %s: %d faces detected, %d stored, %d grouped", image_id,
                 len(detections), stored["inserted"], stored["grouped"])
    # approvals changed since this worker's last pass: file a bounded batch of older faces too
    filing.auto_rematch(ctx.db, ctx.engine, ctx.settings, exclude_image=image_id)
    return []


def _box(value) -> list[int] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return [int(v) for v in value]
    return None


def store_faces(conn: sa.Connection, engine: sa.Engine, settings: Settings, image_id: int,
                detections) -> dict:
    """Replace the image's unreviewed faces with `detections`, in the caller's transaction."""
    # Through the image_id index: on a small table MariaDB would scan (and lock) every row,
    # deadlocking with a reviewer's UPDATE elsewhere (found by test_grouping_concurrency).
    existing = conn.execute(sa.select(faces.c.id, faces.c.status, faces.c.location, faces.c.face_index)
                            .with_hint(faces, "FORCE INDEX (faces_image_id_index)", "mysql")
                            .where(faces.c.image_id == image_id).with_for_update()).all()
    reviewed = [r for r in existing if r.status not in UNREVIEWED]
    stale = [r.id for r in existing if r.status in UNREVIEWED]
    if stale:
        # Roots are only `ok` faces, so nothing should point at an unreviewed one; if something
        # does, unlink it (it becomes parentless and `faces rematch` regroups it).
        conn.execute(faces.update().where(faces.c.parent_id.in_(stale), faces.c.id.not_in(stale))
                     .values(parent_id=None, distance=None, matched_parent_id=None))
        conn.execute(faces.delete().where(faces.c.id.in_(stale), faces.c.status.in_(UNREVIEWED)))

    kept_boxes = [b for b in (_box(r.location) for r in reviewed) if b]
    fresh = [(i, enc, box) for i, (enc, box) in enumerate(detections)
             if not (box and any(face_engine.box_iou(box, k) >= OVERLAP_IOU for k in kept_boxes))]

    decisions: list[Decision] = []
    if fresh:
        batch = [filing.Face(None, image_id, np.asarray(enc)) for _, enc, _ in fresh]
        decisions = filing.Matcher(conn, engine, settings).decide(batch)
    taken = {r.face_index for r in reviewed}
    next_free = max(taken | {len(detections) - 1}) + 1   # above every index in use
    now = dbmod.now()
    rows = []
    for (i, enc, box), match in zip(fresh, decisions):
        face_index = i
        if face_index in taken:        # detection order changed since a face was reviewed
            face_index, next_free = next_free, next_free + 1
        rows.append({"image_id": image_id, "face_index": face_index, "encoding": enc,
                     "location": box, "status": "unknown",
                     "parent_id": match.person, "distance": match.distance,
                     "matched_parent_id": match.person,
                     "match_note": match.note,
                     "created_at": now, "updated_at": now})
    if rows:
        conn.execute(faces.insert(), rows)
    count = sum(1 for r in reviewed if r.status != "not_face") + len(rows)
    conn.execute(images.update().where(images.c.id == image_id).values(faces_count=count, faces_at=now))
    return {"inserted": len(rows), "skipped": len(detections) - len(fresh), "deleted": len(stale),
            "grouped": sum(1 for m in decisions if m.person), "faces_count": count}
