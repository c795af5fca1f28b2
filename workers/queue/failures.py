"""Failed jobs, the Laravel way: a `failed_jobs` row as DatabaseUuidFailedJobProvider::log writes
it (uuid, connection `rabbitmq`, queue, the exact body, PHP's exception text), so
`php artisan queue:retry <uuid>` re-publishes it; the job's dedup row goes in the same transaction.
"""
from __future__ import annotations

import json
import traceback
import uuid as uuidlib

import sqlalchemy as sa

from workers import db
from workers.queue import dedup
from workers.schema import failed_jobs

FAILED_PAYLOAD_MAX = 8 * 1024 * 1024   # below MariaDB's default max_allowed_packet (16 MB)


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
        if job is not None:
            dedup.forget(conn, job.class_name, job.data)
