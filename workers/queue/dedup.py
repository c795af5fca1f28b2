"""Laravel's dedup rows: `queues.queue_key = md5(json_encode(['class' => $class] + $data))`.

A row means "queued or running". BaseProcessJob::pushToQueue inserts it before dispatching and
skips the dispatch when it already exists; the worker deletes it when the job ends."""
from __future__ import annotations

from typing import Callable

import sqlalchemy as sa

from workers import db
from workers.laravel import queue_key
from workers.queue import broker
from workers.schema import queues


def claim(conn: sa.Connection, class_name: str, data) -> bool:
    """Insert the job's dedup row; False when it already exists (the job is queued or running)."""
    ins = (queues.insert().prefix_with("IGNORE", dialect="mysql").prefix_with("OR IGNORE", dialect="sqlite")
           .values(queue_key=queue_key(class_name, data), created_at=db.now(), updated_at=db.now()))
    return conn.execute(ins).rowcount > 0


def claim_and_publish(conn: sa.Connection, channel, class_name: str, data, queue: str,
                      message: Callable[[], tuple[bytes, dict]], *, dedup: bool = True,
                      then: Callable[[sa.Connection], None] | None = None) -> bool:
    """pushToQueue: the job's dedup row, then the publish, in one transaction that commits only
    once the broker confirmed (a failed publish rolls the row back). False, and nothing sent,
    when the row exists: the job is already queued or running. `message` builds (body,
    properties) only when it is sent; `then` writes more in the same transaction."""
    with conn.begin():
        if dedup and data is not None and not claim(conn, class_name, data):
            return False
        body, properties = message()
        broker.publish_raw(channel, body, properties, queue)
        if then is not None:
            then(conn)
    return True


def forget(conn: sa.Connection, class_name: str, data) -> None:
    """Delete the job's dedup row (at job end: success or final failure)."""
    if not isinstance(data, (dict, list)):
        return
    try:
        key = queue_key(class_name, data)
    except Exception:  # noqa: BLE001 - data json_encode would reject: PHP never made a row for it
        return
    conn.execute(queues.delete().where(queues.c.queue_key == key))


def queued(conn: sa.Connection, class_name: str, data) -> bool:
    """Whether the job's dedup row exists (read only: what `claim` would refuse)."""
    key = queue_key(class_name, data)
    return conn.execute(sa.select(queues.c.id).where(queues.c.queue_key == key)).first() is not None
