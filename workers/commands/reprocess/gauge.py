"""Backpressure: keep a queue's ready messages at or below a limit by waiting for its consumers.

The broker's count comes from a passive `queue.declare` (message_count = ready messages, not
the few each consumer holds unacked). Between two checks the gauge counts its own publishes, so
it never asks more than once per message, and a queue can only go over the limit through other
publishers (the app itself)."""
from __future__ import annotations

import time
from typing import Callable

from pika.adapters.blocking_connection import BlockingChannel


class QueueGauge:
    def __init__(self, channel: BlockingChannel, queue: str, limit: int, poll: float,
                 stopping: Callable[[], bool], on_wait: Callable[[str, int, bool], None] | None = None):
        self.channel, self.queue, self.limit, self.poll = channel, queue, max(1, limit), poll
        self.stopping, self.on_wait = stopping, on_wait
        self.room = 0                 # messages we may still publish before asking the broker again
        self.waits = 0                # times we found the queue full
        self.waited = 0.0             # seconds spent waiting
        self.peak = 0                 # the highest depth the broker reported

    def depth(self) -> int:
        return self.channel.queue_declare(self.queue, passive=True).method.message_count

    def wait_for_room(self) -> bool:
        """Return once one more message fits; False if a stop was requested while waiting."""
        started = None
        while self.room <= 0:
            depth = self.depth()
            self.peak = max(self.peak, depth)
            self.room = self.limit - depth
            if self.room > 0:
                break
            first = started is None
            if first:
                started = time.monotonic()
                self.waits += 1
            if self.on_wait:
                self.on_wait(self.queue, depth, first)
            if not self._sleep(self.poll):
                self.waited += time.monotonic() - started
                return False
        if started is not None:
            self.waited += time.monotonic() - started
        return True

    def sent(self) -> None:
        self.room -= 1

    def _sleep(self, seconds: float) -> bool:
        """Sleep while servicing the connection (heartbeats); False as soon as a stop is requested."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stopping():
                return False
            self.channel.connection.sleep(min(left, 0.2))
        return not self.stopping()
