"""End-to-end: Laravel payloads on a real RabbitMQ → `python -m workers consume` → MariaDB."""
from __future__ import annotations

import json
import time

import sqlalchemy as sa

from tests.support import handlers
from tests.support.database import failed_rows
from tests.support.consumers import JOB
from tests.support.consumers import (drain, log_lines, publish_body, publish_job, queue_depth, stop_consumer,
                                     wait_for, wait_for_log)
from workers import db
from workers.laravel import JobClass, build_chain_payload, decode_payload, queue_key
from workers.queue.locks import DatabaseLock
from workers.schema import queues

GEO = "App\\Jobs\\GeolocationProcessJob"


def add_dedup_row(engine, cls, data) -> str:
    key = queue_key(cls, data)
    with engine.begin() as c:
        c.execute(queues.insert().values(queue_key=key, created_at=db.now(), updated_at=db.now()))
    return key


def dedup_keys(engine) -> set[str]:
    with engine.connect() as c:
        return set(c.execute(sa.select(queues.c.queue_key)).scalars())


def test_job_done_dedup_row_deleted_and_chain_continues(rt):
    data = {"image_id": 1, "path": "a/b.jpg"}
    add_dedup_row(rt.engine, JOB, data)
    msg = build_chain_payload([(JOB, data), (GEO, {"image_id": 1})], queue=rt.queue)
    p = rt.start()
    publish_body(rt.amqp_url, msg.body, rt.queue, correlation_id=msg.payload["id"])
    lines = wait_for_log(p, lambda l: l["outcome"] == "done", count=2)
    assert [(l["class"], l["image_id"], l["attempt"]) for l in lines] == [(JOB, 1, 1), (GEO, 1, 1)]
    assert set(lines[0]) >= {"queue", "class", "image_id", "attempt", "outcome", "ms"}
    assert handlers.done(rt.engine) == [1]
    assert handlers.calls(rt.engine) == 2
    assert dedup_keys(rt.engine) == set()
    assert queue_depth(rt.amqp_url, rt.queue) == 0
    assert stop_consumer(p) == 0


def test_followups_published_once_with_dedup_rows(rt):
    follow = {"class_name": GEO, "data": {"image_id": 9}, "queue": rt.queue + "-geo"}
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 1, "followups": [follow]}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "done")
    # a second job wanting the same follow-up while it is still queued: skipped
    publish_job(rt.amqp_url, JOB, {"image_id": 2, "followups": [follow]}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "done", count=2)
    assert dedup_keys(rt.engine) == {queue_key(GEO, {"image_id": 9})}
    msgs = drain(rt.amqp_url, follow["queue"])
    assert len(msgs) == 1
    headers, body = msgs[0]
    assert headers == {"laravel": {"attempts": 0}}
    job = decode_payload(body, headers)
    assert (job.class_name, job.data, job.queue, job.chain) == (GEO, {"image_id": 9}, follow["queue"], [])
    assert job.command.get("chainQueue") == follow["queue"]     # Bus::chain([...])->onQueue(...)


def test_followup_sees_the_producers_commit(rt):
    """A follow-up's consumer may start the instant it is published: by then the job that
    queued it must have committed (a Geolocation job once read the image before Metadata's commit)."""
    import pika
    follow_queue = rt.queue + "-seen"
    conn = pika.BlockingConnection(pika.URLParameters(rt.amqp_url))
    ch = conn.channel()
    ch.queue_declare(follow_queue, durable=True)
    p = rt.start()
    seen_committed = []
    for image_id in range(40, 46):
        follow = {"class_name": GEO, "data": {"image_id": 1000 + image_id}, "queue": follow_queue}
        publish_job(rt.amqp_url, JOB, {"image_id": image_id, "followups": [follow]}, rt.queue)
        deadline = time.monotonic() + 30
        while (msg := ch.basic_get(follow_queue, auto_ack=True))[0] is None:
            assert time.monotonic() < deadline, "follow-up never published"
        seen_committed.append(image_id in handlers.done(rt.engine))   # read the moment it arrives
    conn.close()
    assert seen_committed == [True] * 6
    assert stop_consumer(p) == 0


def test_retry_with_backoff_through_delay_queue(rt, rabbitmq):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 3, "fail": 2}, rt.queue, tries=3, backoff=[3, 1])
    wait_for_log(p, lambda l: l["outcome"] == "retry")
    # declared exactly as the driver declares them (so PHP workers re-declaring them agree)
    listing = rabbitmq.ctl("list_queues", "-q", "name", "durable", "arguments")
    rows = {line.split("\t")[0]: line for line in listing.splitlines()}
    assert rows[f"{rt.queue}.delay.3000"].replace("[]}", '""}') == (
        f"{rt.queue}.delay.3000\ttrue\t[{{\"x-dead-letter-exchange\",\"\"}},"
        f"{{\"x-dead-letter-routing-key\",\"{rt.queue}\"}},{{\"x-message-ttl\",3000}},{{\"x-expires\",6000}}]")
    assert rows[rt.queue] == f"{rt.queue}\ttrue\t[]"
    wait_for_log(p, lambda l: l["outcome"] in ("done", "failed"))
    outcomes = [(l["outcome"], l["attempt"]) for l in log_lines(p)]
    assert outcomes == [("retry", 1), ("retry", 2), ("done", 3)]
    with rt.engine.connect() as c:
        times = c.execute(sa.select(handlers.rt_calls.c.at).order_by(handlers.rt_calls.c.id)).scalars().all()
    assert times[1] - times[0] >= 2.9 and times[2] - times[1] >= 0.9     # backoff "3,1"


def test_max_tries_exhausted_goes_to_failed_jobs_with_exact_body(rt):
    data = {"image_id": 4, "fail": "always", "city": "Zürich / ü"}
    add_dedup_row(rt.engine, JOB, data)
    p = rt.start()
    body = publish_job(rt.amqp_url, JOB, data, rt.queue, tries=2)
    wait_for_log(p, lambda l: l["outcome"] == "failed")
    assert [(l["outcome"], l["attempt"]) for l in log_lines(p)] == [("retry", 1), ("failed", 2)]
    [row] = failed_rows(rt.engine)
    assert row.payload.encode() == body
    assert row.uuid == json.loads(body)["uuid"]
    assert (row.connection, row.queue) == ("rabbitmq", rt.queue)
    assert row.exception.startswith("RuntimeError: boom on call 2 in ")
    assert "\nStack trace:\n#0 " in row.exception and row.exception.endswith("{main}")
    assert row.failed_at is not None
    assert handlers.calls(rt.engine) == 2 and handlers.done(rt.engine) == []
    assert dedup_keys(rt.engine) == set()
    assert queue_depth(rt.amqp_url, rt.queue) == 0


def test_default_tries_is_one(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 5, "fail": "always"}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "failed")
    assert handlers.calls(rt.engine) == 1 and len(failed_rows(rt.engine)) == 1


def test_already_exceeded_attempts_fail_before_running(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 6}, rt.queue, tries=2, attempts=2)   # 3rd delivery
    wait_for_log(p, lambda l: l["outcome"] == "failed")
    [row] = failed_rows(rt.engine)
    assert row.exception.startswith(
        f"Illuminate\\Queue\\MaxAttemptsExceededException: {JOB} has been attempted too many times.")
    assert handlers.calls(rt.engine) == 0


def test_retry_until_in_the_past_fails(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 6}, rt.queue, tries=5, retry_until=int(time.time()) - 5)
    wait_for_log(p, lambda l: l["outcome"] == "failed")
    assert handlers.calls(rt.engine) == 0


def test_poison_messages_go_to_failed_jobs_and_consumer_keeps_going(rt):
    p = rt.start()
    bad = [
        (b"\xff\xfe not json at all \x00", "PayloadError"),
        (b'{"uuid":"u-1","job":null,"data":[]}', "PayloadError"),
        (b'{"uuid":"u-2","displayName":"X","job":"Illuminate\\\\Queue\\\\CallQueuedHandler@call",'
         b'"data":{"commandName":"X","command":"O:3:\\"broken"}}', "PhpSerializeError"),
        (b"", "PayloadError"),
    ]
    for body, _ in bad:
        publish_body(rt.amqp_url, body, rt.queue)
    publish_body(rt.amqp_url, b'{"uuid":"no-headers"}', rt.queue, attempts=None)
    publish_job(rt.amqp_url, "App\\Jobs\\UnknownJob", {"image_id": 1}, rt.queue)
    publish_job(rt.amqp_url, JOB, {"no_image_id": True}, rt.queue, tries=5)
    publish_job(rt.amqp_url, JOB, {"image_id": 7, "invalid": True}, rt.queue, tries=5)
    publish_job(rt.amqp_url, JOB, {"image_id": 8}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "done")
    outcomes = [l["outcome"] for l in log_lines(p)]
    assert outcomes == ["failed"] * 8 + ["done"]
    rows = failed_rows(rt.engine)
    assert len(rows) == 8 and len({r.uuid for r in rows}) == 8
    assert rows[0].payload == b"\xff\xfe not json at all \x00".decode("utf-8", "replace")
    assert [r.payload for r in rows[1:3]] == [bad[1][0].decode(), bad[2][0].decode()]
    assert [r.uuid for r in rows[1:3]] == ["u-1", "u-2"]
    for row, (_, name) in zip(rows, bad):
        assert name in row.exception.split(":")[0], row.exception[:200]
    assert "no handler for job class App\\Jobs\\UnknownJob" in rows[5].exception
    assert "no valid image_id" in rows[6].exception
    assert "invalid data for image 7" in rows[7].exception
    assert handlers.calls(rt.engine) == 2        # only the invalid-data job and the good one ran
    assert p.poll() is None


def test_lock_held_elsewhere_releases_without_counting(rt):
    other = DatabaseLock(rt.engine, "laravel_cache_rtest-processing:10", 60)   # a PHP worker's
    assert other.acquire()
    p = rt.start(lock_release_delay=1)
    publish_job(rt.amqp_url, JOB, {"image_id": 10}, rt.queue)     # tries=1: a counted retry would fail
    wait_for_log(p, lambda l: l["outcome"] == "locked", count=2)
    assert handlers.calls(rt.engine) == 0
    other.release()
    [line] = wait_for_log(p, lambda l: l["outcome"] == "done")
    assert line["attempt"] == 1
    time.sleep(1.5)
    assert handlers.calls(rt.engine) == 1 and handlers.done(rt.engine) == [10]
    assert failed_rows(rt.engine) == []
    with rt.engine.connect() as c:      # our lock is gone, PHP's was released by PHP
        assert c.execute(sa.text("SELECT COUNT(*) FROM cache_locks")).scalar() == 0


def test_job_released_by_handler_is_not_counted(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 11, "release_once": 1}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "done")
    assert [(l["outcome"], l["attempt"]) for l in log_lines(p)] == [("released", 1), ("done", 1)]


def test_database_error_in_handler_is_requeued_uncounted(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 12, "db_error": True}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "done")
    assert [(l["outcome"], l["attempt"]) for l in log_lines(p)] == [("requeued", 1), ("done", 1)]
    assert failed_rows(rt.engine) == []


def test_payload_timeout_overrides_and_chain_from_php_layout_ok(rt):
    """A chain PHP built for Laravel 12 (createdAt, delay keys) is consumed and continued; a
    payload's own `timeout` overrides the queue's: stuck past it, the job is failed (its only
    try) and the consumer exits for supervisor to start a fresh one."""
    from workers.laravel import build_payload
    chain = build_chain_payload([(JOB, {"image_id": 13}), (GEO, {"image_id": 13})], queue=rt.queue,
                                profile="laravel12")
    assert "createdAt" in chain.payload and "delay" in chain.payload
    p = rt.start()
    publish_body(rt.amqp_url, chain.body, rt.queue, correlation_id=chain.payload["id"])
    lines = wait_for_log(p, lambda l: l["outcome"] == "done", count=2)
    assert [(l["class"], l["image_id"]) for l in lines] == [(JOB, 13), (GEO, 13)]

    # the queue's timeout is 60 s (none configured for it); the payload says 2
    slow = build_payload(JobClass(JOB, timeout=2), {"image_id": 14, "sleep": 30}, queue=rt.queue,
                         profile="laravel12")
    assert slow.payload["timeout"] == 2
    publish_body(rt.amqp_url, slow.body, rt.queue, correlation_id=slow.payload["id"])
    [line] = wait_for_log(p, lambda l: l["image_id"] == 14, timeout=25)
    assert (line["outcome"], line["error"]) == ("failed", f"{JOB} has timed out.")
    assert p.wait(20) == 1
    [row] = failed_rows(rt.engine)
    assert row.exception.startswith("Illuminate\\Queue\\TimeoutExceededException: ")
    assert row.payload == slow.body.decode()
    assert handlers.done(rt.engine) == [13]


def test_sqlite_database(rt, sqlite_url):
    """The same consumer against SQLite (the embedded mode's database)."""
    eng = db.engine_for(sqlite_url)
    handlers.create_tables(eng)
    rt.db_url = sqlite_url
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 14, "fail": 1}, rt.queue, tries=2)
    publish_job(rt.amqp_url, JOB, {"image_id": 15, "invalid": 1}, rt.queue, tries=2)
    wait_for_log(p, lambda l: l["outcome"] in ("done", "failed"), count=2)
    assert handlers.done(eng) == [14]
    assert len(failed_rows(eng)) == 1


def test_metrics_port(rt):
    import urllib.request

    from tests.support.services import free_port
    port = free_port()
    p = rt.start(metrics_port=port)
    publish_job(rt.amqp_url, JOB, {"image_id": 16}, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "done")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    assert f'photo_jobs_total{{outcome="done",queue="{rt.queue}"}} 1.0' in text
    assert "photo_job_seconds_bucket" in text
