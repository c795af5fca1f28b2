"""A rate limiter shared by every process on every box: its state is one row of `rate_limits`.

    limiter = RateLimiter(engine, "nominatim", interval=1.0)
    with limiter.acquire(max_wait=20):     # waits for the slot; Paused / TooLong otherwise
        ... one request ...
    limiter.success()                      # or limiter.pause(retry_after) on 403/429

One request at a time, and the next one starts at least `interval` after the previous one
*ended*: taking the slot sets next_at to a lease (now + lease, in case the holder dies), giving it
back sets next_at = now + interval. Since a request has surely reached the server before its
answer came back, the server never sees two requests closer than `interval`, whatever the
processes' scheduling latency (slots spaced by their *start* arrive closer than that at the
server on a loaded box). Nominatim's policy also asks for a single thread: this is one, installation-wide.
Throughput is 1 / (interval + response time).

Each step is a short transaction: lock the row (MySQL `SELECT ... FOR UPDATE`; SQLite: a first
write takes the database's single write lock), read the time, update, commit. No lock is held
during the HTTP request itself.

Clock: every comparison uses the *database's* clock (MySQL `NOW(6)`, read after the row lock is
held - NOW() is fixed when a statement starts, so the locking statement itself cannot read it).
Only a wait (next_at - db_now) becomes a local sleep, so boxes whose clocks disagree still share
one schedule. SQLite is a single-box database: there `time.time()` is the database clock.

Pauses: `pause()` (403/429) sets paused_until for everyone, longer on each strike in a row;
taking the slot raises `Paused(remaining)` while it lasts. `success()` clears the strikes."""
from __future__ import annotations

import time

import sqlalchemy as sa

from workers.errors import PipelineError
from workers.schema import rate_limits as t

LEASE_POLL = 0.05       # seconds between looks at a slot another process is using


class Paused(PipelineError):
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

    def try_acquire(self, lease: float = 60.0) -> "Slot | float":
        """Take the slot if it is free now (a Slot: send at once, then release it), else the
        seconds until it frees (nothing taken). Raises Paused while paused."""
        if lease <= self.interval:
            raise ValueError("a lease is recognised by being longer than the interval")
        self._ensure_row()
        with self.engine.begin() as conn:
            row = self._locked(conn)
            now = db_time(conn)
            if row.paused_until > now:
                raise Paused(row.paused_until - now)
            if row.next_at > now:
                wait = row.next_at - now
                # Further than one interval away means a lease: the holder is mid-request and
                # will give the slot back soon; look again shortly instead of sleeping it out.
                return min(wait, LEASE_POLL) if wait > self.interval else wait
            token = now + lease
            conn.execute(t.update().where(t.c.name == self.name).values(next_at=token))
        return Slot(self, token)

    def acquire(self, max_wait: float | None = None, lease: float = 60.0) -> "Slot":
        """Wait for the slot; TooLong if that would take over max_wait seconds."""
        start = time.monotonic()
        while not isinstance(got := self.try_acquire(lease), Slot):
            if max_wait is not None and time.monotonic() - start + got > max_wait:
                raise TooLong(got, "no free slot soon")
            time.sleep(got)
        return got

    def _release(self, token: float) -> None:
        with self.engine.begin() as conn:
            row = self._locked(conn)
            nxt = db_time(conn) + self.interval
            # Not our lease any more (it expired and someone else holds the slot, or a pause
            # pushed it): never shorten theirs. Compared loosely: drivers may send doubles
            # with 15 significant digits (PyMySQL), i.e. ~10 us at today's unix times.
            if abs(row.next_at - token) > 0.001:
                nxt = max(nxt, row.next_at)
            conn.execute(t.update().where(t.c.name == self.name).values(next_at=nxt))

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


class Slot:
    """The right to send one request now; `release()` (or leaving the `with`) when it is over."""

    def __init__(self, limiter: RateLimiter, token: float):
        self.limiter, self.token, self.released = limiter, token, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._release(self.token)

    def __enter__(self) -> "Slot":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
