"""The publishing loop. For each item, in row order:

    wait until the queue has room → one transaction: claim the dedup row (skip if it exists),
    publish and wait for the broker's confirm, (--failed: delete the failed_jobs row), commit
    → move the checkpoint past the row

A failed publish rolls the dedup row back; a stop request (Ctrl-C, SIGTERM) is honoured between
items, never inside one, so the checkpoint names exactly the rows whose job went out."""
from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import sqlalchemy as sa

from workers.queue import broker, dedup
from workers import db
from workers.settings import Settings
from workers.commands.reprocess.checkpoint import Checkpoint
from workers.commands.reprocess.gauge import QueueGauge
from workers.commands.reprocess.targets import Item

log = logging.getLogger("workers.commands.reprocess")

PUBLISHED, WOULD_PUBLISH, ALREADY_QUEUED, NOT_SENT = "published", "would publish", "already queued", "not sent"
PROBLEMS_KEPT = 20          # the report lists this many rows that could not be sent


@dataclass
class Report:
    job: str
    mode: str
    dry_run: bool = False
    rows: int = 0                       # rows this run had to go through (after a checkpoint)
    counts: Counter = field(default_factory=Counter)
    problems: list[tuple[int, str]] = field(default_factory=list)   # (row id, why not sent)
    stopped: str | None = None          # None: complete; "limit" or "interrupted"
    resumed: dict | None = None         # the checkpoint a resumed run started from
    waits: int = 0
    waited: float = 0.0
    peak_depth: int = 0
    seconds: float = 0.0


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current item; a second SIGINT aborts."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        def handler(signum, _frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            log.warning("stopping after the current job (Ctrl-C again to abort)")
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def run(settings: Settings, target, *, dry_run: bool = False, limit: int | None = None,
        fresh: bool = False, progress: bool = True, stop: StopRequest | None = None) -> Report:
    """Go through `target`'s rows (see targets.py) and publish their jobs; returns what happened."""
    stop = stop or StopRequest()
    started = time.monotonic()
    engine = db.engine_for(settings.database_url)
    report = Report(target.job.queue, target.mode, dry_run)
    # the broker first: if it is down, no checkpoint of a run that never started is left behind
    amqp = None if dry_run else broker.connect(settings.amqp_url, heartbeat=settings.heartbeat)
    checkpoint = _checkpoint(settings, target, dry_run, fresh)
    try:
        if checkpoint.resumed:
            report.resumed = dict(checkpoint.state)
        else:
            checkpoint.start(target.high_water(engine), db.now().isoformat(sep=" "))
        after, upto = checkpoint.state["cursor"], checkpoint.state["high_water"]
        report.rows = target.count(engine, after, upto)
        with _progress_bar(report, limit, progress) as bar:
            items = target.items(engine, after, upto)
            if amqp is None:
                _preview(items, engine, report, limit, bar)
            else:
                _publish(items, engine, amqp[1], settings, checkpoint, report, limit, bar, stop)
        if report.stopped is None and not dry_run:
            checkpoint.finish()
    finally:
        checkpoint.close()
        if amqp is not None:
            _close(amqp[0])
        report.seconds = time.monotonic() - started
    return report


def _close(connection) -> None:
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - already gone: nothing left to flush
        pass


def run_key(settings: Settings, target) -> dict:
    """What identifies 'the same command' for the checkpoint (the limit is per invocation)."""
    since = getattr(target, "since", None)
    return {"database": settings.database_url, "job": target.job.queue, "mode": target.mode,
            "since": since.isoformat() if since else None}


def _checkpoint(settings: Settings, target, dry_run: bool, fresh: bool) -> Checkpoint:
    if not target.restartable:
        return Checkpoint.memory()
    directory = settings.reprocess_state_dir or settings.storage_root / "reprocess"
    if dry_run:
        return Checkpoint.memory() if fresh else Checkpoint.peek(directory, run_key(settings, target))
    return Checkpoint.open(directory, run_key(settings, target), fresh)


@contextmanager
def _progress_bar(report: Report, limit: int | None, enabled: bool):
    from tqdm import tqdm
    total = min(report.rows, limit) if limit is not None else report.rows
    bar = tqdm(total=total, unit="job", desc=f"{report.job} {report.mode}", file=sys.stderr,
               disable=not enabled, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _limit_reached(report: Report, limit: int | None, counted: str) -> bool:
    return limit is not None and report.counts[counted] >= limit


def _preview(items: Iterator[Item], engine: sa.Engine, report: Report, limit: int | None, bar) -> None:
    """--dry-run: what a real run would do now, reading only."""
    with engine.connect() as conn:
        for item in items:
            if _limit_reached(report, limit, WOULD_PUBLISH):
                report.stopped = "limit"
                return
            if item.problem:
                outcome = _not_sent(report, item)
            elif item.data is not None and dedup.queued(conn, item.class_name, item.data):
                outcome = ALREADY_QUEUED
            else:
                outcome = WOULD_PUBLISH
            report.counts[outcome] += 1
            bar.update()


def _publish(items: Iterator[Item], engine: sa.Engine, channel, settings: Settings, checkpoint: Checkpoint,
             report: Report, limit: int | None, bar, stop: StopRequest) -> None:
    gauges: dict[str, QueueGauge] = {}

    def on_wait(queue: str, depth: int, first: bool) -> None:
        bar.set_postfix_str(f"waiting: {queue} has {depth} ready", refresh=True)
        if first and bar.disable:
            log.info("queue %s has %d ready messages (limit %d): waiting for its consumers",
                     queue, depth, settings.reprocess_max_queue_depth)

    def gauge(queue: str) -> QueueGauge:
        if queue not in gauges:
            broker.declare_queue(channel, queue)     # as the driver does before its first publish
            gauges[queue] = QueueGauge(channel, queue, settings.reprocess_max_queue_depth,
                                       settings.reprocess_poll_interval, stop, on_wait)
        return gauges[queue]

    try:
        with engine.connect() as conn:      # one connection: no pool checkout and ping per job
            _publish_items(items, conn, channel, gauge, checkpoint, report, limit, bar, stop)
    finally:
        report.waits = sum(g.waits for g in gauges.values())
        report.waited = sum(g.waited for g in gauges.values())
        report.peak_depth = max((g.peak for g in gauges.values()), default=0)


def _publish_items(items: Iterator[Item], conn: sa.Connection, channel, gauge, checkpoint: Checkpoint,
                   report: Report, limit: int | None, bar, stop: StopRequest) -> None:
    for item in items:
        if stop():
            report.stopped = "interrupted"
            return
        if _limit_reached(report, limit, PUBLISHED):
            report.stopped = "limit"
            return
        outcome = _send(item, conn, channel, gauge, report)
        if outcome is None:
            report.stopped = "interrupted"
            return
        checkpoint.advance(item.cursor, outcome)
        report.counts[outcome] += 1
        bar.set_postfix_str("", refresh=False)
        bar.update()


def _send(item: Item, conn: sa.Connection, channel, gauge, report: Report) -> str | None:
    """One item's outcome; None when a stop was requested while waiting for room."""
    if item.problem:
        return _not_sent(report, item)
    room = gauge(item.queue)
    if not room.wait_for_room():
        return None
    if not dedup.claim_and_publish(conn, channel, item.class_name, item.data, item.queue, item.message,
                                   then=item.on_sent):
        return ALREADY_QUEUED
    room.sent()
    return PUBLISHED


def _not_sent(report: Report, item: Item) -> str:
    if len(report.problems) < PROBLEMS_KEPT:
        report.problems.append((item.cursor, item.problem))
    return NOT_SENT


# --- the printed summary --------------------------------------------------------------------------

def print_report(report: Report, settings: Settings, out=sys.stdout) -> None:
    flag = {"offline-source": "--where-source offline"}.get(report.mode, f"--{report.mode}")
    head = f"reprocess {report.job} {flag}{' (dry run: nothing was published)' if report.dry_run else ''}"
    print(f"{head}: {report.rows} rows to go through", file=out)
    if report.resumed:
        earlier = _counts(report.resumed["counts"]) or "nothing sent yet"
        print(f"  resumed a run started {report.resumed['started_at']} after row id {report.resumed['cursor']} "
              f"(earlier: {earlier})", file=out)
    for outcome in (PUBLISHED, WOULD_PUBLISH, ALREADY_QUEUED, NOT_SENT):
        if report.counts[outcome] or outcome == (WOULD_PUBLISH if report.dry_run else PUBLISHED):
            note = " (dedup row exists: queued or running)" if outcome == ALREADY_QUEUED else ""
            print(f"  {outcome}: {report.counts[outcome]}{note}", file=out)
    for row_id, why in report.problems:
        print(f"    row {row_id}: {why}", file=out)
    if report.counts[NOT_SENT] > len(report.problems):
        print(f"    ... and {report.counts[NOT_SENT] - len(report.problems)} more", file=out)
    if report.waits:
        print(f"  waited for consumers: {report.waits} times, {report.waited:.1f} s "
              f"(ready messages kept <= {settings.reprocess_max_queue_depth}; peak seen {report.peak_depth})",
              file=out)
    done = sum(report.counts.values())
    rate = f", {done / report.seconds:.1f}/s" if report.seconds > 0 and done else ""
    print(f"  took {report.seconds:.1f} s{rate}", file=out)
    if report.stopped and not report.dry_run:
        why = "--limit reached" if report.stopped == "limit" else "interrupted"
        hint = ("run the same command again to continue (--fresh starts over)"
                if report.mode != "failed" else "run it again for the rest")
        print(f"stopped ({why}): {hint}", file=out)


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def parse_since(text: str) -> dt.datetime:
    """--since: YYYY-MM-DD or an ISO date and time, in UTC like the tables' timestamps."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DD HH:MM)") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value
