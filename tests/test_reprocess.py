"""`python -m workers reprocess` against real MariaDB and RabbitMQ: which rows, dedup, backpressure,
restart without duplicates, dry run, --failed as `queue:retry`, and the real consumer (and PHP)
taking what it publishes.

Each test module gets its own RabbitMQ vhost, so the fixed queue names (faces, metadata ...) do
not meet other tests' messages."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest
import sqlalchemy as sa

from tests.support.consumers import PROJECT_ROOT, consumer_env, drain, queue_depth, wait_for
from workers import db
from workers.queue import dedup
from workers.laravel import JobClass, PhpObject, build_payload, decode_payload, queue_key
from workers.commands.reprocess.run import ALREADY_QUEUED, NOT_SENT, PUBLISHED, WOULD_PUBLISH, run
from workers.commands.reprocess.targets import JOBS, FailedRows, ImageRows
from workers.schema import failed_jobs, images, queues
from workers.settings import Settings

FACES = JOBS["faces"].class_name
METADATA = JOBS["metadata"].class_name
PHP_AMQP = PROJECT_ROOT / "tests" / "runtime" / "php" / "amqp.php"
HAVE_PHP_AMQP = bool(shutil.which("php")) and Path("/usr/share/php/PhpAmqpLib").is_dir()


@pytest.fixture(scope="module")
def vhost_url(rabbitmq) -> str:
    name = "reprocess-" + uuid.uuid4().hex[:8]
    rabbitmq.ctl("add_vhost", name)
    rabbitmq.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return rabbitmq.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def amqp_url(vhost_url) -> str:
    """The module's vhost with the four job queues gone (as on a fresh broker)."""
    conn = pika.BlockingConnection(pika.URLParameters(vhost_url))
    ch = conn.channel()
    for job in JOBS:
        ch.queue_delete(job)
    conn.close()
    return vhost_url


@pytest.fixture
def settings(mysql_url, amqp_url, tmp_path) -> Settings:
    return Settings(database_url=mysql_url, amqp_url=amqp_url, storage_root=tmp_path,
                    reprocess_state_dir=tmp_path / "state", reprocess_poll_interval=0.05,
                    reprocess_batch_size=7)      # small batches: the keyset paging is exercised


def add_images(url: str, n: int, **columns) -> list[int]:
    now = db.now()
    rows = [{"path": f"p/{uuid.uuid4().hex}.jpg", "created_at": now, "updated_at": now, **columns}
            for _ in range(n)]
    with db.engine_for(url).begin() as conn:
        first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(images.c.id), 0))).scalar()
        conn.execute(images.insert(), rows)
        return [r.id for r in conn.execute(sa.select(images.c.id).where(images.c.id > first)
                                           .order_by(images.c.id))]


def dedup_keys(url: str) -> set[str]:
    with db.engine_for(url).connect() as conn:
        return set(conn.execute(sa.select(queues.c.queue_key)).scalars())


def forget_all(url: str) -> None:
    """What consumers do when their jobs end: the dedup rows go."""
    with db.engine_for(url).begin() as conn:
        conn.execute(queues.delete())


def image_ids(messages) -> list[int]:
    return [decode_payload(body, headers).data["image_id"] for headers, body in messages]


def reprocess(settings: Settings, job: str, mode: str = "missing", since=None, **kw):
    target = (FailedRows(JOBS[job], since, settings) if mode == "failed"
              else ImageRows(JOBS[job], mode, since, settings))
    kw.setdefault("progress", False)
    return run(settings, target, **kw)


def cli(settings: Settings, *args: str, **env_settings) -> subprocess.Popen:
    env = consumer_env(settings.database_url, settings.amqp_url, storage_root=str(settings.storage_root),
                       reprocess_state_dir=str(settings.reprocess_state_dir), reprocess_poll_interval=0.05,
                       **env_settings)
    return subprocess.Popen([sys.executable, "-m", "workers", "reprocess", *args, "--no-progress"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- which rows, and the jobs the app would publish -----------------------------------------------

def test_missing_publishes_the_apps_job_once_per_image(settings, mysql_url, amqp_url):
    todo = add_images(mysql_url, 5)
    add_images(mysql_url, 3, faces_at=db.now())                  # done: left alone
    queued = todo[2]
    with db.engine_for(mysql_url).begin() as conn:               # the app queued this one already
        assert dedup.claim(conn, FACES, {"image_id": queued})

    report = reprocess(settings, "faces")
    assert (report.rows, report.counts[PUBLISHED], report.counts[ALREADY_QUEUED]) == (5, 4, 1)
    assert report.stopped is None
    messages = drain(amqp_url, "faces")
    assert sorted(image_ids(messages)) == [i for i in todo if i != queued]
    for headers, body in messages:
        job = decode_payload(body, headers)
        expected = build_payload(FACES, job.data, queue="faces", profile=settings.laravel_profile)
        assert job.class_name == FACES and job.queue == "faces" and job.attempts == 1
        assert set(job.data) == {"image_id"}
        # byte for byte what the app publishes, but for the two random uuids
        assert job.payload | {"uuid": 0, "id": 0} == expected.payload | {"uuid": 0, "id": 0}
    assert dedup_keys(mysql_url) == {queue_key(FACES, {"image_id": i}) for i in todo}

    again = reprocess(settings, "faces")                         # all five are queued now
    assert (again.counts[PUBLISHED], again.counts[ALREADY_QUEUED]) == (0, 5)
    assert drain(amqp_url, "faces") == []


def test_modes_select_the_right_rows(settings, mysql_url):
    old = add_images(mysql_url, 2, created_at=dt.datetime(2020, 1, 1))
    plain = add_images(mysql_url, 2)
    gps = add_images(mysql_url, 2, latitude=46.5, longitude=6.6)
    offline = add_images(mysql_url, 1, latitude=1.0, longitude=2.0, geocoded_at=db.now(), place_source="offline")
    osm = add_images(mysql_url, 1, latitude=1.0, longitude=2.0, geocoded_at=db.now(), place_source="nominatim")

    def would(job, mode="missing", since=None) -> int:
        report = reprocess(settings, job, mode, since, dry_run=True)
        assert report.rows == report.counts[WOULD_PUBLISH]
        return report.rows

    assert would("thumbnails") == would("thumbnails", "all") == 8
    assert would("thumbnails", since=dt.datetime(2021, 1, 1)) == 8 - len(old)
    assert would("geolocation") == len(gps)                      # a position, not geocoded yet
    assert would("geolocation", "all") == len(gps + offline + osm)
    assert would("geolocation", "offline-source") == len(offline)
    assert plain and would("faces", "failed") == 0


def test_dry_run_changes_nothing(settings, mysql_url, amqp_url):
    ids = add_images(mysql_url, 4)
    with db.engine_for(mysql_url).begin() as conn:
        dedup.claim(conn, METADATA, {"image_id": ids[0]})
    report = reprocess(settings, "metadata", dry_run=True, limit=2)
    assert (report.counts[WOULD_PUBLISH], report.counts[ALREADY_QUEUED], report.stopped) == (2, 1, "limit")
    assert dedup_keys(mysql_url) == {queue_key(METADATA, {"image_id": ids[0]})}
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):  # not even declared
        pika.BlockingConnection(pika.URLParameters(amqp_url)).channel().queue_declare("metadata", passive=True)
    assert not settings.reprocess_state_dir.exists()

    proc = cli(settings, "metadata", "--dry-run")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "dry run: nothing was published" in out and "would publish: 3" in out and "already queued: 1" in out


# --- backpressure ----------------------------------------------------------------------------------

def test_queue_depth_stays_under_the_setting_while_consumers_catch_up(settings, mysql_url, amqp_url):
    ids = add_images(mysql_url, 40)
    settings.reprocess_max_queue_depth = 5
    taken, depths, stop = [], [], threading.Event()

    def slow_consumer():
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        ch = conn.channel()
        while not stop.is_set():
            try:
                depths.append(ch.queue_declare("thumbnails", passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                ch = conn.channel()                    # not declared yet
                time.sleep(0.01)
                continue
            method, props, body = ch.basic_get("thumbnails", auto_ack=True)
            if method is not None:
                taken.append((props.headers, body))
            time.sleep(0.02)
        conn.close()

    consumer = threading.Thread(target=slow_consumer, daemon=True)
    consumer.start()
    try:
        report = reprocess(settings, "thumbnails", "all")
        wait_for(lambda: len(taken) == 40, 30, "the consumer to take everything")
    finally:
        stop.set()
        consumer.join(10)
    assert report.counts[PUBLISHED] == 40 and report.waits > 0 and report.waited > 0
    assert max(depths) <= 5 and report.peak_depth <= 5
    assert sorted(image_ids(taken)) == ids


def test_waiting_for_consumers_shows_on_the_bar_and_stops_on_request(settings, mysql_url, amqp_url, capsys):
    from workers.commands.reprocess.run import StopRequest
    add_images(mysql_url, 6)
    settings.reprocess_max_queue_depth = 2
    stop = StopRequest()
    threading.Timer(0.5, lambda: setattr(stop, "requested", True)).start()    # Ctrl-C, nobody consuming
    report = reprocess(settings, "faces", "all", stop=stop, progress=True)
    assert (report.counts[PUBLISHED], report.stopped, report.waits) == (2, "interrupted", 1)
    assert queue_depth(amqp_url, "faces") == 2
    bar = capsys.readouterr().err
    assert "faces all:" in bar and "2/6" in bar and "job/s" in bar and "waiting: faces has 2 ready" in bar


# --- stopping and starting again -------------------------------------------------------------------

def test_restart_after_limit_sends_each_image_once(settings, mysql_url, amqp_url):
    ids = add_images(mysql_url, 25)
    sent = []
    for expected_stop in ("limit", "limit", None):
        report = reprocess(settings, "faces", "all", limit=10)
        assert report.stopped == expected_stop
        sent += image_ids(drain(amqp_url, "faces"))
        forget_all(mysql_url)           # the consumers finished: dedup rows alone would not stop a resend
    assert sent == ids                  # in order, each once
    assert list(settings.reprocess_state_dir.glob("*.json")) == []    # the run is complete
    assert reprocess(settings, "faces", "all").counts[PUBLISHED] == 25  # so this is a new run


def test_fresh_forgets_the_checkpoint(settings, mysql_url, amqp_url):
    ids = add_images(mysql_url, 6)
    reprocess(settings, "metadata", "all", limit=4)
    forget_all(mysql_url)
    preview = reprocess(settings, "metadata", "all", dry_run=True)
    assert preview.resumed["cursor"] == ids[3] and preview.counts[WOULD_PUBLISH] == 2
    assert reprocess(settings, "metadata", "all", fresh=True).counts[PUBLISHED] == 6


def test_interrupted_cli_resumes_without_duplicates(settings, mysql_url, amqp_url):
    ids = add_images(mysql_url, 10)
    proc = cli(settings, "faces", "--all", reprocess_max_queue_depth=3)
    wait_for(lambda: queue_depth(amqp_url, "faces") == 3, 60, "three jobs queued")
    time.sleep(0.3)                                  # it is now waiting for consumers
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "published: 3" in out and "stopped (interrupted)" in out
    first = image_ids(drain(amqp_url, "faces"))
    forget_all(mysql_url)

    busy = cli(settings, "faces", "--all", reprocess_max_queue_depth=1)       # holds the checkpoint
    wait_for(lambda: queue_depth(amqp_url, "faces") == 1, 60, "the second run to wait")
    clash = cli(settings, "faces", "--all")
    _, clash_err = clash.communicate(timeout=60)
    assert clash.returncode == 1 and "another reprocess run" in clash_err
    busy.send_signal(signal.SIGTERM)
    assert busy.wait(60) == 130
    second = image_ids(drain(amqp_url, "faces"))
    forget_all(mysql_url)

    proc = cli(settings, "faces", "--all")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "resumed a run started" in out and "published: 6" in out
    assert first + second + image_ids(drain(amqp_url, "faces")) == ids


def test_killed_run_resumes_from_its_last_confirmed_job(settings, mysql_url, amqp_url):
    ids = add_images(mysql_url, 8)
    proc = cli(settings, "thumbnails", "--missing", reprocess_max_queue_depth=3)
    wait_for(lambda: queue_depth(amqp_url, "thumbnails") == 3, 60, "three jobs queued")
    time.sleep(0.3)
    proc.kill()                                      # no chance to save anything on the way out
    proc.wait(30)
    first = image_ids(drain(amqp_url, "thumbnails"))
    forget_all(mysql_url)                            # and the consumers have finished those three
    proc = cli(settings, "thumbnails", "--missing")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "published: 5" in out
    assert first + image_ids(drain(amqp_url, "thumbnails")) == ids


def test_damaged_checkpoint_is_one_clear_line(settings, mysql_url):
    from workers.commands.reprocess.checkpoint import Checkpoint
    from workers.commands.reprocess.run import run_key
    add_images(mysql_url, 2)
    target = ImageRows(JOBS["faces"], "all", None, settings)
    path = Checkpoint.path_for(settings.reprocess_state_dir, run_key(settings, target))
    path.parent.mkdir(parents=True)
    path.write_text('{"cursor": 1')
    proc = cli(settings, "faces", "--all")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and err.strip().endswith("--fresh starts over"), err
    proc = cli(settings, "faces", "--all", "--fresh")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "published: 2" in out, err


# --- --failed: queue:retry in bulk -------------------------------------------------------------------

def add_failed(url: str, body: bytes | str, queue: str = "faces") -> str:
    """A failed_jobs row as the worker writes it (uuid = the payload's); returns the uuid."""
    try:
        row_uuid = json.loads(body)["uuid"]
    except (ValueError, KeyError):
        row_uuid = str(uuid.uuid4())
    with db.engine_for(url).begin() as conn:
        conn.execute(failed_jobs.insert().values(
            uuid=row_uuid, connection="rabbitmq", queue=queue, exception="RuntimeException: boom",
            payload=body.decode() if isinstance(body, bytes) else body, failed_at=db.now()))
    return row_uuid


def failed_uuids(url: str) -> set[str]:
    with db.engine_for(url).connect() as conn:
        return set(conn.execute(sa.select(failed_jobs.c.uuid)).scalars())


def test_failed_requeues_like_queue_retry(settings, mysql_url, amqp_url):
    data = {"image_id": 5, "city": "Zürich", "path": "a/b.jpg"}
    body = build_payload(FACES, data, queue="faces").body
    retried = add_failed(mysql_url, body)
    other_class = add_failed(mysql_url, build_payload(METADATA, {"image_id": 5}, queue="metadata").body, "metadata")
    queued = add_failed(mysql_url, build_payload(FACES, {"image_id": 6}, queue="faces").body)
    with db.engine_for(mysql_url).begin() as conn:
        dedup.claim(conn, FACES, {"image_id": 6})                       # queued again meanwhile
    unreadable = add_failed(mysql_url, '{"data":{"commandName":"App\\\\Jobs\\\\FaceProcessJob","command":"O:3:"}}')
    expired = add_failed(mysql_url, build_payload(JobClass(FACES, retry_until=1000), {"image_id": 7}, queue="faces").body)
    # data json_encode cannot write as PHP would (an object): no dedup row possible, sent without one
    add_failed(mysql_url, build_payload(FACES, {"image_id": 8, "model": PhpObject("App\\Models\\Image")},
                                        queue="faces").body)

    preview = reprocess(settings, "faces", "failed", dry_run=True)
    assert (preview.counts[WOULD_PUBLISH], preview.counts[ALREADY_QUEUED], preview.counts[NOT_SENT]) == (2, 1, 2)
    report = reprocess(settings, "faces", "failed")
    assert (report.rows, report.counts[PUBLISHED], report.counts[ALREADY_QUEUED], report.counts[NOT_SENT]) \
        == (5, 2, 1, 2)
    assert any("retryUntil has passed" in why and expired in why for _, why in report.problems)
    assert failed_uuids(mysql_url) == {other_class, queued, unreadable, expired}
    assert dedup_keys(mysql_url) == {queue_key(FACES, data), queue_key(FACES, {"image_id": 6})}

    messages = {decode_payload(b, h).uuid: (h, b) for h, b in drain(amqp_url, "faces")}
    assert len(messages) == 2
    headers, republished = messages[retried]
    assert headers == {"laravel": {"attempts": 0}}
    assert json.loads(republished) == json.loads(body) and b"\\u00fc" in republished   # plain json_encode
    job = decode_payload(republished, headers)
    assert (job.uuid, job.data, job.attempts) == (retried, data, 1)
    if HAVE_PHP_AMQP:      # byte for byte what `php artisan queue:retry` pushes
        scratch = "scratch-" + uuid.uuid4().hex[:6]
        php = subprocess.run(["php", str(PHP_AMQP), "retry", amqp_url], capture_output=True, text=True,
                             input=json.dumps({"payload": body.decode(), "queue": scratch}), timeout=60)
        assert php.returncode == 0, php.stderr
        assert php.stdout.encode() == republished
    assert reprocess(settings, "faces", "failed").counts[PUBLISHED] == 0    # nothing left to send


def test_failed_cli_prints_what_it_did(settings, mysql_url, amqp_url):
    add_failed(mysql_url, build_payload(FACES, {"image_id": 9}, queue="faces").body)
    add_failed(mysql_url, "{not json")                      # another job's garbage: not ours to judge
    proc = cli(settings, "faces", "--failed", "--since", "2000-01-01")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "reprocess faces --failed: 1 rows" in out and "published: 1" in out
    assert len(failed_uuids(mysql_url)) == 1


# --- the other side: our consumer and PHP take what we publish ----------------------------------------

@pytest.mark.skipif(not shutil.which("exiftool"), reason="exiftool needed")
def test_published_job_is_done_by_the_real_consumer(settings, mysql_url, amqp_url, shared_testdata, tmp_path):
    from tests.support.consumers import start_consumer, stop_consumer
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(shared_testdata / "exif" / "jpg" / "Canon_40D.jpg", photos / "a.jpg")
    with db.engine_for(mysql_url).begin() as conn:
        conn.execute(images.insert().values(path="a.jpg", created_at=db.now()))
    env = consumer_env(mysql_url, amqp_url, storage_root=str(photos))
    proc = start_consumer("metadata", env, tmp_path / "logs")
    try:
        assert reprocess(settings, "metadata").counts[PUBLISHED] == 1

        def done() -> bool:
            with db.engine_for(mysql_url).connect() as conn:
                return conn.execute(sa.select(images.c.camera_model)).scalar() == "Canon EOS 40D"
        wait_for(done, 60, "the metadata job", proc)
    finally:
        assert stop_consumer(proc) == 0
    assert dedup_keys(mysql_url) == set()                   # the consumer ended the job
    assert reprocess(settings, "metadata").rows == 0        # nothing missing any more


def test_php_reads_the_jobs_we_publish(settings, mysql_url, amqp_url, tmp_path):
    from tests.support.php import PHP_AVAILABLE, run_oracle
    if not PHP_AVAILABLE:
        pytest.skip("php + Laravel not installed")
    ids = add_images(mysql_url, 2, latitude=46.5, longitude=6.6)
    for job in JOBS:
        reprocess(settings, job, "all")
    rows = [{"name": f"{q}-{n}", "body": body.decode()}
            for q in JOBS for n, (_, body) in enumerate(drain(amqp_url, q))]
    assert len(rows) == 2 * len(JOBS)
    for row, seen in zip(rows, run_oracle("check", rows, tmp_path)):
        queue = row["name"].rsplit("-", 1)[0]
        assert seen["class"] == JOBS[queue].class_name and seen["is_should_queue"], seen
        assert json.loads(seen["expect"]["data_json"])["image_id"] in ids
        assert seen["expect"]["queue"] == queue


def test_bad_arguments_get_one_line(settings):
    for args, message in ((["faces", "--where-source", "offline"], "applies to geolocation only"),
                          (["faces", "--since", "yesterday"], "not a date"),
                          (["faces", "--limit", "0"], "--limit must be")):
        proc = cli(settings, *args)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and message in err, (args, err)


def test_offline_source_warns_while_nominatim_is_paused(settings, mysql_url):
    from workers.schema import rate_limits
    add_images(mysql_url, 1, latitude=1.0, longitude=2.0, geocoded_at=db.now(), place_source="offline")
    with db.engine_for(mysql_url).begin() as conn:
        conn.execute(rate_limits.insert().values(name="nominatim", next_at=0.0, paused_until=time.time() + 600,
                                                 strikes=1))
    proc = cli(settings, "geolocation", "--where-source", "offline", "--dry-run")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Nominatim is paused for the whole installation" in err and "would publish: 1" in out


def test_unreachable_broker_is_one_line_and_leaves_no_checkpoint(sqlite_url, tmp_path):
    settings = Settings(database_url=sqlite_url, amqp_url="amqp://guest:guest@127.0.0.1:1/%2F",
                        storage_root=tmp_path, reprocess_state_dir=tmp_path / "state")
    add_images(sqlite_url, 2)
    proc = cli(settings, "faces")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err.startswith("error: RabbitMQ at 127.0.0.1:1 is unreachable") and err.count("\n") == 1, err
    assert not settings.reprocess_state_dir.exists()
