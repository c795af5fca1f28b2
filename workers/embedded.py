"""Embedded mode: the whole pipeline on one machine, no RabbitMQ, SQLite by default.

    python -m workers process DIR [--db URL] [--workers N]
    python -m workers process DIR --enqueue     # publish Laravel jobs instead (backfill)

Each photo runs the same handlers the queue workers run (metadata -> geolocation when GPS,
thumbnails, faces), in a process pool, one transaction per job, with the face engine in-process
and the offline geocoder (unless PHOTO_GEOCODER=nominatim). Finished work is recorded on the
image row (`metadata_at`, `thumbnails_at`, `geocoded_at`, `faces_at`), so a second run skips it.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from . import db, schema, suggest
from .jobs import Context, FollowUp, JobFailed, JobReleased
from .settings import PROJECT_ROOT, Settings

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".tif", ".tiff", ".webp", ".gif", ".bmp"}
# (job module, image column that marks it done). Geolocation runs as Metadata's follow-up.
PIPELINE = [("metadata", "metadata_at"), ("thumbnails", "thumbnails_at"), ("faces", "faces_at")]
HANDLERS = {"App\\Jobs\\MetadataProcessJob": "metadata", "App\\Jobs\\GeolocationProcessJob": "geolocation",
            "App\\Jobs\\ThumbnailProcessJob": "thumbnails", "App\\Jobs\\FaceProcessJob": "faces"}
JOB_CLASS = {queue: cls for cls, queue in HANDLERS.items()}


def find_photos(root: Path) -> tuple[list[Path], list[Path]]:
    """(photos, other files) under root: photos by suffix, sorted; the rest are reported."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    photos = [p for p in files if p.suffix.lower() in PHOTO_SUFFIXES]
    return photos, [p for p in files if p.suffix.lower() not in PHOTO_SUFFIXES]


def embedded_settings(photo_dir: Path, db_url: str | None) -> Settings:
    """Settings for one machine: photos are the storage root; outputs stay in the project."""
    defaults = {"storage_root": photo_dir.resolve(), "face_engine": "inprocess"}
    if "PHOTO_GEOCODER" not in os.environ:
        defaults["geocoder"] = "offline"
    if "PHOTO_THUMBNAIL_ROOT" not in os.environ:
        defaults["thumbnail_root"] = PROJECT_ROOT / "storage" / "thumbnails"
    if db_url:
        defaults["database_url"] = db_url
    return Settings(**defaults)


def ensure_images(engine: sa.Engine, root: Path, photos: list[Path]) -> dict[str, int]:
    """One images row per photo (path relative to root); returns path -> id."""
    rel = [str(p.relative_to(root)) for p in photos]
    with engine.begin() as conn:
        known = dict(conn.execute(sa.select(schema.images.c.path, schema.images.c.id)).all())
        missing = [{"path": r, "created_at": db.now(), "updated_at": db.now()} for r in rel if r not in known]
        if missing:
            conn.execute(schema.images.insert(), missing)
            known = dict(conn.execute(sa.select(schema.images.c.path, schema.images.c.id)).all())
    return {r: known[r] for r in rel}


# --- one photo, in a pool process ---------------------------------------------------------------

_settings: Settings | None = None
_engine: sa.Engine | None = None   # one per pool process, not one per photo


def _init_worker(settings_json: str) -> None:
    global _settings, _engine
    _settings = Settings.model_validate_json(settings_json)
    _engine = db.engine_for(_settings.database_url)


def pending_jobs(row) -> list[str]:
    """Jobs an images row still needs, in order; Geolocation when Metadata ran but its
    follow-up did not finish. The run's "already done" filter and the pool use this one rule."""
    pending = [queue for queue, column in PIPELINE if row[column] is None]
    if row["metadata_at"] is not None and row["geocoded_at"] is None and row["latitude"] is not None:
        pending.insert(1, "geolocation")
    return pending


def run_job(settings: Settings, engine: sa.Engine, queue: str, data: dict) -> list[FollowUp]:
    """Run one handler the way the runtime does: one transaction, committed after handle()."""
    handler = importlib.import_module(f"workers.jobs.{queue}")
    with engine.begin() as conn:
        ctx = Context(settings=settings, db=conn, engine=engine, queue=queue)
        return handler.handle(ctx, data) or []


def process_photo(image_id: int) -> dict:
    """All pending jobs for one image; returns {"done": [...], "failed": {queue: reason}}."""
    settings, engine = _settings, _engine
    result: dict = {"image_id": image_id, "done": [], "failed": {}}
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.images).where(schema.images.c.id == image_id)).mappings().one()
    pending = pending_jobs(row)
    while pending:
        queue = pending.pop(0)
        try:
            followups = run_job(settings, engine, queue, {"image_id": image_id})
        except (JobFailed, JobReleased) as exc:
            result["failed"][queue] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a bad photo is reported, never fatal
            result["failed"][queue] = f"{type(exc).__name__}: {exc}"
            continue
        result["done"].append(queue)
        for follow in followups:
            nxt = HANDLERS.get(follow.class_name)
            if nxt and nxt not in pending:
                pending.insert(0, nxt)
    return result


# --- the run and its summary ----------------------------------------------------------------------

@dataclass
class Summary:
    photos: int = 0
    processed: int = 0
    skipped: int = 0
    jobs: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)   # (path, job, reason)
    not_photos: list[str] = field(default_factory=list)                  # files left alone


def process(photo_dir: Path, settings: Settings, workers: int | None = None,
            progress: bool = True) -> Summary:
    from tqdm import tqdm

    photo_dir = Path(photo_dir).resolve()
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = db.engine_for(settings.database_url)
    db.migrate(engine)
    photos, others = find_photos(photo_dir)
    ids = ensure_images(engine, photo_dir, photos)
    paths = {v: k for k, v in ids.items()}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.images).where(
            schema.images.c.id.in_(list(ids.values())))).mappings().all()
    unfinished = {r["id"] for r in rows if pending_jobs(r)}
    todo = [i for i in ids.values() if i in unfinished]
    summary = Summary(photos=len(photos), skipped=len(ids) - len(todo),
                      not_photos=[str(p.relative_to(photo_dir)) for p in others])
    workers = workers or max(1, min(os.cpu_count() or 1, len(todo)))
    with ProcessPoolExecutor(workers, initializer=_init_worker,
                             initargs=(settings.model_dump_json(),)) as pool:
        futures = [pool.submit(process_photo, i) for i in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), disable=not progress,
                        unit="photo", desc="photos", file=sys.stderr):
            res = fut.result()
            summary.processed += 1
            summary.jobs.update(res["done"])
            summary.failures += [(paths[res["image_id"]], q, r) for q, r in res["failed"].items()]
    return summary


def library_stats(engine: sa.Engine, settings: Settings) -> dict:
    """Counts for the summary: faces, suggested people (workers/suggest.py), places."""
    im, fa = schema.images, schema.faces
    with engine.connect() as conn:
        encs = [json.loads(e) if isinstance(e, str) else e
                for e in conn.execute(sa.select(fa.c.encoding)).scalars() if e]
        places = conn.execute(sa.select(sa.func.count(sa.distinct(im.c.display_name)))
                              .where(im.c.display_name.isnot(None))).scalar()
        with_place = conn.execute(sa.select(sa.func.count()).where(im.c.display_name.isnot(None))).scalar()
    groups = suggest.refresh(engine, settings)
    return {"faces": len(encs), "face_groups": len(groups), "places": places, "photos_with_place": with_place}


def print_summary(summary: Summary, stats: dict, out=sys.stdout) -> None:
    print(f"photos: {summary.photos} ({summary.processed} processed, {summary.skipped} already done)", file=out)
    print("jobs done: " + (", ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items())) or "none"), file=out)
    print(f"faces: {stats['faces']}  suggested people (groups of unknown faces, `faces suggest`): "
          f"{stats['face_groups']}", file=out)
    print(f"places: {stats['places']} distinct, {stats['photos_with_place']} photos with a place", file=out)
    if summary.not_photos:
        shown = ", ".join(summary.not_photos[:5]) + (", ..." if len(summary.not_photos) > 5 else "")
        print(f"not photos (skipped): {len(summary.not_photos)}: {shown}", file=out)
    print(f"failures: {len(summary.failures)}", file=out)
    for path, job, reason in sorted(summary.failures):
        print(f"  {path} [{job}]: {reason.splitlines()[0] if reason else ''}", file=out)


# --- enqueue: backfill an existing library through the real workers ------------------------------

def enqueue(photo_dir: Path, settings: Settings) -> Counter:
    """Publish Laravel jobs (thumbnails, metadata, faces) for every photo, as the app's
    pushToQueue does: the dedup row first (skipped when the job is already queued), then publish."""
    from . import broker, dedup
    from .laravel import build_payload
    engine = db.engine_for(settings.database_url)
    db.migrate(engine)
    photo_dir = Path(photo_dir).resolve()
    ids = ensure_images(engine, photo_dir, find_photos(photo_dir)[0])
    counts: Counter = Counter()
    connection, channel = broker.connect(settings.amqp_url)
    try:
        for image_id in ids.values():
            for queue in ("thumbnails", "metadata", "faces"):
                cls, data = JOB_CLASS[queue], {"image_id": image_id}
                with engine.begin() as conn:    # row and publish together: a failed publish rolls back
                    sent = dedup.claim(conn, cls, data)
                    if sent:
                        broker.publish(channel, build_payload(cls, data, queue=queue, profile=settings.laravel_profile,
                                                              app_key=settings.app_key), queue)
                counts[f"{queue} {'published' if sent else 'already queued'}"] += 1
    finally:
        connection.close()
    return counts


def cmd_process(args) -> int:
    if args.enqueue:
        settings = Settings(**({"database_url": args.db} if args.db else {}))
        for line, n in sorted(enqueue(Path(args.dir), settings).items()):
            print(f"{line}: {n}")
        return 0
    if not args.verbose:      # per-job log lines would drown the progress bar
        logging.getLogger().setLevel(logging.WARNING)
    started = time.monotonic()
    settings = embedded_settings(Path(args.dir), args.db)
    summary = process(Path(args.dir), settings, args.workers, progress=not args.no_progress)
    print_summary(summary, library_stats(db.engine_for(settings.database_url), settings))
    print(f"time: {time.monotonic() - started:.1f} s")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("process", help="run the whole pipeline on a folder of photos (embedded mode)")
    p.add_argument("dir", help="folder of photos (becomes the storage root)")
    p.add_argument("--db", help="database URL (default: PHOTO_DATABASE_URL or storage/photo.db)")
    p.add_argument("--workers", type=int, help="processes (default: CPU count)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="log every job")
    p.add_argument("--enqueue", action="store_true",
                   help="publish Laravel jobs to RabbitMQ for every photo instead (backfill)")
    p.set_defaults(func=cmd_process)
