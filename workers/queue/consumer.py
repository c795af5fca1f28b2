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

Outcomes follow Laravel's Worker (docs/laravel-wire.md), decided by policy.py: an exception is retried with
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
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Any, Callable

import pika.exceptions
import sqlalchemy as sa

from workers.queue import broker, dedup
from workers import db
from workers.jobs import Context, FollowUp, JobFailed, JobReleased, image_id_of
from workers.laravel import (
    attempts_from_headers, build_chain_payload, decode_payload, message_properties, next_chain_message,
)
from workers.queue import policy
from workers.queue.failures import record_failure
from workers.queue.policy import DATABASE_UNAVAILABLE
from workers.queue.idle import IdleWork
from workers.queue.leases import Lease, LeasePolicy
from workers.queue.locks import DatabaseLock, job_owner, job_token
from workers.queue.metrics import ConsumerMetrics
from workers.settings import Settings, get_settings, resolve

log = logging.getLogger("workers.queue.consumer")

AMQP_ERRORS = (pika.exceptions.AMQPError, ConnectionError, OSError)
EXIT_TIMEOUT = 1                        # Worker::kill(EXIT_ERROR)


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
                wait = policy.backoff(failures)
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
                                "attempt": attempts_from_headers(d.headers)}
        job = None
        try:
            job, verdict = self._handle(d, info)
        except DATABASE_UNAVAILABLE as exc:      # from our own reads and writes, not the handler's
            verdict = policy.Verdict("requeue", "requeued", error=exc)
        if verdict.action == "requeue":          # the longer the outage lasts, the longer the wait
            self._drop_connection()
            self.outages += 1
            verdict = policy.database_unavailable(verdict.error, self.outages)
        else:
            self.outages = 0
        self._carry_out(d, job, verdict, info)
        info["outcome"] = verdict.outcome
        info["ms"] = round((time.monotonic() - t0) * 1000, 1)
        self.metrics.observe(verdict.outcome, time.monotonic() - t0)
        print(json.dumps(info, default=str), flush=True)

    def _handle(self, d: Delivery, info: dict) -> tuple[Any, policy.Verdict]:
        """Run one delivery up to its verdict (a successful job is committed and its follow-ups
        published by then; the caller acks)."""
        s = self.settings
        try:
            job = decode_payload(d.body, d.headers, app_key=s.app_key, data_property=s.job_data_property)
        except Exception as exc:  # noqa: BLE001 - any undecodable body is a poison message
            return None, policy.rejected(exc)
        info.update({"class": job.class_name, "attempt": job.attempts})
        try:
            handler = self._handler(job.class_name)
            if handler is None:
                raise JobFailed(f"no handler for job class {job.class_name}")
            info["image_id"] = image_id = image_id_of(job.data)
        except Exception as exc:  # noqa: BLE001 - a broken handler setting fails the job, not us
            return job, policy.rejected(exc)
        verdict = policy.before_run(job, s, time.time())
        if verdict is not None:
            return job, verdict

        timeout = policy.job_timeout(job, s, self.queue)
        conn = self._connection()
        self._release_unreleased(conn)
        lock = DatabaseLock(self.engine, f"{s.cache_prefix}{handler.job_type}-processing:{image_id}",
                            self.leases.seconds(timeout), owner=job_owner(job.uuid))
        # a redelivery's earlier delivery died (or lost the broker) mid-job: its lock is ours to take
        heir_of = job_token(job.uuid) if d.redelivered else None
        if not lock.acquire(conn, take_over=heir_of):
            return job, policy.locked(job, s)
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
                return job, self._lock_lost(job, info)
            if state == "error":
                conn.rollback()
                return job, policy.after_error(job, value, s, time.time())
            if not self._commit(conn, job, lock):
                return job, self._lock_lost(job, info)
            unlocked = True
        finally:
            if not unlocked:
                self._unlock(conn, lock)
        self._dispatch(conn, job, value or [])
        return job, policy.succeeded()

    def _commit(self, conn: sa.Connection, job, lock: DatabaseLock) -> bool:
        """Unlock in the job's own commit, but only if the lock is still ours: the DELETE's row
        lock holds off a takeover until the commit, and a lock someone else took since our last
        renewal means they run (or ran) this image's job, so ours must not commit."""
        if conn.execute(lock.release_statement()).rowcount < 1:
            return False                                  # the caller's finally rolls back
        dedup.forget(conn, job.class_name, job.data)
        conn.commit()
        return True

    def _lock_lost(self, job, info: dict) -> policy.Verdict:
        """Another owner holds our lock: our writes are rolled back (by the caller's finally)."""
        info["error"] = "lock taken by another owner while the job ran; rolled back"
        return policy.lock_lost(job, self.settings)

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
            def message(fu=fu) -> tuple[bytes, dict]:
                msg = build_chain_payload([(fu.class_name, fu.data)], queue=fu.queue,
                                          profile=s.laravel_profile, app_key=s.app_key)
                return msg.body, msg.properties
            dedup.claim_and_publish(conn, self.ch, fu.class_name, fu.data, fu.queue, message, dedup=fu.dedup)
        nxt = next_chain_message(job, app_key=s.app_key)
        if nxt is not None:
            broker.publish(self.ch, nxt, nxt.queue or job.chain_queue or "default")

    # --- outcomes -------------------------------------------------------------------------

    def _carry_out(self, d: Delivery, job, verdict: policy.Verdict, info: dict) -> None:
        """Do what the verdict says with the message; every path ends in one ack or reject."""
        if verdict.error is not None and verdict.action != "release":
            info.setdefault("error", _error_text(verdict))
        if verdict.action == "done":
            self.ch.basic_ack(d.tag)
        elif verdict.action in ("retry", "release"):
            self._republish(d, verdict.attempts, verdict.delay)
            self.ch.basic_ack(d.tag)
        elif verdict.action == "fail":
            record_failure(self.engine, self.queue, d.body, verdict.error, job)
            self.ch.basic_reject(d.tag, requeue=False)
        elif verdict.action == "requeue":
            self._pump_for(verdict.delay)
            if not self.broken:
                self.ch.basic_reject(d.tag, requeue=True)

    def _republish(self, d: Delivery, attempts: int, delay: float) -> None:
        props = message_properties(attempts, d.correlation_id or None)
        broker.publish_raw(self.ch, d.body, props, self.queue, delay)

    def _timed_out(self, d, job, lock: DatabaseLock, info) -> None:
        """The handler thread is stuck: count the attempt, then exit (supervisor restarts us)."""
        verdict = policy.after_timeout(job, self.settings, time.time())
        info["error"] = str(verdict.error)
        outcome = verdict.outcome
        try:
            self._carry_out(d, job, verdict, info)
            lock.release()
        except Exception as err:  # noqa: BLE001 - unacked: the broker redelivers it
            outcome = "timeout"
            info["error"] += f" (and could not record it: {err})"
        info.update({"outcome": outcome, "ms": None})
        print(json.dumps(info, default=str), flush=True)
        log.error("%s; exiting so the stuck job thread dies with the process", verdict.error)
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


def _error_text(verdict: policy.Verdict) -> str:
    exc = verdict.error
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return f"database unavailable: {exc.__class__.__name__}: {str(exc)[:200]}"
    return f"{type(exc).__name__}: {exc}"[:500]


def _sleep_unless(stop: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not stop() and time.monotonic() < end:
        time.sleep(min(0.2, end - time.monotonic()))


class _JobThread:
    """One long-lived thread that runs handlers (a thread per job would cost a start each)."""

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
    if settings.face_engine == "inprocess":   # the face engine runs here: its settings, checked now
        from face_api import engine as face_engine
        face_engine.settings_or_exit(check_paths=False, program="photo-pipeline consume")
    if args.metrics_port is not None:
        settings.metrics_port = args.metrics_port
    logging.getLogger("pika").setLevel(logging.ERROR)   # we log connection trouble ourselves
    return Consumer(settings, args.queue).run()


def add_subcommands(sub) -> None:
    p = sub.add_parser("consume", help="consume one queue (like `php artisan queue:work rabbitmq --queue=NAME`)")
    p.add_argument("--queue", required=True, help="queue name, e.g. thumbnails")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.set_defaults(func=cmd_consume)
