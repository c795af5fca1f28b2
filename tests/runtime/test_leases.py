"""Issue 12: job-owned, leased locks. A dead consumer's lock lapses within one lease; a
redelivery of the same job takes its lock over at once; two runs of one image's job never
overlap, and a run whose lock was taken by another owner is rolled back and released."""
from __future__ import annotations

import itertools
import time

import sqlalchemy as sa

from tests.support import handlers
from tests.support.consumers import JOB
from tests.support.consumers import (
    log_lines, publish_body, publish_job, queue_depth, wait_for, wait_for_log,
)
from tests.support.database import failed_rows
from workers.queue.locks import DatabaseLock
from workers.schema import cache_locks

LOCK = "laravel_cache_rtest-processing:{}"


def lock_row(engine, image_id):
    with engine.connect() as c:
        return c.execute(sa.select(cache_locks).where(cache_locks.c.key == LOCK.format(image_id))).first()


def steal(engine, image_id, seconds=60) -> DatabaseLock:
    """A PHP worker takes the lock (as if it had lapsed): an ordinary Laravel owner."""
    php = DatabaseLock(engine, LOCK.format(image_id), seconds, owner="phpOwner0000000")
    with engine.begin() as c:
        c.execute(cache_locks.update().where(cache_locks.c.key == LOCK.format(image_id))
                  .values(owner=php.owner, expiration=int(time.time()) + seconds))
    return php


def assert_no_overlap(spans):
    assert all(end is not None for _, end in spans), spans
    for (s1, e1), (s2, e2) in itertools.pairwise(sorted(spans)):
        assert e1 <= s2, f"two runs overlapped: {spans}"


def test_a_lease_shorter_than_the_job_keeps_two_consumers_apart(rt):
    """Lease 2 s, jobs of 5 s: only renewals keep the second consumer out. Three jobs for one
    image (two different ones and a duplicate of the first message) run one after another."""
    settings = {"lock_lease": 2, "lock_renew_every": 0.5}
    p1, p2 = rt.start(**settings), rt.start(**settings)
    body = publish_job(rt.amqp_url, JOB, {"image_id": 20, "sleep": 5}, rt.queue, timeout=60)
    publish_job(rt.amqp_url, JOB, {"image_id": 20, "sleep": 5}, rt.queue, timeout=60)
    publish_body(rt.amqp_url, body, rt.queue)        # same uuid, not a redelivery: waits too
    wait_for(lambda: sum(l["outcome"] == "done" for p in (p1, p2) for l in log_lines(p)) == 3,
             90, "three jobs done", p1)
    outcomes = [l["outcome"] for p in (p1, p2) for l in log_lines(p)]
    assert set(outcomes) == {"done", "locked"} and outcomes.count("locked") >= 3, outcomes
    spans = handlers.spans(rt.engine, 20)
    assert len(spans) == 3
    assert_no_overlap(spans)
    assert failed_rows(rt.engine) == [] and lock_row(rt.engine, 20) is None


def test_a_job_whose_lock_another_owner_took_is_rolled_back_and_released(rt):
    p = rt.start(lock_lease=3, lock_renew_every=0.5)
    publish_job(rt.amqp_url, JOB, {"image_id": 21, "sleep": 3}, rt.queue)   # tries=1: a counted retry fails
    wait_for(lambda: handlers.calls(rt.engine, 21) == 1, 20, "job started")
    php = steal(rt.engine, 21)
    [lost] = wait_for_log(p, lambda l: l["outcome"] == "lock-lost")
    assert lost["attempt"] == 1 and "rolled back" in lost["error"]
    assert handlers.done(rt.engine) == []               # its write was rolled back
    wait_for_log(p, lambda l: l["outcome"] == "locked")  # PHP still holds it
    assert php.release()
    [done] = wait_for_log(p, lambda l: l["outcome"] == "done", timeout=30)
    assert done["attempt"] == 1                         # neither release was counted
    assert handlers.done(rt.engine) == [21] and handlers.calls(rt.engine, 21) == 2
    assert failed_rows(rt.engine) == [] and lock_row(rt.engine, 21) is None


def test_the_commit_notices_a_takeover_between_renewals(rt):
    """No renewal falls inside this job (lease 30 s, renewed every 10 s): the commit itself
    checks that the lock is still ours."""
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 22, "sleep": 2}, rt.queue)
    wait_for(lambda: handlers.calls(rt.engine, 22) == 1, 20, "job started")
    php = steal(rt.engine, 22, seconds=2)
    wait_for_log(p, lambda l: l["outcome"] == "lock-lost")
    assert handlers.done(rt.engine) == []
    assert lock_row(rt.engine, 22).owner == php.owner    # our release did not delete PHP's lock
    wait_for_log(p, lambda l: l["outcome"] == "done", timeout=30)   # after PHP's lock expired
    assert handlers.done(rt.engine) == [22] and failed_rows(rt.engine) == []


def test_the_lock_is_renewed_while_the_job_runs(rt):
    rt.start(lock_lease=3, lock_renew_every=0.5)
    publish_job(rt.amqp_url, JOB, {"image_id": 23, "sleep": 6}, rt.queue)
    wait_for(lambda: handlers.calls(rt.engine, 23) == 1, 20, "job started")
    seen = set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (row := lock_row(rt.engine, 23)) is not None:
        assert row.expiration <= time.time() + 3 + 1      # a lease, not the job's timeout
        seen.add(row.expiration)
        time.sleep(0.2)
    assert len(seen) >= 3, seen                          # it moved ahead several times
    wait_for(lambda: handlers.done(rt.engine) == [23], 20, "job done")


def test_a_dead_consumers_lock_lapses_within_one_lease_for_another_job(rt):
    """A different job for the image does not take the lock over: it waits, but only until
    the dead consumer's lease lapses (3 s here), not the job's timeout (300 s)."""
    lease = {"lock_lease": 3, "lock_renew_every": 0.5}
    other_queue = rt.queue + "-other"
    p, p2 = rt.start(**lease), rt.start(other_queue, **lease)
    publish_job(rt.amqp_url, JOB, {"image_id": 24, "sleep": 30}, rt.queue, timeout=300)
    wait_for(lambda: handlers.calls(rt.engine, 24) == 1, 20, "job started")
    assert lock_row(rt.engine, 24).expiration <= time.time() + 3 + 1     # a lease ahead, not 300 s
    p.kill()
    p.wait(10)
    killed_at = time.time()
    publish_job(rt.amqp_url, JOB, {"image_id": 24}, other_queue, timeout=300)
    [done] = wait_for_log(p2, lambda l: l["outcome"] == "done", timeout=30)
    starts = [s for s, _ in handlers.spans(rt.engine, 24)]
    # one lease plus a few 1 s release delays (a loaded machine's consumer start-up included),
    # never the job's 300 s timeout
    assert len(starts) == 2 and starts[1] - killed_at < 20
    assert "locked" in [l["outcome"] for l in log_lines(p2)]
    assert queue_depth(rt.amqp_url, rt.queue) == 1       # the killed job waits for a consumer
