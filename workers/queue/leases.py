"""Lock leases: a running job's lock is kept a short lease ahead instead of being held for the
job's whole timeout, so a lock whose process died lapses within one lease.

    policy = LeasePolicy.of(settings, engine)
    lock = DatabaseLock(engine, name, policy.seconds(job_timeout), owner)
    lease = policy.start(lock)                              # after lock.acquire()
    ... while the job runs, from the loop that keeps AMQP heartbeats flowing:
    lease.tick()                                            # renews when due; never raises
    if lease.lost: ...                                      # someone else owns the lock now

The job's timeout still bounds the job itself; the lease only bounds how long a dead holder
keeps others out. The runtime decides what a lost lease means (roll back, release the message).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from workers.queue.locks import DatabaseLock
from workers.queue.policy import DATABASE_UNAVAILABLE
from workers.settings import Settings

log = logging.getLogger("workers.queue.leases")



@dataclass(frozen=True)
class LeasePolicy:
    """How long a job's lock is taken for, and how often it is renewed while the job runs."""
    lease: int                  # seconds; 0: no lease, the lock is held for the job's timeout
    renew_every: float

    @classmethod
    def of(cls, settings: Settings, engine: sa.Engine) -> "LeasePolicy":
        # SQLite has one writer at a time: a renewal on a second connection would wait for the
        # job's own open transaction, i.e. until the busy timeout. Its locks keep Laravel's rule.
        lease = 0 if engine.dialect.name == "sqlite" else settings.lock_lease
        return cls(lease, settings.lock_renew_every)

    def seconds(self, timeout: float) -> int:
        """What a job's lock is taken for: the lease, or (no lease, or a shorter job timeout)
        the job's timeout, as Laravel's `Cache::lock(name, $timeout)` does."""
        return int(timeout) if self.lease <= 0 else int(min(self.lease, timeout))

    def start(self, lock: DatabaseLock) -> "Lease":
        """The lease of a lock just acquired. At least three renewals fit in one lease, so one
        slow renewal does not let the lock lapse."""
        every = min(self.renew_every, lock.seconds / 3) if self.lease > 0 else None
        return Lease(lock, every)


class Lease:
    def __init__(self, lock: DatabaseLock, every: float | None):
        self.lock, self.every = lock, every
        self.lost = False
        self.renewals = 0
        self._due = time.monotonic() + every if every else float("inf")

    def tick(self) -> None:
        """Renew the lock if a renewal is due. Cheap when not: one clock read."""
        now = time.monotonic()
        if self.lost or now < self._due:
            return
        self._due = now + self.every
        try:
            still_ours = self.lock.renew()
        except DATABASE_UNAVAILABLE as exc:
            # retried at the next tick, not taken as lost: the commit checks ownership
            log.warning("could not renew %s (%s); trying again in %.1fs", self.lock.name,
                        type(exc).__name__, self.every)
            return
        if still_ours:
            self.renewals += 1
        else:
            self.lost = True
            log.warning("lock %s is no longer ours: the job will be rolled back and released",
                        self.lock.name)
