"""Embedded mode: the whole pipeline on one machine, no RabbitMQ, SQLite by default.

    photo-pipeline process DIR [--db URL] [--workers N]
    photo-pipeline process DIR --enqueue     # publish Laravel jobs instead (backfill)

DIR becomes the storage root, as the Laravel storage is in the queue mode: `images.path` and the
thumbnail paths are stored relative to it. The folder is a self-contained library: the database
(`DIR/.photo-pipeline/photo.db`) and the thumbnails (`DIR/.photo-pipeline/thumbnails/`) live
inside it unless --db / PHOTO_DATABASE_URL and PHOTO_THUMBNAIL_ROOT say otherwise, so it can be
moved, and two folders never mix their rows.

Each photo runs the same handlers the queue workers run (metadata -> geolocation when GPS,
thumbnails, faces), in a process pool, one transaction per job, with the face engine in-process
and the offline geocoder (unless PHOTO_GEOCODER=nominatim). Finished work is recorded on the
image row (`metadata_at`, `thumbnails_at`, `geocoded_at`, `faces_at`), so a second run skips it.
"""
from __future__ import annotations

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

from workers import db, schema
from workers.errors import PipelineError
from workers.faces import suggestions
from workers.jobs import Context, FollowUp, JobFailed, JobReleased, registry
from workers.settings import Settings, get_settings, resolve

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".tif", ".tiff", ".webp", ".gif", ".bmp"}
# The jobs the app publishes for a new photo (the registry's order: thumbnails, metadata, faces),
# as `--enqueue` publishes them; a run does the ones that chain first, so their follow-ups
# (Metadata's Geolocation) run in the same pass.
UPLOAD_JOBS = [job for job in registry.JOBS if job.on_upload]
PIPELINE = sorted(UPLOAD_JOBS, key=lambda job: not job.chains)
LIBRARY_DIR = ".photo-pipeline"   # inside the photo folder: database and thumbnails


class FolderError(PipelineError):
    """The photo folder cannot be used; one line for the operator."""


def check_folder(photo_dir: Path) -> Path:
    """The folder, resolved; FolderError when it is missing, not a folder or not readable."""
    if not photo_dir.exists():
        raise FolderError(f"{photo_dir}: no such folder")
    if not photo_dir.is_dir():
        raise FolderError(f"{photo_dir}: not a folder")
    try:
        with os.scandir(photo_dir) as entries:
            next(entries, None)
    except OSError as exc:
        raise FolderError(f"{photo_dir}: cannot read the folder ({exc.strerror or exc})") from None
    return photo_dir.resolve()


def find_photos(root: Path, skip: tuple[Path, ...] = ()) -> tuple[list[Path], list[Path]]:
    """(photos, other files) under root: photos by suffix, sorted; the rest are reported.
    Files under `skip` (our own library: database, thumbnails) are neither."""
    skip = tuple(p.resolve() for p in skip)
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(p.is_relative_to(s) for s in skip))
    photos = [p for p in files if p.suffix.lower() in PHOTO_SUFFIXES]
    return photos, [p for p in files if p.suffix.lower() not in PHOTO_SUFFIXES]


def embedded_settings(photo_dir: Path, db_url: str | None) -> Settings:
    """Settings for one machine: the photo folder is the storage root and holds the library."""
    configured = get_settings().model_fields_set     # set in the environment or .env: they win
    library = photo_dir.resolve() / LIBRARY_DIR
    defaults = {"storage_root": photo_dir.resolve(), "face_engine": "inprocess"}
    if "geocoder" not in configured:
        defaults["geocoder"] = "offline"
    if "thumbnail_root" not in configured:
        defaults["thumbnail_root"] = library / "thumbnails"
    if db_url:
        defaults["database_url"] = db_url
    elif "database_url" not in configured:
        defaults["database_url"] = f"sqlite:///{library / 'photo.db'}"
    return get_settings(**defaults)


def prepare_library(settings: Settings) -> None:
    """Create the folders the run writes to; FolderError (one line) when it cannot."""
    targets = [settings.thumbnails_dir]
    if settings.database_url.startswith("sqlite:///"):
        targets.append(Path(settings.database_url.removeprefix("sqlite:///")).parent)
    for target in targets:
        try:
            target.mkdir(parents=True, exist_ok=True)
            if not os.access(target, os.W_OK):
                raise PermissionError(13, "not writable")
        except OSError as exc:
            raise FolderError(f"cannot write to {target} ({exc.strerror or exc}); a read-only photo "
                              "folder needs --db and PHOTO_THUMBNAIL_ROOT pointing elsewhere") from None


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


def library_paths(settings: Settings) -> tuple[Path, ...]:
    """What the run itself writes under the photo folder: never taken for photos."""
    paths = [settings.storage_root / LIBRARY_DIR, settings.thumbnails_dir]
    if settings.database_url.startswith("sqlite:///"):
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        paths += [database.with_name(database.name + suffix) for suffix in ("", "-journal", "-wal", "-shm")]
    return tuple(paths)


# --- one photo, in a pool process ---------------------------------------------------------------

_settings: Settings | None = None
_engine: sa.Engine | None = None   # one per pool process, not one per photo


def _init_worker(settings: Settings) -> None:
    # The object itself is pickled: a JSON dump would mask secrets such as the face API token.
    global _settings, _engine
    _settings = settings
    _engine = db.engine_for(_settings.database_url)


def pending_jobs(row) -> list[str]:
    """Jobs an images row still needs, in order; Geolocation when Metadata ran but its
    follow-up did not finish. The run's "already done" filter and the pool use this one rule."""
    pending = [job.queue for job in PIPELINE if row[job.done_column] is None]
    if row["metadata_at"] is not None and row["geocoded_at"] is None and row["latitude"] is not None:
        pending.insert(1, "geolocation")
    return pending


def run_job(settings: Settings, engine: sa.Engine, queue: str, data: dict) -> list[FollowUp]:
    """Run one handler the way the runtime does: one transaction, committed after handle()."""
    _, handle = resolve(settings.job_handlers[registry.BY_QUEUE[queue].class_name])
    with engine.begin() as conn:
        ctx = Context(settings=settings, db=conn, engine=engine, queue=queue)
        return handle(ctx, data) or []


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
            nxt = registry.BY_CLASS.get(follow.class_name)
            nxt = nxt and nxt.queue
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
    prepare_library(settings)
    engine = db.engine_for(settings.database_url)
    db.migrate(engine)
    photos, others = find_photos(photo_dir, skip=library_paths(settings))
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
                             initargs=(settings,)) as pool:
        futures = [pool.submit(process_photo, i) for i in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), disable=not progress,
                        unit="photo", desc="photos", file=sys.stderr):
            res = fut.result()
            summary.processed += 1
            summary.jobs.update(res["done"])
            summary.failures += [(paths[res["image_id"]], q, r) for q, r in res["failed"].items()]
    return summary


def library_stats(engine: sa.Engine, settings: Settings) -> dict:
    """Counts for the summary: faces, suggested people (workers/faces/suggestions.py), places."""
    im, fa = schema.images, schema.faces
    with engine.connect() as conn:
        faces = conn.execute(sa.select(sa.func.count()).where(fa.c.encoding.isnot(None))).scalar()
        places = conn.execute(sa.select(sa.func.count(sa.distinct(im.c.display_name)))
                              .where(im.c.display_name.isnot(None))).scalar()
        with_place = conn.execute(sa.select(sa.func.count()).where(im.c.display_name.isnot(None))).scalar()
    groups = suggestions.refresh(engine, settings)
    return {"faces": faces, "face_groups": len(groups), "places": places, "photos_with_place": with_place}


def library_photos(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.images)).scalar()


def run_lines(summary: Summary) -> dict[str, str]:
    """This run's figures as summary lines (label -> text): a new line is a new entry."""
    lines = {
        "photos": f"{summary.photos} ({summary.processed} processed, {summary.skipped} already done)",
        "jobs done": ", ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items())) or "none",
    }
    if summary.not_photos:
        shown = ", ".join(summary.not_photos[:5]) + (", ..." if len(summary.not_photos) > 5 else "")
        lines["not photos (skipped)"] = f"{len(summary.not_photos)}: {shown}"
    lines["failures"] = str(len(summary.failures))
    return lines


def total_lines(stats: dict, photos: int) -> dict[str, str]:
    """The database's totals, every run included, as summary lines (label -> text)."""
    return {
        "photos": str(photos),
        "faces": f"{stats['faces']}  suggested people (groups of unknown faces, `faces suggest`): "
                 f"{stats['face_groups']}",
        "places": f"{stats['places']} distinct, {stats['photos_with_place']} photos with a place",
    }


def print_summary(summary: Summary, totals: dict[str, str], database: str, out=sys.stdout) -> None:
    """Two blocks, never mixed: what this run did, then what the database holds in all."""
    print("this run:", file=out)
    for label, text in run_lines(summary).items():
        print(f"  {label}: {text}", file=out)
    for path, job, reason in sorted(summary.failures):
        print(f"    {path} [{job}]: {reason.splitlines()[0] if reason else ''}", file=out)
    print(f"library totals (database {database}):", file=out)
    for label, text in totals.items():
        print(f"  {label}: {text}", file=out)


# --- enqueue: backfill an existing library through the real workers ------------------------------

def enqueue(photo_dir: Path, settings: Settings) -> Counter:
    """Publish Laravel jobs (thumbnails, metadata, faces) for every photo, as the app's
    pushToQueue does: the dedup row first (skipped when the job is already queued), then publish."""
    from workers.queue import broker, dedup
    from workers.laravel import build_payload
    engine = db.engine_for(settings.database_url)
    db.migrate(engine)
    photo_dir = Path(photo_dir).resolve()
    ids = ensure_images(engine, photo_dir, find_photos(photo_dir, skip=(photo_dir / LIBRARY_DIR,))[0])
    counts: Counter = Counter()
    connection, channel = broker.connect(settings.amqp_url)
    try:
        with engine.connect() as conn:
            for image_id in ids.values():
                for job in UPLOAD_JOBS:
                    data = {"image_id": image_id}

                    def message(job=job, data=data) -> tuple[bytes, dict]:
                        msg = build_payload(job.class_name, data, queue=job.queue,
                                            profile=settings.laravel_profile, app_key=settings.app_key)
                        return msg.body, msg.properties
                    sent = dedup.claim_and_publish(conn, channel, job.class_name, data, job.queue, message)
                    counts[f"{job.queue} {'published' if sent else 'already queued'}"] += 1
    finally:
        connection.close()
    return counts


def cmd_process(args) -> int:
    try:
        photo_dir = check_folder(Path(args.dir).expanduser())
    except FolderError as exc:
        print(f"photo-pipeline process: {exc}", file=sys.stderr)
        return 2
    if args.enqueue:
        settings = Settings(**({"database_url": args.db} if args.db else {}))
        for line, n in sorted(enqueue(photo_dir, settings).items()):
            print(f"{line}: {n}")
        return 0
    if not args.verbose:      # per-job log lines would drown the progress bar
        logging.getLogger().setLevel(logging.WARNING)
    started = time.monotonic()
    settings = embedded_settings(photo_dir, args.db)
    from face_api import engine as face_engine   # the in-process engine's settings, checked now
    face_engine.settings_or_exit(check_paths=False, program="photo-pipeline process")
    try:
        summary = process(photo_dir, settings, args.workers, progress=not args.no_progress)
    except FolderError as exc:
        print(f"photo-pipeline process: {exc}", file=sys.stderr)
        return 2
    engine = db.engine_for(settings.database_url)
    totals = total_lines(library_stats(engine, settings), library_photos(engine))
    print_summary(summary, totals, engine.url.render_as_string())   # the password stays hidden
    print(f"time: {time.monotonic() - started:.1f} s")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("process", help="run the whole pipeline on a folder of photos (embedded mode)")
    p.add_argument("dir", help="folder of photos (becomes the storage root)")
    p.add_argument("--db", help=f"database URL (default: PHOTO_DATABASE_URL, else DIR/{LIBRARY_DIR}/photo.db)")
    p.add_argument("--workers", type=int, help="processes (default: CPU count)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="log every job")
    p.add_argument("--enqueue", action="store_true",
                   help="publish Laravel jobs to RabbitMQ for every photo instead (backfill)")
    p.set_defaults(func=cmd_process)
