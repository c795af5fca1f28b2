"""Laravel's DatabaseLock on the `cache_locks` table (docs/laravel-wire.md), so a lock
taken here excludes PHP workers using `Cache::lock(...)` with the database store, and vice versa.

Works on MySQL and SQLite: plain INSERT, then UPDATE-if-expired-or-ours on a duplicate key.

Two additions PHP never sees as anything but an ordinary row (owner string, expiration):
  * `renew()` moves the expiration ahead while the holder still owns the lock (a lease; Laravel
    12's `refresh()` without its `expiration > now` condition, see `renew`).
  * a job-owned lock: `job_owner(uuid)` starts with a token derived from the job's uuid, so a
    redelivery of the same job can `acquire(take_over=...)` the lock its dead earlier delivery
    holds. PHP's own owners are 16 random characters and never start with that token."""
from __future__ import annotations

import base64
import hashlib
import random
import secrets
import time
from contextlib import contextmanager

import sqlalchemy as sa

from workers.schema import cache_locks

DEFAULT_TIMEOUT = 86400          # lock_timeout when seconds <= 0
LOTTERY = (2, 100)               # lock_lottery: chance of sweeping expired locks per acquire


def random_owner() -> str:
    """`Str::random()`: 16 chars of [A-Za-z0-9] (base64 of random bytes without `/+=`, like PHP)."""
    while True:
        out = base64.b64encode(secrets.token_bytes(24)).translate(None, b"/+=")
        if len(out) >= 16:
            return out[:16].decode()


def job_token(job_uuid: object) -> str | None:
    """16 characters that name one job (every delivery of one payload has the same uuid);
    None for a payload without a usable uuid (such a job's locks are never taken over)."""
    if not isinstance(job_uuid, str) or not job_uuid:
        return None
    return hashlib.sha256(job_uuid.encode()).hexdigest()[:16]


def job_owner(job_uuid: object) -> str:
    """An owner for one delivery of a job: its job token, then 16 random characters (so two
    deliveries of one job are still different owners). Without a uuid: Laravel's random owner."""
    return (job_token(job_uuid) or "") + random_owner()


class DatabaseLock:
    def __init__(self, engine: sa.Engine, name: str, seconds: int, owner: str | None = None):
        self.engine, self.name, self.seconds = engine, name, seconds
        self.owner = owner or random_owner()

    @contextmanager
    def _tx(self, conn: sa.Connection | None):
        """A committed transaction on `conn` (which must not be in one), or on a pooled connection."""
        if conn is None:
            with self.engine.begin() as c:
                yield c
        else:
            with conn.begin():
                yield conn

    def _expiration(self, now: int) -> int:
        return now + (self.seconds if self.seconds > 0 else DEFAULT_TIMEOUT)

    def acquire(self, conn: sa.Connection | None = None, take_over: str | None = None) -> bool:
        """Laravel's acquire. `take_over`: an owner prefix (a job token) whose lock we may take
        even before it expires, because it belongs to an earlier delivery of our own job."""
        now = int(time.time())
        expiration = self._expiration(now)
        t = cache_locks.c
        try:
            with self._tx(conn) as c:
                c.execute(cache_locks.insert().values(key=self.name, owner=self.owner, expiration=expiration))
            acquired = True
        except sa.exc.IntegrityError:
            takeable = [t.owner == self.owner, t.expiration <= now]
            if take_over:
                takeable.append(t.owner.startswith(take_over, autoescape=True))
            with self._tx(conn) as c:
                res = c.execute(cache_locks.update()
                                .where(t.key == self.name, sa.or_(*takeable))
                                .values(owner=self.owner, expiration=expiration))
            acquired = res.rowcount >= 1
        if random.randint(1, LOTTERY[1]) <= LOTTERY[0]:
            self._sweep(conn, now)
        return acquired

    def _sweep(self, conn: sa.Connection | None, now: int) -> None:
        """Housekeeping only: the range DELETE can deadlock with other processes' inserts
        (InnoDB gap locks); losing a sweep is harmless, failing the lock we just took is not."""
        try:
            with self._tx(conn) as c:
                c.execute(cache_locks.delete().where(cache_locks.c.expiration <= now))
        except sa.exc.OperationalError:
            pass  # _tx's `begin()` already rolled the sweep back

    def renew(self, conn: sa.Connection | None = None) -> bool:
        """Move the expiration `seconds` ahead if we still own the lock; False if someone else
        does (or nobody: it lapsed and was swept). Unlike Laravel's `refresh()` an expired lock
        that is still ours is renewed too: nobody took it, so nobody ran the job meanwhile."""
        t = cache_locks.c
        with self._tx(conn) as c:
            res = c.execute(cache_locks.update().where(t.key == self.name, t.owner == self.owner)
                            .values(expiration=self._expiration(int(time.time()))))
        # rowcount counts matched rows (SQLAlchemy's MySQL dialects set CLIENT.FOUND_ROWS), so a
        # second renewal within one second, which changes nothing, still counts as ours.
        return res.rowcount >= 1

    def release_statement(self) -> sa.Delete:
        """The release as a statement, to run inside another transaction (e.g. the job's commit)."""
        t = cache_locks.c
        return cache_locks.delete().where(t.key == self.name, t.owner == self.owner)

    def release(self, conn: sa.Connection | None = None) -> bool:
        """Delete the lock only if we still own it (an expired lock may belong to someone else now)."""
        with self._tx(conn) as c:
            return c.execute(self.release_statement()).rowcount >= 1

    def owner_now(self) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(cache_locks.c.owner).where(cache_locks.c.key == self.name)).scalar()
