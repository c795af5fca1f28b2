"""Long jobs, timeouts, crashes, signals and server restarts."""
from __future__ import annotations

import signal
import time

import sqlalchemy as sa

from tests.support import handlers
from tests.support.consumers import JOB
from tests.support.consumers import (Supervised, log_lines, publish_job, queue_depth, stop_consumer, wait_for,
                                     wait_for_log)
from tests.support.database import failed_rows


def test_heartbeats_flow_while_a_long_job_runs(rt):
    p = rt.start(heartbeat=2)
    publish_job(rt.amqp_url, JOB, {"image_id": 1, "sleep": 9}, rt.queue)     # > 4 heartbeat intervals
    wait_for_log(p, lambda l: l["outcome"] == "done", timeout=40)
    time.sleep(3)
    assert handlers.calls(rt.engine) == 1                # never redelivered
    assert p.err_path.read_text().count("consuming") == 1     # never reconnected
    assert queue_depth(rt.amqp_url, rt.queue) == 0
    assert stop_consumer(p) == 0


def test_timeout_counts_an_attempt_and_ends_in_failed_jobs(rt):
    sup = Supervised(rt.queue, rt.env(), rt.tmp_path / "logs")
    try:
        publish_job(rt.amqp_url, JOB, {"image_id": 2, "sleep": 60}, rt.queue, tries=2, timeout=2)
        wait_for(lambda: any(l["outcome"] == "failed" for l in sup.lines()), 60, "final failure")
        assert [(l["outcome"], l["attempt"]) for l in sup.lines()] == [("timeout", 1), ("failed", 2)]
        # Worker::kill(EXIT_ERROR): supervisor restarts. The exit follows the log line closely.
        wait_for(lambda: sup.exit_codes()[:2] == [1, 1], 30, "both workers exit 1")
    finally:
        sup.stop()
    [row] = failed_rows(rt.engine)
    assert row.exception.startswith(
        f"Illuminate\\Queue\\TimeoutExceededException: {JOB} has timed out.")
    assert handlers.calls(rt.engine) == 2 and handlers.done(rt.engine) == []
    with rt.engine.connect() as c:
        assert c.execute(sa.text("SELECT COUNT(*) FROM cache_locks")).scalar() == 0


def test_kill_9_mid_job_is_redelivered_and_done_once(rt):
    p = rt.start()
    # the job's timeout is 300 s: its redelivery takes the dead delivery's lock over at once
    publish_job(rt.amqp_url, JOB, {"image_id": 3, "sleep": 2}, rt.queue, timeout=300)
    wait_for(lambda: handlers.calls(rt.engine) == 1, 20, "job started")
    p.kill()
    p.wait(10)
    restarted = time.monotonic()
    p2 = rt.start()
    line = wait_for_log(p2, lambda l: l["outcome"] == "done", timeout=40)[0]
    assert time.monotonic() - restarted < 30
    assert line["attempt"] == 1               # a crash is not the job's fault (header unchanged)
    assert handlers.done(rt.engine) == [3]
    assert [l["outcome"] for l in log_lines(p2)] == ["done"]      # never "locked"
    assert handlers.calls(rt.engine) == 2
    assert queue_depth(rt.amqp_url, rt.queue) == 0


def test_sigterm_finishes_the_current_job_then_exits_0(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 4, "sleep": 3}, rt.queue)
    wait_for(lambda: handlers.calls(rt.engine) == 1, 20, "job started")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert [l["outcome"] for l in log_lines(p)] == ["done"]
    assert handlers.done(rt.engine) == [4]
    assert queue_depth(rt.amqp_url, rt.queue) == 0           # acked, not requeued


def _publish_many(rt, n, **data):
    for i in range(1, n + 1):
        publish_job(rt.amqp_url, JOB, {"image_id": i, **data}, rt.queue)


def test_rabbitmq_restart_mid_stream_loses_nothing(rt, rabbitmq):
    _publish_many(rt, 40, sleep=0.1)
    p = rt.start()
    wait_for(lambda: len(handlers.done(rt.engine)) >= 5, 30, "first jobs")
    rabbitmq.restart()
    wait_for(lambda: len(handlers.done(rt.engine)) == 40, 120, "all jobs after the restart", p)
    assert p.poll() is None
    assert handlers.done(rt.engine) == list(range(1, 41))
    assert failed_rows(rt.engine) == []
    assert p.err_path.read_text().count("consuming") >= 2      # it reconnected
    assert queue_depth(rt.amqp_url, rt.queue) == 0


def test_mariadb_restart_mid_stream(rt, mariadb):
    _publish_many(rt, 30, sleep=0.1)
    p = rt.start()
    wait_for(lambda: len(handlers.done(rt.engine)) >= 5, 30, "first jobs")
    mariadb.restart()
    wait_for(lambda: len(handlers.done(rt.engine)) == 30, 120, "all jobs after the restart", p)
    assert p.poll() is None
    assert failed_rows(rt.engine) == []
    # a lock we could not release while the DB was down is released once it is back
    assert all(l["outcome"] in ("done", "requeued") for l in log_lines(p)), log_lines(p)
    wait_for(lambda: queue_depth(rt.amqp_url, rt.queue) == 0, 10, "queue drained")
