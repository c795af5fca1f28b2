"""App\\Jobs\\FaceProcessJob: detect and encode the faces of one photo, store them, and file
each new face under a person (workers/people.py: all approved faces vote; or the original's
nearest root with face_grouping=roots).

    photo --(face API POST /encode, or the engine in-process)--> encodings + boxes
          --(one transaction)--> replace the image's unreviewed faces (process/unknown),
                                 keep reviewed ones (ok/not_face) and skip new boxes overlapping
                                 them (IoU >= 0.5), insert the rest as `unknown` with parent_id =
                                 the person's root (always an approved root, distance < 0.6) or
                                 none, update images.faces_count / faces_at,
                                 then one bounded automatic rematch step if approvals changed

images.faces_count counts the image's face rows except `not_face` after the job.
Outcomes: bad photo (API 4xx, undecodable file) -> JobFailed; API down / 5xx after retries /
timeout -> FaceApiError (ordinary failure, retried by the queue).

CLI: `python -m workers faces rematch` (a full pass; the workers also rematch by themselves),
`faces suggest [--json]` (suggested people among unknown faces), `faces people` (radii and
why), `faces stats`.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa

from .. import db as dbmod
from .. import grouping, suggest
from ..matching import parse_encoding
from ..people import Decision
from ..schema import faces, images
from ..settings import Settings
from . import Context, JobFailed, image_id_of

QUEUE = "faces"
UNREVIEWED = ("process", "unknown")       # ours to replace; anything else a reviewer decided
OVERLAP_IOU = 0.5
RETRY_BACKOFF = 0.5                       # seconds, doubled per retry, capped at MAX_BACKOFF
MAX_BACKOFF = 8.0

log = logging.getLogger("workers.faces")


class FaceApiError(RuntimeError):
    """The face API is unreachable or failing: an ordinary (retryable) job failure."""


def handle(ctx: Context, data: dict) -> list:
    image_id = image_id_of(data)
    image = ctx.image(image_id)
    path = ctx.photo_path(image.path)
    detections = detect(ctx.settings, path)
    stored = store_faces(ctx.db, ctx.engine, ctx.settings, image_id, detections)
    ctx.log.info("image %s: %d faces detected, %d stored, %d grouped", image_id,
                 len(detections), stored["inserted"], stored["grouped"])
    # approvals changed since this worker's last pass: file a bounded batch of older faces too
    grouping.auto_rematch(ctx.db, ctx.engine, ctx.settings, exclude_image=image_id)
    return []


# ---------------------------------------------------------------- detection

def detect(settings: Settings, path: Path) -> list[tuple[list[float], list[int] | None]]:
    """(encoding, location) per face, from the API or in-process per settings.face_engine."""
    if settings.face_engine == "inprocess":
        result = _encode_inprocess(path)
    elif settings.face_engine == "http":
        result = _encode_http(settings, path)
    else:   # a configuration error: an ordinary failure, so the jobs retry once it is fixed
        raise RuntimeError(f"unknown face_engine {settings.face_engine!r} (http or inprocess)")
    return _validated(result)


def _validated(result) -> list[tuple[list[float], list[int] | None]]:
    """Check the /encode answer; `locations` is optional (the original server sent none)."""
    if not isinstance(result, dict) or not isinstance(result.get("encodings"), list):
        raise FaceApiError("face API answer has no `encodings` list")
    encodings = result["encodings"]
    locations = result.get("locations")
    if not isinstance(locations, list) or len(locations) != len(encodings):
        locations = [None] * len(encodings)
    out = []
    for enc, loc in zip(encodings, locations):
        vec = parse_encoding(enc)
        if vec is None:
            raise FaceApiError("face API answered an encoding that is not 128 finite numbers")
        box = None
        if isinstance(loc, list) and len(loc) == 4 and all(isinstance(v, (int, float)) for v in loc):
            box = [int(v) for v in loc]
        out.append(([float(v) for v in vec], box))
    return out


_client: tuple[int, httpx.Client] | None = None


def _http_client(settings: Settings) -> httpx.Client:
    """One keep-alive client per process (re-created after a fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        timeout = httpx.Timeout(settings.face_api_timeout, connect=min(10.0, settings.face_api_timeout))
        _client = (os.getpid(), httpx.Client(timeout=timeout))
    return _client[1]


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except Exception:
        detail = None
    return " ".join(str(detail or response.text or response.reason_phrase).split())[:300]


def _encode_http(settings: Settings, path: Path) -> dict:
    if settings.face_api_send not in ("path", "bytes"):
        raise RuntimeError(f"unknown face_api_send {settings.face_api_send!r} (path or bytes)")
    url = settings.face_api_url.rstrip("/") + "/encode"
    client = _http_client(settings)
    attempts = max(0, settings.face_api_retries) + 1
    problem = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(MAX_BACKOFF, RETRY_BACKOFF * 2 ** (attempt - 1)))
        try:
            if settings.face_api_send == "bytes":
                try:
                    fh = open(path, "rb")     # streamed, never read whole into memory
                except OSError as exc:
                    raise JobFailed(f"cannot read photo {path}: {exc.strerror or exc}") from None
                with fh:
                    response = client.post(url, files={"image": (path.name, fh, "application/octet-stream")},
                                           headers=settings.face_api_headers)
            else:
                # The API resolves the absolute path under its own storage roots.
                response = client.post(url, json={"path": str(path)}, headers=settings.face_api_headers)
        except (httpx.ReadTimeout, httpx.WriteTimeout) as exc:
            # The API is busy with this photo; retrying here would exceed the job's timeout.
            raise FaceApiError(f"face API timed out after {settings.face_api_timeout}s: {exc!r}") from exc
        except httpx.TransportError as exc:   # refused, reset, connect timeout: retry
            problem = f"face API unreachable at {url}: {exc!r}"
            log.warning("%s (attempt %d/%d)", problem, attempt + 1, attempts)
            continue
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise FaceApiError("face API answered 200 with a body that is not JSON") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            problem = f"face API answered {response.status_code}: {_detail(response)}"
            log.warning("%s (attempt %d/%d)", problem, attempt + 1, attempts)
            continue
        raise JobFailed(f"face API rejected the photo ({response.status_code}): {_detail(response)}")
    raise FaceApiError(problem)


def _encode_inprocess(path: Path) -> dict:
    """Embedded mode: the face API's own pipeline, models loaded once per process."""
    from face_api import engine, imaging
    from face_api.settings import get_settings as face_settings

    fs = face_settings()
    engine.load_models()
    try:
        data = imaging.read_limited(path, fs.max_upload_bytes)
        photo = imaging.open_photo(data, fs.max_pixels, draft=fs.face_draft_decode, name=path.name)
        return engine.encode_image(photo, fs).as_dict()
    except imaging.ImageError as exc:
        raise JobFailed(f"bad photo: {exc.reason}") from None
    except OSError as exc:
        raise JobFailed(f"cannot read photo {path}: {exc.strerror or exc}") from None
    except MemoryError:
        raise JobFailed("bad photo: image too large to process") from None


# ---------------------------------------------------------------- storing

def iou(a, b) -> float:
    """Intersection over union of two [top, right, bottom, left] boxes."""
    t1, r1, b1, l1 = a
    t2, r2, b2, l2 = b
    inter = max(0, min(r1, r2) - max(l1, l2)) * max(0, min(b1, b2) - max(t1, t2))
    union = (r1 - l1) * (b1 - t1) + (r2 - l2) * (b2 - t2) - inter
    return inter / union if union > 0 else 0.0


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
             if not (box and any(iou(box, k) >= OVERLAP_IOU for k in kept_boxes))]

    decisions: list[Decision] = []
    if fresh:
        batch = [grouping.Face(None, image_id, np.asarray(enc)) for _, enc, _ in fresh]
        decisions = grouping.Matcher(conn, engine, settings).decide(batch)
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
                     "match_note": None if match.person else match.why[:255],
                     "created_at": now, "updated_at": now})
    if rows:
        conn.execute(faces.insert(), rows)
    count = sum(1 for r in reviewed if r.status != "not_face") + len(rows)
    conn.execute(images.update().where(images.c.id == image_id).values(faces_count=count, faces_at=now))
    return {"inserted": len(rows), "skipped": len(detections) - len(fresh), "deleted": len(stale),
            "grouped": sum(1 for m in decisions if m.person), "faces_count": count}


# ---------------------------------------------------------------- rematch and stats

def stats(conn: sa.Connection) -> dict:
    per_status = {s: n for s, n in conn.execute(
        sa.select(faces.c.status, sa.func.count()).group_by(faces.c.status)).all()}
    one = lambda q: int(conn.execute(q).scalar() or 0)  # noqa: E731
    return {
        "faces": sum(per_status.values()),
        "per_status": per_status,
        "roots": one(sa.select(sa.func.count()).select_from(faces).where(faces.c.parent_id.is_(None),
                                                                          faces.c.status == "ok")),
        "grouped": one(sa.select(sa.func.count()).select_from(faces).where(faces.c.parent_id.is_not(None))),
        "photos_with_faces": one(sa.select(sa.func.count(sa.distinct(faces.c.image_id)))
                                 .where(faces.c.status != "not_face")),
        "photos_processed": one(sa.select(sa.func.count()).select_from(images)
                                .where(images.c.faces_at.is_not(None))),
    }


def _engine(args):
    from ..settings import get_settings
    return dbmod.engine_for(args.db or get_settings().database_url)


def _settings(args) -> Settings:
    from ..settings import get_settings
    settings = get_settings()
    if getattr(args, "threshold", None) is not None:
        settings = settings.model_copy(update={"face_match_threshold": args.threshold})
    return settings


def cmd_rematch(args) -> int:
    counts = grouping.rematch(_engine(args), _settings(args))
    print(f"faces given a parent: {counts.pop('matched', 0)}")
    for outcome, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        label = outcome if outcome in ("kept", "refiled") or "," in outcome else f"left unassigned, {outcome}"
        print(f"  {label}: {n}")
    return 0


def cmd_suggest(args) -> int:
    settings = _settings(args)
    groups = suggest.refresh(_engine(args), settings)
    if args.json:
        print(json.dumps([g.as_dict() for g in groups], indent=1))
    else:
        print(f"suggested groups: {len(groups)} ({sum(g.size for g in groups)} unknown faces)")
        for g in groups:
            print(f"  group {g.id}: {g.size} faces in {g.photos} photos, representative face {g.id} "
                  f"(image {g.image_id})")
    return 0


def cmd_people(args) -> int:
    for p in grouping.people_report(_engine(args), _settings(args)):
        print(f"person {p['person']:<8} {p['name'] or '':<24} approved {p['faces']:<4} "
              f"radius {p['radius']:.3f}  {p['why']}")
    return 0


def cmd_stats(args) -> int:
    with _engine(args).connect() as conn:
        s = stats(conn)
    print(f"faces               {s['faces']}")
    for status in ("process", "unknown", "ok", "not_face"):
        print(f"  {status:<17} {s['per_status'].get(status, 0)}")
    print(f"roots               {s['roots']}")
    print(f"grouped             {s['grouped']}")
    print(f"photos with faces   {s['photos_with_faces']}")
    print(f"photos processed    {s['photos_processed']}")
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("faces", help="face grouping maintenance: rematch | suggest | people | stats")
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser("rematch", help="a full pass giving a parent to unknown faces without one "
                                           "(the face workers also do it by themselves after approvals)")
    r.add_argument("--threshold", type=float, help="distance threshold (default: PHOTO_FACE_MATCH_THRESHOLD)")
    r.set_defaults(func=cmd_rematch)
    g = actions.add_parser("suggest", help="cluster unknown faces without a parent into suggested "
                                           "people, largest first, with a representative face each")
    g.add_argument("--json", action="store_true", help="print the groups as JSON")
    g.set_defaults(func=cmd_suggest)
    pe = actions.add_parser("people", help="each person's approved faces and learned radius, and why")
    pe.set_defaults(func=cmd_people)
    st = actions.add_parser("stats", help="faces per status, roots, grouped, photos with faces")
    st.set_defaults(func=cmd_stats)
    for sp in (r, g, pe, st):
        sp.add_argument("--db", help="database URL (default: PHOTO_DATABASE_URL)")
