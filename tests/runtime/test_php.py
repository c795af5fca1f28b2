"""PHP on the same broker: jobs published by Laravel's own payload code + php-amqplib, the
driver's delay-queue declaration, and `artisan queue:retry` re-publishing a failed_jobs row."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.support import handlers
from tests.support.consumers import JOB
from tests.support.consumers import log_lines, publish_job, wait_for_log
from tests.support.database import failed_rows
from workers.schema import failed_jobs

SCRIPT = Path(__file__).parent / "php" / "amqp.php"

pytestmark = pytest.mark.skipif(not shutil.which("php") or not Path("/usr/share/php/PhpAmqpLib").is_dir(),
                                reason="php + php-amqplib needed")


def php(*args: str, stdin: dict | None = None) -> str:
    res = subprocess.run(["php", str(SCRIPT), *args], input=json.dumps(stdin or {}), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr + res.stdout
    return res.stdout


def test_job_published_by_laravel_is_consumed(rt):
    p = rt.start()
    body = php("push", rt.amqp_url, rt.queue, stdin={"class": JOB, "data": {"image_id": 21, "fail": "always"}})
    assert json.loads(body)["data"]["commandName"] == JOB
    wait_for_log(p, lambda l: l["outcome"] == "failed")
    [row] = failed_rows(rt.engine)
    assert row.payload == body                        # byte for byte what PHP published
    php("push", rt.amqp_url, rt.queue, stdin={"class": JOB, "data": {"image_id": 22}})
    [line] = wait_for_log(p, lambda l: l["outcome"] == "done")
    assert (line["class"], line["image_id"], line["attempt"]) == (JOB, 22, 1)


def test_delay_queues_agree_with_the_driver(rt):
    p = rt.start()
    publish_job(rt.amqp_url, JOB, {"image_id": 23, "fail": 1}, rt.queue, tries=2, backoff=5)
    wait_for_log(p, lambda l: l["outcome"] == "retry")
    # the driver re-declaring our delay queue with its own argument types: no PRECONDITION_FAILED
    assert php("declare-delay", rt.amqp_url, rt.queue, "5000") == "ok"
    wait_for_log(p, lambda l: l["outcome"] == "done", timeout=30)


def test_queue_retry_republishes_a_failed_job_that_then_succeeds(rt):
    data = {"image_id": 24, "fail": 1, "city": "Zürich", "path": "a/b.jpg"}
    p = rt.start()
    original = publish_job(rt.amqp_url, JOB, data, rt.queue)
    wait_for_log(p, lambda l: l["outcome"] == "failed")
    [row] = failed_rows(rt.engine)
    assert row.payload.encode() == original
    # RetryCommand: find(uuid) → resetAttempts/refreshRetryUntil → pushRaw(payload, row.queue) → forget(uuid)
    body = php("retry", rt.amqp_url, stdin={"payload": row.payload, "queue": row.queue})
    assert "\\u00fc" in body and "\\/" in body and body.encode() != original   # plain json_encode
    assert json.loads(body) == json.loads(original)
    with rt.engine.begin() as c:
        c.execute(failed_jobs.delete().where(failed_jobs.c.uuid == row.uuid))
    [line] = wait_for_log(p, lambda l: l["outcome"] == "done")
    assert line["attempt"] == 1                           # laravel.attempts = 0 again
    assert handlers.done(rt.engine) == [24]
    assert [l["outcome"] for l in log_lines(p)] == ["failed", "done"]
    assert failed_rows(rt.engine) == []
