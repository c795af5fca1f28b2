"""One Geolocation job the way the consumer runs it: one transaction, committed after `handle`
(also run by the several-process tests in subprocesses)."""
from __future__ import annotations

from workers import db
from workers.jobs import Context, geolocation
from workers.settings import Settings


def run(settings: Settings, image_id: int, attempt: int = 1):
    engine = db.engine_for(settings.database_url)
    with engine.begin() as conn:
        ctx = Context(settings=settings, db=conn, engine=engine, queue="geolocation", attempt=attempt)
        return geolocation.handle(ctx, {"image_id": image_id})
