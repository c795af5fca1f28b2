"""Job handlers: one module per job, each exposing

    QUEUE = "metadata"                # queue name, also the lock's job type
    def handle(ctx: Context, data: dict) -> list[FollowUp]

and listed once in registry.py (class, queue, handler, done column, timeout, processes, chain).

The runtime (workers/queue/consumer.py) decodes the Laravel payload, takes the lock
`{QUEUE}-processing:{image_id}`, opens a DB transaction (`ctx.db`, committed by the runtime after
`handle` returns), then publishes the follow-ups, each claiming its dedup row in a small
transaction of its own, so their consumers see this job's writes, then acks. Handlers
therefore only do their work and write through `ctx.db`; they must be idempotent (a redelivery after a crash runs them again).

Outcomes other than success are exceptions:
  * `JobFailed(reason)`   - permanent (invalid data, unsupported method, corrupt file): goes to
                            failed_jobs at once, no retry.
  * `JobReleased(delay)`  - try again later without counting an attempt (rate-limit pause,
                            lock held elsewhere).
  * any other exception   - an ordinary failure: retried per Laravel's maxTries/backoff rules.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from workers.errors import JobFailed, JobReleased

if TYPE_CHECKING:
    from workers.settings import Settings


@dataclass
class FollowUp:
    """A job to dispatch after this one commits (e.g. Metadata -> Geolocation)."""
    class_name: str
    data: dict
    queue: str
    dedup: bool = True          # insert the queues.queue_key row first; skip if it exists


@dataclass
class Context:
    settings: Settings
    db: sa.Connection                  # inside the job's transaction
    engine: sa.Engine                  # for work that must commit on its own (limiter, cache)
    queue: str
    attempt: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("workers.job"))

    def image(self, image_id: int) -> sa.Row:
        """The image row, or JobFailed if it does not exist."""
        from workers.schema import images
        row = self.db.execute(sa.select(images).where(images.c.id == image_id)).first()
        if row is None:
            raise JobFailed(f"image {image_id} does not exist")
        return row

    def photo_path(self, relative: str) -> Path:
        """Resolve images.path under the storage root, refusing paths that escape it."""
        root = Path(self.settings.storage_root).resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise JobFailed(f"image path escapes the storage root: {relative!r}")
        return path


def image_id_of(data: Any) -> int:
    """The image id a job's data refers to (`image_id`, or `id` as a fallback)."""
    if not isinstance(data, dict):
        raise JobFailed(f"job data must be an array, got {type(data).__name__}")
    value = data.get("image_id", data.get("id"))
    try:
        image_id = int(value)
    except (TypeError, ValueError):
        raise JobFailed(f"job data has no valid image_id: {value!r}") from None
    if image_id <= 0 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise JobFailed(f"job data has no valid image_id: {value!r}")
    return image_id
