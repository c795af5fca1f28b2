"""What becomes of a delivery: Laravel's Worker rules as pure functions of the job, the error, the
settings and the clock. The consumer loop (consumer.py) only carries out the verdict.

    verdict = before_run(job, settings, now)            # None: run it
    ... the handler runs ...
    verdict = after_error(job, exc, settings, now)      # or after_timeout / locked / lock_lost

A verdict says what to do with the message: `done` (ack), `retry` (re-publish counted, after
the job's back-off), `release` (re-publish later, not counted), `fail` (failed_jobs, reject) or
`requeue` (the database is unavailable: not the job's fault, back to the queue uncounted).

Attempts follow Laravel: a delivery's `job.attempts` is this attempt's number. Before the run a
job fails when it is already past its tries (`attempts > maxTries`) or past `retryUntil`; after
an exception it fails when this attempt was its last (`attempts >= maxTries`) or `retryUntil`
has come. `maxTries = 0` means unlimited; a payload without `maxTries` uses `PHOTO_TRIES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from workers.errors import PipelineError
from workers.jobs import JobFailed, JobReleased
from workers.settings import Settings

# A database that cannot be reached is never the job's fault: the message goes back to the queue
# uncounted, and a lease renewal that fails this way is retried, not taken as a lost lock.
DATABASE_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)

Action = Literal["done", "retry", "release", "fail", "requeue"]


class MaxAttemptsExceeded(PipelineError):
    php_class = "Illuminate\\Queue\\MaxAttemptsExceededException"


class TimeoutExceeded(PipelineError):
    php_class = "Illuminate\\Queue\\TimeoutExceededException"


@dataclass(frozen=True)
class Verdict:
    action: Action
    outcome: str                          # the label logged and counted in the metrics
    delay: float = 0.0                    # seconds before the message runs again
    attempts: int | None = None           # laravel.attempts header of the re-published copy
    error: BaseException | None = None    # what failed_jobs records (fail)


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` consecutive outages (broker or database): doubling from
    one second, capped at half a minute."""
    return min(30.0, 0.5 * 2 ** min(max(failures, 1), 6))


def job_timeout(job, settings: Settings, queue: str) -> float:
    """The payload's own `timeout`, else the queue's (PHOTO_QUEUE_TIMEOUTS, the registry's default)."""
    return job.timeout or settings.timeout_for(queue)


def attempts_exhausted(job, settings: Settings, now: float, *, ran: bool) -> bool:
    """Laravel's two checks: before the run (`ran=False`) and after an exception (`ran=True`)."""
    if job.retry_until:
        return now >= job.retry_until if ran else now > job.retry_until
    max_tries = job.max_tries if job.max_tries is not None else settings.tries
    if max_tries <= 0:
        return False
    return job.attempts >= max_tries if ran else job.attempts > max_tries


def display_name(job) -> str:
    return job.display_name or job.class_name


def before_run(job, settings: Settings, now: float) -> Verdict | None:
    if attempts_exhausted(job, settings, now, ran=False):
        exc = MaxAttemptsExceeded(f"{display_name(job)} has been attempted too many times.")
        return Verdict("fail", "failed", error=exc)
    return None


def succeeded() -> Verdict:
    return Verdict("done", "done")


def rejected(exc: BaseException) -> Verdict:
    """A message that cannot run at all (undecodable, unknown class, invalid data)."""
    return Verdict("fail", "failed", error=exc)


def after_error(job, exc: BaseException, settings: Settings, now: float) -> Verdict:
    if isinstance(exc, JobReleased):
        return release(job, exc.delay, "released")
    if isinstance(exc, JobFailed):
        return Verdict("fail", "failed", error=exc)
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return Verdict("requeue", "requeued", error=exc)
    if attempts_exhausted(job, settings, now, ran=True):
        return Verdict("fail", "failed", error=exc)
    # Worker::release(calculateBackoff): counted, the header carries this attempt
    return Verdict("retry", "retry", delay=job.backoff_for_attempt(default=settings.backoff),
                   attempts=job.attempts, error=exc)


def after_timeout(job, settings: Settings, now: float) -> Verdict:
    """The handler is stuck past its timeout: the attempt counts (Worker::kill after
    markJobAsFailedIfWillExceedMaxAttempts), and the process exits."""
    exc = TimeoutExceeded(f"{display_name(job)} has timed out.")
    if job.fail_on_timeout or attempts_exhausted(job, settings, now, ran=True):
        return Verdict("fail", "failed", error=exc)
    return Verdict("retry", "timeout", delay=0, attempts=job.attempts, error=exc)


def release(job, delay: float, outcome: str) -> Verdict:
    """Later, not counted: the header keeps the attempts this delivery came with."""
    return Verdict("release", outcome, delay=delay, attempts=job.attempts - 1)


def locked(job, settings: Settings) -> Verdict:
    """Another job holds this image's lock: try again after PHOTO_LOCK_RELEASE_DELAY."""
    return release(job, settings.lock_release_delay, "locked")


def lock_lost(job, settings: Settings) -> Verdict:
    """Our lock was taken over while the job ran: its writes are rolled back, it runs again."""
    return release(job, settings.lock_release_delay, "lock-lost")


def database_unavailable(exc: BaseException, outages: int) -> Verdict:
    return Verdict("requeue", "requeued", delay=backoff(outages), error=exc)
