"""Test-only job handlers, registered through PHOTO_JOB_HANDLERS. Behaviour is driven by the job
data so one handler covers every runtime test:

    image_id      required
    sleep         seconds to block (heartbeat, timeout, SIGTERM, kill -9 tests)
    fail          "always" or N: raise RuntimeError on every call / on the first N calls
    invalid       raise JobFailed (permanent)
    release_once  raise JobReleased(n) on the first call
    followups     [{"class_name", "data", "queue", "dedup"}]
    db_error      raise sqlalchemy OperationalError on the first call

Every call is counted in rt_calls with its start and end times (committed on their own, so
failed calls count too: the lease tests check that no two calls for one image overlap); success
writes rt_done inside the job's transaction (unique image_id + INSERT IGNORE = idempotent)."""
from __future__ import annotations

import time

import sqlalchemy as sa

from workers.jobs import Context, FollowUp, JobFailed, JobReleased, image_id_of

QUEUE = "rtest"

meta = sa.MetaData()
rt_calls = sa.Table("rt_calls", meta,
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                    sa.Column("image_id", sa.Integer, nullable=False),
                    sa.Column("attempt", sa.Integer, nullable=False),
                    sa.Column("at", sa.Float(precision=53), nullable=False),
                    sa.Column("ended", sa.Float(precision=53), nullable=True))
rt_done = sa.Table("rt_done", meta,
                   sa.Column("image_id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("attempt", sa.Integer, nullable=False))


def create_tables(engine: sa.Engine) -> None:
    meta.create_all(engine)


def calls(engine: sa.Engine, image_id: int | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(rt_calls)
    if image_id is not None:
        q = q.where(rt_calls.c.image_id == image_id)
    with engine.connect() as c:
        return c.execute(q).scalar()


def done(engine: sa.Engine) -> list[int]:
    with engine.connect() as c:
        return [r[0] for r in c.execute(sa.select(rt_done.c.image_id).order_by(rt_done.c.image_id))]


def spans(engine: sa.Engine, image_id: int) -> list[tuple[float, float | None]]:
    """(start, end) of every call for the image, in start order."""
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.select(rt_calls.c.at, rt_calls.c.ended)
                                            .where(rt_calls.c.image_id == image_id).order_by(rt_calls.c.at))]


def handle(ctx: Context, data: dict) -> list[FollowUp]:
    image_id = image_id_of(data)
    with ctx.engine.begin() as c:
        call_id = c.execute(rt_calls.insert().values(image_id=image_id, attempt=ctx.attempt,
                                                     at=time.time())).inserted_primary_key[0]
    try:
        _work(ctx, data, image_id)
    finally:
        # before the job's own write below: on SQLite that write holds the only write lock
        # until the runtime commits, so a later write on another connection would wait for it
        with ctx.engine.begin() as c:
            c.execute(rt_calls.update().where(rt_calls.c.id == call_id).values(ended=time.time()))
    ins = rt_done.insert().values(image_id=image_id, attempt=ctx.attempt)
    ctx.db.execute(ins.prefix_with("IGNORE", dialect="mysql").prefix_with("OR IGNORE", dialect="sqlite"))
    return [FollowUp(**f) for f in data.get("followups", [])]


def _work(ctx: Context, data: dict, image_id: int) -> None:
    """The scripted part of a call: sleeps and failures."""
    n = calls(ctx.engine, image_id)
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    if data.get("invalid"):
        raise JobFailed(f"invalid data for image {image_id}")
    fail = data.get("fail")
    if fail == "always" or (isinstance(fail, int) and n <= fail):
        raise RuntimeError(f"boom on call {n}")
    if data.get("release_once") and n == 1:
        raise JobReleased(data["release_once"], "come back later")
    if data.get("db_error") and n == 1:
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("simulated: server has gone away"))


def noop(ctx: Context, data: dict) -> list[FollowUp]:
    """The benchmark's handler: nothing but the runtime's own work."""
    return []
