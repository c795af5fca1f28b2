"""What `reprocess` sends: the four jobs, and the rows each mode selects, as publishable items.

Rows are read in id order, in batches, up to a high-water id taken when the run starts: rows
added later are the app's to queue, and a job that fails again during a `--failed` run is not
retried twice by the same run."""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from workers.jobs import registry
from workers.laravel import (
    PayloadError, PhpJsonError, build_payload, decode_payload, message_properties, php_json_encode,
    queue_key,
)
from workers.laravel.crypto import DecryptError
from workers.laravel.php_serialize import PhpSerializeError
from workers.schema import failed_jobs, images
from workers.settings import Settings

MODES = ("missing", "all", "failed", "offline-source")


# The CLI's job names are the queues the app publishes them on ("--missing": done column empty).
JOBS = registry.BY_QUEUE


@dataclass
class Item:
    """One job to publish. `problem` set: it cannot be sent (reported; its row is left alone)."""
    cursor: int                                  # the row's id (items come in increasing order)
    class_name: str
    data: Any                                    # the job's $data: its dedup key; None = no dedup row
    queue: str
    message: Callable[[], tuple[bytes, dict]]    # body and AMQP properties, built when sent
    problem: str | None = None
    on_sent: Callable[[sa.Connection], None] | None = None   # in the dedup row's transaction


class _Rows:
    """Rows of `table` matching `_filters()`, in id order, reprocess_batch_size per query (keyset)."""

    table: sa.Table
    settings: Settings

    def _filters(self) -> list:
        raise NotImplementedError

    def high_water(self, engine: sa.Engine) -> int:
        """The highest id now: the run goes no further."""
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(self.table.c.id))).scalar() or 0

    def count(self, engine: sa.Engine, after: int, upto: int) -> int:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.table).where(
                *self._filters(), self.table.c.id > after, self.table.c.id <= upto)).scalar()

    def _rows(self, engine: sa.Engine, columns: list, after: int, upto: int) -> Iterator[sa.Row]:
        query = sa.select(self.table.c.id, *columns).where(*self._filters())
        size = self.settings.reprocess_batch_size
        while True:
            with engine.connect() as conn:
                rows = conn.execute(query.where(self.table.c.id > after, self.table.c.id <= upto)
                                    .order_by(self.table.c.id).limit(size)).all()
            yield from rows
            if len(rows) < size:
                return
            after = rows[-1].id


# --- images rows: --missing, --all, --where-source offline ---------------------------------------

class ImageRows(_Rows):
    """images rows needing `job`, each a fresh `new Job(['image_id' => id])` on the job's queue."""

    table = images
    restartable = True      # a checkpoint file remembers how far a stopped run got

    def __init__(self, job: registry.JobSpec, mode: str, since: dt.datetime | None, settings: Settings):
        self.job, self.mode, self.since, self.settings = job, mode, since, settings

    def _filters(self) -> list:
        where = []
        if self.mode == "missing":
            where.append(images.c[self.job.done_column].is_(None))
        elif self.mode == "offline-source":
            where.append(images.c.place_source == "offline")
        if self.job.queue == "geolocation":     # the app queues it only for photos with a position
            where += [images.c.latitude.isnot(None), images.c.longitude.isnot(None)]
        if self.since is not None:
            where.append(images.c.created_at >= self.since)
        return where

    def items(self, engine: sa.Engine, after: int, upto: int) -> Iterator[Item]:
        for row in self._rows(engine, [], after, upto):
            data = {"image_id": int(row.id)}
            yield Item(row.id, self.job.class_name, data, self.job.queue, self._message(data))

    def _message(self, data: dict) -> Callable[[], tuple[bytes, dict]]:
        s, job = self.settings, self.job

        def build() -> tuple[bytes, dict]:
            # what BaseProcessJob::pushToQueue dispatches: $class::dispatch($data)->onQueue($queue)
            msg = build_payload(job.class_name, data, queue=job.queue, profile=s.laravel_profile,
                                app_key=s.app_key)
            return msg.body, msg.properties
        return build


# --- failed_jobs rows: --failed, as `php artisan queue:retry` -------------------------------------

def retry_body(payload: str) -> bytes:
    """RetryCommand::retryJob's new payload: resetAttempts() (`attempts` = 0 if set) and
    refreshRetryUntil(), each a json_decode and a plain json_encode, so non-ASCII comes out as
    \\uXXXX and "/" as "\\/" exactly as PHP writes it."""
    payload_obj = json.loads(payload)
    if isinstance(payload_obj, dict) and payload_obj.get("attempts") is not None:
        payload_obj["attempts"] = 0
    return php_json_encode(payload_obj).encode("utf-8")


def retry_properties(body: bytes) -> dict:
    """The driver's pushRaw without options: persistent, correlation_id = payload id, attempts 0."""
    msg_id = json.loads(body).get("id")
    return message_properties(0, None if msg_id is None else str(msg_id))


class FailedRows(_Rows):
    """failed_jobs rows of `job`'s class, re-published to the queue they failed on; each row is
    deleted in the transaction that claims the job's dedup row, once the broker confirmed."""

    table = failed_jobs
    restartable = False     # a re-queued row is deleted: that is its own checkpoint
    mode = "failed"

    def __init__(self, job: registry.JobSpec, since: dt.datetime | None, settings: Settings):
        self.job, self.since, self.settings = job, since, settings

    def _filters(self) -> list:
        # a cheap pre-filter on the JSON text; every row is decoded and checked again below
        name = php_json_encode(self.job.class_name)
        where = [failed_jobs.c.payload.contains(f'"commandName":{name}', autoescape=True)]
        if self.since is not None:
            where.append(failed_jobs.c.failed_at >= self.since)
        return where

    def items(self, engine: sa.Engine, after: int, upto: int) -> Iterator[Item]:
        columns = [failed_jobs.c.uuid, failed_jobs.c.queue, failed_jobs.c.payload]
        for row in self._rows(engine, columns, after, upto):
            item = self._item(row)
            if item is not None:
                yield item

    def _item(self, row: sa.Row) -> Item | None:
        def delete_row(conn: sa.Connection, row_id=row.id) -> None:
            conn.execute(failed_jobs.delete().where(failed_jobs.c.id == row_id))

        body, data, problem = b"", None, None
        try:
            body = retry_body(row.payload)
            decoded = decode_payload(body, app_key=self.settings.app_key,
                                     data_property=self.settings.job_data_property)
        except (ValueError, PayloadError, PhpSerializeError, DecryptError) as exc:
            problem = f"cannot read the payload: {type(exc).__name__}: {exc}"
        else:
            if decoded.class_name != self.job.class_name:
                return None          # the pre-filter matched text inside another job's data
            data = decoded.data if _has_queue_key(decoded.class_name, decoded.data) else None
            if decoded.retry_until is not None and decoded.retry_until <= time.time():
                # PHP would call the class's retryUntil() again; only PHP can
                problem = f"retryUntil has passed: use `php artisan queue:retry {row.uuid}`"
        return Item(row.id, self.job.class_name, data, row.queue,
                    lambda: (body, retry_properties(body)), problem, delete_row)


def _has_queue_key(class_name: str, data: Any) -> bool:
    """Whether PHP could have made a dedup row for this data (json_encode must succeed)."""
    if not isinstance(data, (dict, list)):
        return False
    try:
        queue_key(class_name, data)
    except (PhpJsonError, TypeError, ValueError):
        return False
    return True
