"""A rate limiter shared by every process on every box: its state is one row of `rate_limits`.

    limiter = RateLimiter(engine, "nominatim", interval=1.0)
    limiter.acquire()          # sleeps until this process owns the next slot, or raises Paused
    ... one request ...
    limiter.success()          # or limiter.pause(retry_after) on 403/429

Slots: in a short transaction the row is locked (MySQL `SELECT ... FOR UPDATE`; SQLite: a first
write takes the database's single write lock), the slot is max(now, next_at), next_at becomes
slot + interval, commit; then the caller sleeps until its slot. Two reservations can therefore
never be closer than `interval`, however many processes compete.

Clock: every comparison uses the *database's* clock (MySQL `NOW(6)`, read after the row lock is
held - NOW() is fixed when a statement starts, so it must not be read by the locking statement
itself). Only the remaining wait (slot - db_now) is turned into a local `time.monotonic()` sleep,
so boxes whose clocks disagree still share one schedule. SQLite is a single-box database, so
there `time.time()` is the database clock.

Pauses: `pause()` (403/429) sets paused_until for everyone, longer on each strike in a row;
`acquire()` raises `Paused(remaining)` while it lasts - also after sleeping, so processes that
reserved a slot before the pause do not send. `success()` clears the strikes."""
from __future__ import annotations

import time

import sqlalchemy as sa

from .schema import rate_limits as t


class Paused(Exception):
    """The limiter is paused (blocked by the server); try again in `remaining` seconds."""

    def __init__(self, remaining: float, reason: str = "paused"):
        super().__init__(f"{reason}: {remaining:.1f}s left")
        self.remaining = remaining


class TooLong(Paused):
    """The next free slot is further away than the caller wants to wait."""


def db_time(conn: sa.Connection) -> float:
    """Unix time by the database's clock (see the module docstring)."""
    if conn.dialect.name == "sqlite":
        return time.time()
    return float(conn.execute(sa.text("SELECT UNIX_TIMESTAMP(NOW(6))")).scalar())


class RateLimiter:
    def __init__(self, engine: sa.Engine, name: str, interval: float = 1.0,
                 pause_base: float = 60.0, pause_max: float = 3600.0):
        self.engine, self.name, self.interval = engine, name, interval
        self.pause_base, self.pause_max = pause_base, pause_max
        self._have_row = False

    # --- internals ------------------------------------------------------------------------------

    def _ensure_row(self) -> None:
        if self._have_row:
            return
        try:
            with self.engine.begin() as conn:
                if not conn.execute(sa.select(t.c.name).where(t.c.name == self.name)).first():
                    conn.execute(t.insert().values(name=self.name, next_at=0.0, paused_until=0.0,
                                                   strikes=0))
        except sa.exc.IntegrityError:
            pass                                    # another process inserted it first
        self._have_row = True

    def _locked(self, conn: sa.Connection) -> sa.Row:
        """Lock the row for this transaction and return it."""
        if conn.dialect.name == "sqlite":
            # pysqlite opens a deferred transaction; a first (no-op) write takes the write lock
            # now, so the read below cannot interleave with another process's reservation.
            conn.execute(t.update().where(t.c.name == self.name).values(strikes=t.c.strikes))
        return conn.execute(sa.select(t).where(t.c.name == self.name).with_for_update()).one()

    # --- public ---------------------------------------------------------------------------------

    def reserve(self, max_wait: float | None = None) -> float:
        """Reserve the next slot; returns when it starts, on the local `time.monotonic()` clock.

        Raises Paused while paused, TooLong (nothing reserved) if the slot is beyond max_wait."""
        self._ensure_row()
        with self.engine.begin() as conn:
            row = self._locked(conn)
            now = db_time(conn)
            local = time.monotonic()        # the same instant locally, give or take a round trip
            if row.paused_until > now:
                raise Paused(row.paused_until - now)
            slot = max(now, row.next_at)
            if max_wait is not None and slot - now > max_wait:
                raise TooLong(slot - now, "no free slot soon")
            conn.execute(t.update().where(t.c.name == self.name).values(next_at=slot + self.interval))
        return local + (slot - now)

    def acquire(self, max_wait: float | None = None) -> None:
        """Wait for our own slot; raise Paused if a pause began meanwhile."""
        remaining = self.reserve(max_wait) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
            self.check()

    def check(self) -> None:
        """Raise Paused if the limiter is paused now."""
        with self.engine.connect() as conn:
            paused_until = conn.execute(sa.select(t.c.paused_until).where(t.c.name == self.name)).scalar()
            now = db_time(conn)
        if paused_until is not None and paused_until > now:
            raise Paused(paused_until - now)

    def pause(self, retry_after: float | None = None) -> float:
        """Record a 403/429: pause everyone. Returns the pause length in seconds.

        Length: the server's Retry-After if sent (at most a day), else pause_base doubled per
        strike in a row, capped at pause_max. A pause never shortens a longer one in force."""
        self._ensure_row()
        with self.engine.begin() as conn:
            row = self._locked(conn)
            now = db_time(conn)
            strikes = row.strikes + 1
            if retry_after is not None and retry_after > 0:
                delay = min(float(retry_after), 86400.0)
            else:
                delay = min(self.pause_base * 2 ** min(strikes - 1, 30), self.pause_max)
            until = max(row.paused_until, now + delay)
            conn.execute(t.update().where(t.c.name == self.name).values(
                strikes=strikes, paused_until=until, next_at=max(row.next_at, until)))
        return until - now

    def success(self) -> None:
        """A request went through: forget past strikes (a no-op write when there are none)."""
        with self.engine.begin() as conn:
            conn.execute(t.update().where((t.c.name == self.name) & (t.c.strikes > 0))
                         .values(strikes=0))

    def state(self) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(t.c.name == self.name)).first()
            now = db_time(conn)
        return {"now": now, **(row._asdict() if row else {})}
