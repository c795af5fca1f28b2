"""The consumer's rules (workers/queue/policy.py) without a broker: real Laravel payloads, decoded
as the consumer decodes them, and a clock given as a number."""
from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from workers.jobs import JobFailed, JobReleased
from workers.laravel import JobClass, build_payload, decode_payload
from workers.queue import policy
from workers.settings import Settings

NOW = 1_800_000_000.0
CLASS = "App\\Jobs\\MetadataProcessJob"


def job(attempt: int = 1, retry_until: int | None = None, **class_props):
    """The job as the consumer sees its `attempt`-th delivery."""
    msg = build_payload(JobClass(CLASS, **class_props), {"image_id": 7}, queue="metadata")
    body = msg.body
    if retry_until is not None:
        payload = json.loads(body)
        payload["retryUntil"] = retry_until
        body = json.dumps(payload).encode()
    return decode_payload(body, {"laravel": {"attempts": attempt - 1}})


def settings(**kw) -> Settings:
    return Settings(_env_file=None, **kw)


def test_a_fresh_job_runs():
    assert policy.before_run(job(), settings(), NOW) is None


@pytest.mark.parametrize("tries, attempt, runs", [(1, 1, True), (1, 2, False), (3, 3, True), (3, 4, False),
                                                  (0, 99, True)])
def test_before_the_run_a_job_past_its_tries_fails(tries, attempt, runs):
    verdict = policy.before_run(job(attempt, tries=tries), settings(), NOW)
    if runs:
        assert verdict is None
    else:
        assert verdict.action == "fail" and isinstance(verdict.error, policy.MaxAttemptsExceeded)
        assert str(verdict.error) == f"{CLASS} has been attempted too many times."


def test_without_max_tries_the_setting_counts():
    assert policy.before_run(job(2), settings(tries=1), NOW).action == "fail"
    assert policy.before_run(job(2), settings(tries=2), NOW) is None


def test_retry_until_replaces_the_tries():
    assert policy.before_run(job(50, tries=1, retry_until=int(NOW) + 1), settings(), NOW) is None
    assert policy.before_run(job(1, retry_until=int(NOW) - 1), settings(), NOW).action == "fail"
    # at exactly retryUntil: still runs (Laravel: now <= retryUntil), but an error then fails it
    assert policy.before_run(job(1, retry_until=int(NOW)), settings(), NOW) is None
    assert policy.after_error(job(1, retry_until=int(NOW)), ValueError("x"), settings(), NOW).action == "fail"


def test_an_error_with_attempts_left_is_retried_after_the_back_off_counted():
    verdict = policy.after_error(job(1, tries=3, backoff="5,30"), ValueError("boom"), settings(), NOW)
    assert (verdict.action, verdict.outcome, verdict.delay, verdict.attempts) == ("retry", "retry", 5, 1)
    verdict = policy.after_error(job(2, tries=3, backoff="5,30"), ValueError("boom"), settings(), NOW)
    assert (verdict.delay, verdict.attempts) == (30, 2)
    verdict = policy.after_error(job(1, tries=3), ValueError("boom"), settings(backoff=7), NOW)
    assert verdict.delay == 7


def test_an_error_on_the_last_attempt_fails_with_that_error():
    exc = ValueError("boom")
    verdict = policy.after_error(job(3, tries=3), exc, settings(), NOW)
    assert verdict.action == "fail" and verdict.error is exc


def test_job_failed_fails_at_once_and_job_released_goes_back_uncounted():
    assert policy.after_error(job(1, tries=5), JobFailed("bad photo"), settings(), NOW).action == "fail"
    verdict = policy.after_error(job(3, tries=5), JobReleased(12), settings(), NOW)
    assert (verdict.action, verdict.outcome, verdict.delay, verdict.attempts) == ("release", "released", 12, 2)


def test_a_database_outage_is_requeued_uncounted():
    exc = sa.exc.OperationalError("SELECT 1", {}, Exception("gone"))
    verdict = policy.after_error(job(1, tries=1), exc, settings(), NOW)
    assert verdict.action == "requeue" and verdict.attempts is None
    assert [policy.database_unavailable(exc, n).delay for n in (1, 2, 3, 6, 7, 20)] == [1, 2, 4, 30, 30, 30]


def test_a_held_lock_and_a_lost_lease_release_after_the_lock_delay():
    for rule, outcome in ((policy.locked, "locked"), (policy.lock_lost, "lock-lost")):
        verdict = rule(job(2), settings(lock_release_delay=9))
        assert (verdict.action, verdict.outcome, verdict.delay, verdict.attempts) == ("release", outcome, 9, 1)


def test_a_timeout_counts_the_attempt_then_fails_when_none_are_left():
    verdict = policy.after_timeout(job(1, tries=2), settings(), NOW)
    assert (verdict.action, verdict.outcome, verdict.delay, verdict.attempts) == ("retry", "timeout", 0, 1)
    assert str(verdict.error) == f"{CLASS} has timed out."
    assert isinstance(verdict.error, policy.TimeoutExceeded)
    assert policy.after_timeout(job(2, tries=2), settings(), NOW).action == "fail"
    assert policy.after_timeout(job(1, tries=5, fail_on_timeout=True), settings(), NOW).action == "fail"


def test_the_timeout_is_the_payloads_else_the_queues():
    assert policy.job_timeout(job(timeout=42), settings(), "metadata") == 42
    assert policy.job_timeout(job(), settings(queue_timeouts={"metadata": 77}), "metadata") == 77


def test_backoff_doubles_to_a_cap():
    assert [policy.backoff(n) for n in range(0, 9)] == [1, 1, 2, 4, 8, 16, 30, 30, 30]
