"""Work a consumer does while its queue is empty, apart from the worker loop.

The faces queue's automatic rematch (workers/faces/filing.py) runs one bounded step per face job;
on a quiet library no face job comes, so a reviewer's approvals would wait for the next upload.
`IdleWork` runs the queue's idle task (settings.idle_tasks: queue -> "module:function") when the
consumer has had nothing to do for `idle_interval` seconds, in its own short transaction, on the
consumer's thread (no job is running then, and a step is bounded: heartbeats keep flowing).

An idle task is `func(conn, engine, settings) -> bool`: True when it has more to do right away.
"""
from __future__ import annotations

import logging
import time

import sqlalchemy as sa

from workers.settings import resolve

log = logging.getLogger("workers")


class IdleWork:
    def __init__(self, settings, queue: str, engine: sa.Engine):
        spec = settings.idle_tasks.get(queue)
        self.func = resolve(spec, default=None)[1] if spec and settings.idle_interval > 0 else None
        self.settings, self.engine, self.every = settings, engine, settings.idle_interval
        self.due = time.monotonic() + self.every

    def busy(self) -> None:
        """A job ran: idle work waits for the next quiet spell."""
        self.due = time.monotonic() + self.every

    def maybe_run(self) -> None:
        if self.func is None or time.monotonic() < self.due:
            return
        more = False
        try:
            with self.engine.begin() as conn:
                more = bool(self.func(conn, self.engine, self.settings))
        except Exception as exc:  # noqa: BLE001 - idle work must never stop the consumer
            log.warning("idle task failed (%s: %s); retrying in %ss", type(exc).__name__,
                        str(exc)[:200], self.every)
        self.due = time.monotonic() + (0 if more else self.every)
