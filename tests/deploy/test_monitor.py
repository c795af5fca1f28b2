"""`python -m workers monitor` against the test RabbitMQ and MariaDB: the numbers it prints are
the messages published / held / failed and the rows written here."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid

import pika
import pytest

from workers.queue import broker
from workers import db
from workers.commands import monitor
from workers.laravel import build_payload
from workers.schema import failed_jobs, images, queues
from workers.settings import Settings
from tests.support.services import PROJECT_ROOT

QUEUES = ("thumbnails", "metadata", "geolocation", "faces")
VENV_PY = str(PROJECT_ROOT / ".venv/bin/python")
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def publish(url: str, job_class: str, queue: str, n: int, delay: float = 0) -> None:
    conn, ch = broker.connect(url)
    try:
        for i in range(n):
            broker.publish(ch, build_payload(job_class, {"image_id": 1000 + i}, queue=queue), queue, delay=delay)
    finally:
        conn.close()


@pytest.fixture
def scene(rabbitmq, mysql_url):
    """3 ready thumbnails jobs, 1 in thumbnails.delay.600000, metadata: 1 ready + 1 held unacked by
    a consumer, geolocation declared and empty, faces absent; failures, dedup rows, done images."""
    drop_queues(rabbitmq.url)
    publish(rabbitmq.url, "App\\Jobs\\ThumbnailProcessJob", "thumbnails", 3)
    publish(rabbitmq.url, "App\\Jobs\\ThumbnailProcessJob", "thumbnails", 1, delay=600)
    publish(rabbitmq.url, "App\\Jobs\\MetadataProcessJob", "metadata", 2)
    conn, ch = broker.connect(rabbitmq.url)
    broker.declare_queue(ch, "geolocation")
    conn.close()
    holder = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    hch = holder.channel()
    hch.basic_qos(prefetch_count=1)
    got = []
    hch.basic_consume("metadata", lambda *a: got.append(a[1].delivery_tag))
    while not got:
        holder.process_data_events(time_limit=0.5)

    engine = db.engine_for(mysql_url)
    now = db.now()
    trace = "\n#0 /var/www/photo/vendor/laravel/framework/src/Illuminate/Queue/CallQueuedHandler.php(98)"
    with engine.begin() as c:
        def fail(queue, cls, exception, payload=None):
            body = payload or build_payload(cls, {"image_id": 7}, queue=queue).body.decode()
            c.execute(failed_jobs.insert().values(uuid=str(uuid.uuid4()), connection="rabbitmq", queue=queue,
                                                  payload=body, exception=exception, failed_at=now))
        for _ in range(2):
            fail("metadata", "App\\Jobs\\MetadataProcessJob",
                 "RuntimeException: exiftool exited with 1 in /var/www/photo/app/Jobs/X.php:42\nStack trace:" + trace)
        fail("thumbnails", "App\\Jobs\\ThumbnailProcessJob", "JobFailed: invalid method 'zoom'\n" + "x" * 100_000)
        fail("faces", None, "\n\n  Illuminate\\Queue\\MaxAttemptsExceededException: too many\n", payload="{not json")
        c.execute(queues.insert(), [{"queue_key": uuid.uuid4().hex, "created_at": now - dt.timedelta(minutes=m)}
                                    for m in (1, 5, 90)])
        rows = [{"path": "a.jpg", "metadata_at": now - dt.timedelta(seconds=10)},
                {"path": "b.jpg", "metadata_at": now - dt.timedelta(seconds=20), "thumbnails_at": now},
                {"path": "c.jpg", "metadata_at": now - dt.timedelta(minutes=30), "faces_at": now - dt.timedelta(minutes=59)},
                {"path": "d.jpg", "metadata_at": now - dt.timedelta(hours=2), "geocoded_at": now - dt.timedelta(hours=3)},
                {"path": "e.jpg"}]
        c.execute(images.insert(), [{**{"metadata_at": None, "thumbnails_at": None, "faces_at": None,
                                        "geocoded_at": None}, **r} for r in rows])
    yield {"db": mysql_url, "amqp": rabbitmq.url}
    holder.close()
    drop_queues(rabbitmq.url)   # the delayed job would reach `thumbnails` of a later test in 600 s


def drop_queues(url: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    for q in (*QUEUES, "thumbnails.delay.600000", "thumbnails.delay.10000"):
        conn.channel().queue_delete(q)
    conn.close()


def check_db_sections(report: dict) -> None:
    assert report["throughput"] == {
        "thumbnails": {"last_minute": 1, "last_hour": 1, "per_minute_hour_avg": round(1 / 60, 2)},
        "metadata": {"last_minute": 2, "last_hour": 3, "per_minute_hour_avg": 0.05},
        "geolocation": {"last_minute": 0, "last_hour": 0, "per_minute_hour_avg": 0.0},
        "faces": {"last_minute": 0, "last_hour": 1, "per_minute_hour_avg": round(1 / 60, 2)},
    }
    assert report["dedup"]["pending"] == 3 and report["dedup"]["oldest"]
    got = [(f["count"], f["queue"], f["class"], f["reason"]) for f in report["failed_jobs"]]
    assert got == [
        (2, "metadata", "App\\Jobs\\MetadataProcessJob",
         "RuntimeException: exiftool exited with 1 in /var/www/photo/app/Jobs/X.php:42"),
        (1, "faces", "(unknown)", "Illuminate\\Queue\\MaxAttemptsExceededException: too many"),
        (1, "thumbnails", "App\\Jobs\\ThumbnailProcessJob", "JobFailed: invalid method 'zoom'"),
    ]


def test_monitor_with_rabbitmqctl(scene, rabbitmq):
    settings = Settings(lock_release_delay=10)
    report = monitor.collect(settings, database_url=scene["db"], amqp_url=scene["amqp"],
                             rabbitmqctl=[CTL, "-n", rabbitmq.node], rabbitmqctl_env=rabbitmq.env())
    b = report["broker"]
    assert b["source"] == "rabbitmqctl", b
    assert b["queues"] == {
        "thumbnails": {"ready": 3, "unacked": 0, "consumers": 0, "depth": 3},
        "thumbnails.delay.600000": {"ready": 1, "unacked": 0, "consumers": 0, "depth": 1},
        "metadata": {"ready": 1, "unacked": 1, "consumers": 1, "depth": 2},
        "geolocation": {"ready": 0, "unacked": 0, "consumers": 0, "depth": 0},
        "faces": None,
    }
    check_db_sections(report)
    text = monitor.format_text(report)
    assert "(no such queue)" in text and "failed jobs: 4" in text and "dedup rows pending" in text


def test_monitor_over_amqp_only(scene):
    """No rabbitmqctl: ready/consumers from passive declares, unacked n/a, known delay queues probed."""
    settings = Settings(lock_release_delay=600)
    report = monitor.collect(settings, database_url=scene["db"], amqp_url=scene["amqp"], rabbitmqctl=None)
    b = report["broker"]
    assert b["source"] == "amqp" and "n/a" in b["note"]
    assert b["queues"] == {
        "thumbnails": {"ready": 3, "unacked": None, "consumers": 0, "depth": 3},
        "thumbnails.delay.600000": {"ready": 1, "unacked": None, "consumers": 0, "depth": 1},
        "metadata": {"ready": 1, "unacked": None, "consumers": 1, "depth": 1},
        "geolocation": {"ready": 0, "unacked": None, "consumers": 0, "depth": 0},
        "faces": None,
    }
    check_db_sections(report)


def test_cli_json_and_text(scene):
    base = [VENV_PY, "-m", "workers", "monitor", "--db", scene["db"], "--amqp", scene["amqp"], "--rabbitmqctl", "none"]
    res = subprocess.run([*base, "--json"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["broker"]["queues"]["thumbnails"]["ready"] == 3
    check_db_sections(report)
    res = subprocess.run(base, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("metadata "))
    assert line.split() == ["metadata", "1", "1", "n/a", "1"]


def test_broken_rabbitmqctl_falls_back_to_amqp(scene):
    report = monitor.collect(Settings(), database_url=scene["db"], amqp_url=scene["amqp"],
                             rabbitmqctl=[CTL, "-n", "nosuchnode@localhost"])
    assert report["broker"]["source"] == "amqp"
    assert report["broker"]["note"].startswith("rabbitmqctl failed")
    assert report["broker"]["queues"]["thumbnails"]["ready"] == 3


def test_unreachable_services_are_reported(tmp_path):
    res = subprocess.run([VENV_PY, "-m", "workers", "monitor", "--json", "--rabbitmqctl", "none",
                          "--amqp", "amqp://guest:secret@127.0.0.1:1/%2F",
                          "--db", f"sqlite:///{tmp_path}/missing/dir/x.db"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert "127.0.0.1:1" in report["broker"]["error"] and "secret" not in res.stdout
    assert "error" in report["database"]
    assert "Traceback" not in res.stderr
