"""`python -m workers consume --queue NAME`: one queue consumer, a drop-in for
`php artisan queue:work rabbitmq --queue=NAME` (one process per supervisor numproc).

For each message (prefetch 1):

    decode → checks (handler, image_id, maxTries) → lock `{QUEUE}-processing:{image_id}`
    → handler in a thread, inside a DB transaction (the I/O loop keeps heartbeats flowing and
      renews the lock's lease)
    → unlock (only if still ours), delete own dedup row, commit
    → follow-ups (dedup row + publish confirmed by the broker, one small transaction each)
      and the next chain job → ack

Locks are leases (workers/queue/leases.py): taken for `lock_lease` seconds and renewed while the job
runs, so a dead consumer's lock lapses within one lease. The owner names the job
(locks.job_owner), so a redelivered message takes over the lock of its own earlier, dead
delivery at once; a different job for the same image still waits. A job whose lock was taken
by another owner meanwhile (the renewal or the commit finds it) is rolled back and released.

Follow-ups go out after the commit so their consumers see this job's writes (publishing inside
the transaction let a Geolocation job read the image before Metadata's commit).

Outcomes follow Laravel's Worker (reference/laravel-wire.md §3.7): an exception is retried with
`backoff` through `{queue}.delay.{ms}` until `maxTries`/`retryUntil`, then recorded in failed_jobs
with the exact body and the message rejected. Bad messages (undecodable, unknown class, invalid
data) go to failed_jobs at once. JobReleased and a lock held elsewhere re-publish the body later
without counting an attempt.

Timeouts: a Python thread cannot be killed safely, so like Laravel's `kill()` the process records
the attempt (re-publish with attempts+1, or failed_jobs when none are left), acks, and exits 1;
supervisor starts a fresh one. Database outages (OperationalError and friends, from us or from a
handler) are not the job's fault: the message is requeued after a back-off, uncounted.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid as uuidlib
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any, Callable

import pika.exceptions
import sqlalchemy as sa

from workers.queue import broker, dedup
from workers import db
from workers.jobs import Context, FollowUp, JobFailed, JobReleased, image_id_of
from workers.laravel import build_chain_payload, decode_payload, next_chain_message
from workers.queue.idle import IdleWork
from workers.queue.leases import Lease, LeasePolicy
from workers.queue.locks import DatabaseLock, job_owner, job_token
from workers.queue.metrics import ConsumerMetrics
from workers.schema import failed_jobs
from workers.settings import Settings, get_settings, resolve

log = logging.getLogger("workers.queue.consumer")

AMQP_ERRORS = (pika.exceptions.AMQPError, ConnectionError, OSError)
DB_OUTAGE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DisconnectionError)
FAILED_PAYLOAD_MAX = 8 * 1024 * 1024   # below MariaDB's default max_allowed_packet (16 MB)
EXIT_TIMEOUT = 1                        # Worker::kill(EXIT_ERROR)


class MaxAttemptsExceeded(Exception):
    php_class = "Illuminate\\Queue\\MaxAttemptsExceededException"


class TimeoutExceeded(Exception):
    php_class = "Illuminate\\Queue\\TimeoutExceededException"


@dataclass
class Delivery:
    tag: int
    headers: dict | None
    correlation_id: str | None
    body: bytes
    redelivered: bool = False      # the broker delivered it before, unacked (its consumer died)


@dataclass
class Handler:
    func: Callable[[Context, dict], list]
    job_type: str          # the handler module's QUEUE: the lock's `{job-type}-processing:` prefix


class Consumer:
    def __init__(self, settings: Settings, queue: str):
        self.settings, self.queue = settings, queue
        self.engine = db.engine_for(settings.database_url)
        self.conn = self.ch = None
        self.inbox: list[Delivery] = []
        self.stopping = False
        self.broken: BaseException | None = None     # AMQP connection lost while a job ran
        self.outages = 0                               # consecutive DB outages (back-off exponent)
        self.handlers: dict[str, Handler | None] = {}
        self._db: sa.Connection | None = None
        self._db_used = 0.0
        self._unreleased: list[DatabaseLock] = []
        self._worker: _JobThread | None = None
        self.metrics = ConsumerMetrics(settings.metrics_port, queue)
        self.leases = LeasePolicy.of(settings, self.engine)
        self.idle = IdleWork(settings, queue, self.engine)

    # --- connection -------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        failures = 0
        while not self.stopping:
            try:
                self._connect()
                failures = 0
                self._loop()
            except AMQP_ERRORS as exc:
                failures += 1
                wait = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("broker connection lost (%s: %s); reconnecting in %.1fs",
                            type(exc).__name__, exc, wait)
                self._close()
                _sleep_unless(lambda: self.stopping, wait)
        self._close()
        return 0

    def _on_signal(self, signum, _frame) -> None:
        # finish the current job, then leave; an idle consumer leaves at the next loop turn
        self.stopping = True

    def _connect(self) -> None:
        self.conn, self.ch = broker.connect(self.settings.amqp_url, self.settings.heartbeat)
        self.broken = None
        self.inbox.clear()
        broker.declare_queue(self.ch, self.queue)
        self.ch.basic_consume(self.queue, self._on_message, auto_ack=False)
        log.info("consuming %s", self.queue)

    def _on_message(self, _ch, method, props, body) -> None:
        self.inbox.append(Delivery(method.delivery_tag, props.headers, props.correlation_id, body,
                                   bool(method.redelivered)))

    def _close(self) -> None:
        if self.ch is not None:
            broker.forget_channel(self.ch)
        try:
            if self.conn is not None and self.conn.is_open:
                self.conn.close()
        except Exception:  # noqa: BLE001 - already broken
            pass
        self.conn = self.ch = None

    def _loop(self) -> None:
        while not self.stopping:
            if not self.inbox:
                self.conn.process_data_events(time_limit=0.5)
                if not self.inbox:
                    self.idle.maybe_run()
                continue
            self._process(self.inbox.pop(0))
            self.idle.busy()
            if self.broken:
                raise self.broken

    def _pump(self, seconds: float) -> None:
        """Service the AMQP connection (heartbeats) for up to `seconds` (0: what is due now), or
        just sleep if it broke."""
        if self.broken or self.conn is None:
            time.sleep(seconds)
            return
        try:
            self.conn.process_data_events(time_limit=seconds)
        except AMQP_ERRORS as exc:
            self.broken = exc

    # --- one message --------------------------------------------------------------------------

    def _process(self, d: Delivery) -> None:
        t0 = time.monotonic()
        info: dict[str, Any] = {"queue": self.queue, "class": None, "image_id": None,
                                "attempt": _attempts(d.headers)}
        try:
            outcome = self._handle(d, info)
            self.outages = 0
        except DB_OUTAGE as exc:
            self._drop_connection()
            self.outages += 1
            wait = min(30.0, 0.5 * 2 ** min(self.outages, 6))
            info["error"] = f"database unavailable: {exc.__class__.__name__}: {str(exc)[:200]}"
            outcome = "requeued"
            self._pump_for(wait)
            if not self.broken:
                self.ch.basic_reject(d.tag, requeue=True)
        info["outcome"] = outcome
        info["ms"] = round((time.monotonic() - t0) * 1000, 1)
        self.metrics.observe(outcome, time.monotonic() - t0)
        print(json.dumps(info, default=str), flush=True)

    def _handle(self, d: Delivery, info: dict) -> str:
        s = self.settings
        try:
            job = decode_payload(d.body, d.headers, app_key=s.app_key, data_property=s.job_data_property)
        except Exception as exc:  # noqa: BLE001 - any undecodable body is a poison message
            return self._fail(d, None, exc, info)
        info.update({"class": job.class_name, "attempt": job.attempts})
        try:
            handler = self._handler(job.class_name)
        except Exception as exc:  # noqa: BLE001 - a broken handler setting fails the job, not us
            return self._fail(d, job, exc, info)
        if handler is None:
            return self._fail(d, job, JobFailed(f"no handler for job class {job.class_name}"), info)
        try:
            image_id = image_id_of(job.data)
        except JobFailed as exc:
            return self._fail(d, job, exc, info)
        info["image_id"] = image_id

        max_tries = job.max_tries if job.max_tries is not None else s.tries
        if (job.retry_until and time.time() > job.retry_until) or \
                (not job.retry_until and max_tries > 0 and job.attempts > max_tries):
            return self._fail(d, job, MaxAttemptsExceeded(f"{_name(job)} has been attempted too many times."), info)

        timeout = job.timeout or s.timeout_for(self.queue)
        conn = self._connection()
        self._release_unreleased(conn)
        lock = DatabaseLock(self.engine, f"{s.cache_prefix}{handler.job_type}-processing:{image_id}",
                            self.leases.seconds(timeout), owner=job_owner(job.uuid))
        # a redelivery's earlier delivery died (or lost the broker) mid-job: its lock is ours to take
        heir_of = job_token(job.uuid) if d.redelivered else None
        if not lock.acquire(conn, take_over=heir_of):
            return self._release(d, job, s.lock_release_delay, "locked")
        lease = self.leases.start(lock)
        unlocked = False
        try:
            conn.begin()
            ctx = Context(settings=s, db=conn, engine=self.engine, queue=self.queue,
                          attempt=job.attempts)
            state, value = self._run_in_thread(handler.func, ctx, job.data, timeout, lease)
            if state == "timeout":
                self._timed_out(d, job, lock, info)       # does not return
            if self.broken:
                raise self.broken                         # cannot ack: the broker redelivers
            if lease.lost:
                return self._lock_lost(d, job, info)
            if state == "error":
                conn.rollback()
                return self._on_exception(d, job, value, info)
            if not self._commit(conn, job, lock):
                return self._lock_lost(d, job, info)
            unlocked = True
        finally:
            if not unlocked:
                self._unlock(conn, lock)
        self._dispatch(conn, job, value or [])
        self.ch.basic_ack(d.tag)
        return "done"

    def _commit(self, conn: sa.Connection, job, lock: DatabaseLock) -> bool:
        """Unlock in the job's own commit, but only if the lock is still ours: the DELETE's row
        lock holds off a takeover until the commit, and a lock someone else took since our last
        renewal means they run (or ran) this image's job, so ours must not commit."""
        if conn.execute(lock.release_statement()).rowcount < 1:
            return False                                  # the caller's finally rolls back
        _delete_dedup(conn, job)
        conn.commit()
        return True

    def _lock_lost(self, d: Delivery, job, info: dict) -> str:
        """Another owner holds our lock: our writes are rolled back (by the caller's finally)
        and the message goes back uncounted, to run again once that owner is done."""
        info["error"] = "lock taken by another owner while the job ran; rolled back"
        return self._release(d, job, self.settings.lock_release_delay, "lock-lost")

    def _unlock(self, conn: sa.Connection, lock: DatabaseLock) -> None:
        try:
            if conn.in_transaction():
                conn.rollback()
            lock.release(conn)
        except Exception as exc:  # noqa: BLE001 - retried before the next job (it also expires)
            log.warning("could not release %s: %s", lock.name, exc)
            self._unreleased.append(lock)

    def _release_unreleased(self, conn: sa.Connection) -> None:
        """Locks we could not release during a DB outage: free them now, or our own redelivered
        job would find its image locked until the lock expires."""
        while self._unreleased:
            self._unreleased[0].release(conn)
            self._unreleased.pop(0)

    def _connection(self) -> sa.Connection:
        """One connection per process, reused across jobs (no pool ping/reset round trips per job);
        after 30 s idle it goes back to the pool and a pinged one is taken."""
        now = time.monotonic()
        if self._db is not None and (now - self._db_used > 30 or self._db.invalidated or self._db.closed):
            self._drop_connection()
        if self._db is None:
            self._db = self.engine.connect()
        self._db_used = now
        return self._db

    def _drop_connection(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except Exception:  # noqa: BLE001 - the server may be gone
                pass
        self._db = None

    def _run_in_thread(self, func, ctx, data, timeout: float, lease: Lease) -> tuple[str, Any]:
        """Run the handler on the job thread; meanwhile keep the AMQP connection serviced and
        the lock's lease renewed. A lost lease does not stop the thread (Python cannot): the
        caller rolls its work back when it returns."""
        if self._worker is None:
            self._worker = _JobThread()
        self._worker.submit(func, ctx, data)
        deadline = time.monotonic() + timeout
        while True:
            result = self._worker.result(max(0.0, min(0.1, deadline - time.monotonic())))
            if result is not None:
                return result
            if time.monotonic() >= deadline:
                return "timeout", None
            self._pump(0)             # non-blocking: heartbeats, without delaying the job's end
            lease.tick()

    def _dispatch(self, conn: sa.Connection, job, follow_ups: list[FollowUp]) -> None:
        """After the job's commit (a follow-up must see what this job wrote), before the ack.

        Each follow-up claims its dedup row and is published in one small transaction: a failed
        publish rolls the row back. A crash anywhere before the ack redelivers this job, whose
        handler is idempotent; a follow-up already published keeps its row, so it is not sent twice."""
        s = self.settings
        for fu in follow_ups:
            with conn.begin():
                if fu.dedup and not dedup.claim(conn, fu.class_name, fu.data):
                    continue          # already queued or running
                msg = build_chain_payload([(fu.class_name, fu.data)], queue=fu.queue,
                                          profile=s.laravel_profile, app_key=s.app_key)
                broker.publish(self.ch, msg, fu.queue)
        nxt = next_chain_message(job, app_key=s.app_key)
        if nxt is not None:
            broker.publish(self.ch, nxt, nxt.queue or job.chain_queue or "default")

    # --- outcomes -------------------------------------------------------------------------

    def _on_exception(self, d, job, exc: BaseException, info) -> str:
        if isinstance(exc, JobReleased):
            return self._release(d, job, exc.delay, "released")
        if isinstance(exc, JobFailed):
            return self._fail(d, job, exc, info)
        if isinstance(exc, DB_OUTAGE):
            raise exc
        info["error"] = f"{type(exc).__name__}: {exc}"[:500]
        if self._no_attempts_left(job):
            return self._fail(d, job, exc, info)
        # Worker: release(calculateBackoff): counted (header = attempts())
        self._republish(d, job.attempts, job.backoff_for_attempt(default=self.settings.backoff))
        self.ch.basic_ack(d.tag)
        return "retry"

    def _no_attempts_left(self, job) -> bool:
        max_tries = job.max_tries if job.max_tries is not None else self.settings.tries
        if job.retry_until:
            return job.retry_until <= time.time()
        return max_tries > 0 and job.attempts >= max_tries

    def _release(self, d, job, delay: float, outcome: str) -> str:
        """Later, not counted: the header keeps the attempts this delivery came with."""
        self._republish(d, job.attempts - 1, delay)
        self.ch.basic_ack(d.tag)
        return outcome

    def _republish(self, d: Delivery, attempts: int, delay: float) -> None:
        props: dict[str, Any] = {"content_type": "application/json", "delivery_mode": 2}
        if d.correlation_id:
            props["correlation_id"] = d.correlation_id
        props["headers"] = {"laravel": {"attempts": int(attempts)}}
        broker.publish_raw(self.ch, d.body, props, self.queue, delay)

    def _fail(self, d: Delivery, job, exc: BaseException, info: dict) -> str:
        """failed_jobs row (exact body) + dedup row gone, then reject without requeue."""
        info.setdefault("error", f"{type(exc).__name__}: {exc}"[:500])
        record_failure(self.engine, self.queue, d.body, exc, job)
        self.ch.basic_reject(d.tag, requeue=False)
        return "failed"

    def _timed_out(self, d, job, lock: DatabaseLock, info) -> None:
        """The handler thread is stuck: count the attempt, then exit (supervisor restarts us)."""
        exc = TimeoutExceeded(f"{_name(job)} has timed out.")
        info["error"] = str(exc)
        try:
            if self._no_attempts_left(job) or job.fail_on_timeout:
                outcome = self._fail(d, job, exc, info)
            else:
                self._republish(d, job.attempts, 0)
                self.ch.basic_ack(d.tag)
                outcome = "timeout"
            lock.release()
        except Exception as err:  # noqa: BLE001 - unacked: the broker redelivers it
            outcome = "timeout"
            info["error"] += f" (and could not record it: {err})"
        info.update({"outcome": outcome, "ms": None})
        print(json.dumps(info, default=str), flush=True)
        log.error("%s; exiting so the stuck job thread dies with the process", exc)
        self._close()
        sys.stderr.flush()
        os._exit(EXIT_TIMEOUT)

    def _pump_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._pump(min(left, 0.5))

    def _handler(self, class_name: str) -> Handler | None:
        if class_name not in self.handlers:
            spec = self.settings.job_handlers.get(class_name)
            self.handlers[class_name] = _load_handler(spec, self.queue) if spec else None
        return self.handlers[class_name]


# --- helpers --------------------------------------------------------------------------------

def _load_handler(spec: str, queue: str) -> Handler:
    module, func = resolve(spec)
    return Handler(func, getattr(module, "QUEUE", queue))


def _attempts(headers) -> int:
    from workers.laravel import attempts_from_headers
    return attempts_from_headers(headers)


def _name(job) -> str:
    return job.display_name or job.class_name


def _delete_dedup(conn: sa.Connection, job) -> None:
    if job is not None:
        dedup.forget(conn, job.class_name, job.data)


def exception_text(exc: BaseException) -> str:
    """PHP's Throwable string: `Class: message in file:line`, `Stack trace:`, `#0 ...`, `#n {main}`."""
    cls = getattr(exc, "php_class", None) or (
        type(exc).__qualname__ if type(exc).__module__ == "builtins"
        else f"{type(exc).__module__}.{type(exc).__qualname__}")
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else f"{__file__}:0"
    lines = [f"{cls}: {exc} in {where}", "Stack trace:"]
    for i, f in enumerate(reversed(frames)):
        lines.append(f"#{i} {f.filename}({f.lineno}): {f.name}()")
    lines.append(f"#{len(frames)} {{main}}")
    return "\n".join(lines)


def record_failure(engine: sa.Engine, queue: str, body: bytes, exc: BaseException, job=None) -> None:
    """DatabaseUuidFailedJobProvider::log, plus deleting the job's dedup row, in one transaction."""
    payload = body.decode("utf-8", "replace")
    note = ""
    if len(payload) > FAILED_PAYLOAD_MAX:
        note = f"\n(payload truncated from {len(payload)} characters)"
        payload = payload[:FAILED_PAYLOAD_MAX]
    uuid = job.uuid if job is not None and isinstance(job.uuid, str) and job.uuid else None
    if uuid is None:
        try:
            candidate = json.loads(body).get("uuid")
            uuid = candidate if isinstance(candidate, str) and candidate else None
        except Exception:  # noqa: BLE001 - garbage body
            pass
    ins = (failed_jobs.insert().prefix_with("IGNORE", dialect="mysql").prefix_with("OR IGNORE", dialect="sqlite")
           .values(uuid=(uuid or str(uuidlib.uuid4()))[:255], connection="rabbitmq", queue=queue,
                   payload=payload, exception=exception_text(exc) + note, failed_at=db.now()))
    with engine.begin() as conn:
        conn.execute(ins)     # IGNORE: a redelivery after a crash must not fail on the unique uuid
        _delete_dedup(conn, job)


def _sleep_unless(stop: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(min(0.2, end - time.monotonic()))


class _JobThread:
    """One long-lived thread that runs handlers (a thread per job costs ~0.4 ms of hand-offs)."""

    def __init__(self):
        self._jobs: SimpleQueue = SimpleQueue()
        self._results: SimpleQueue = SimpleQueue()
        threading.Thread(target=self._run, name="job", daemon=True).start()

    def _run(self) -> None:
        while True:
            func, ctx, data = self._jobs.get()
            try:
                self._results.put(("ok", func(ctx, data)))
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                self._results.put(("error", exc))

    def submit(self, func, ctx, data) -> None:
        self._jobs.put((func, ctx, data))

    def result(self, wait: float) -> tuple[str, Any] | None:
        try:
            return self._results.get(timeout=wait) if wait > 0 else self._results.get_nowait()
        except Empty:
            return None


# --- CLI ------------------------------------------------------------------------------------

def cmd_consume(args) -> int:
    settings = get_settings()
    settings.check_paths()
    if args.metrics_port is not None:
        settings.metrics_port = args.metrics_port
    logging.getLogger("pika").setLevel(logging.ERROR)   # we log connection trouble ourselves
    return Consumer(settings, args.queue).run()


def add_subcommands(sub) -> None:
    p = sub.add_parser("consume", help="consume one queue (like `php artisan queue:work rabbitmq --queue=NAME`)")
    p.add_argument("--queue", required=True, help="queue name, e.g. thumbnails")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.set_defaults(func=cmd_consume)
