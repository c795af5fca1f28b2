"""The rendered supervisor programs under a real supervisord (its own config, socket and temp
dir): the four consumers, the console script of a venv holding the installed package, come up,
attach to RabbitMQ and process Laravel jobs into MariaDB."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from workers.commands import render_config
from workers.settings import Settings
from tests.support.venvs import install_checkout, locked_venv

QUEUES = ("thumbnails", "metadata", "geolocation", "faces")

pytestmark = pytest.mark.skipif(not Path("/usr/bin/supervisord").exists(),
                                reason="supervisor not installed (make test installs it)")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class Supervisord:
    def __init__(self, base: Path, env: dict):
        self.base, self.env = base, env
        self.conf = base / "supervisord.conf"
        (base / "conf.d").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"""
[unix_http_server]
file={base}/supervisor.sock
[supervisord]
nodaemon=true
logfile={base}/supervisord.log
pidfile={base}/supervisord.pid
childlogdir={base}
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{base}/supervisor.sock
[include]
files = {base}/conf.d/*.conf
""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Supervisord":
        self.proc = subprocess.Popen(["/usr/bin/supervisord", "-n", "-c", str(self.conf)], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while subprocess.run(self.ctl_cmd("pid"), capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("supervisord did not start:\n" + (self.base / "supervisord.log").read_text())
            time.sleep(0.2)
        return self

    def ctl_cmd(self, *args: str) -> list[str]:
        return ["/usr/bin/supervisorctl", "-c", str(self.conf), *args]

    def ctl(self, *args: str) -> str:
        return subprocess.run(self.ctl_cmd(*args), capture_output=True, text=True, timeout=600).stdout

    def status(self) -> dict[str, str]:
        out = {}
        for line in self.ctl("status").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.ctl("shutdown")
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def wait(check, timeout: float, what: str, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{explain()}")


def consumer_counts(amqp_url: str) -> dict[str, int | None]:
    import pika
    from pika.exceptions import ChannelClosedByBroker
    out = {}
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        for q in QUEUES:
            ch = conn.channel()
            try:
                out[q] = ch.queue_declare(q, passive=True).method.consumer_count
                ch.close()
            except ChannelClosedByBroker:
                out[q] = None
    finally:
        conn.close()
    return out


@pytest.fixture(scope="module")
def deployed(mariadb, rabbitmq, tmp_path_factory):
    if not _has("workers.queue.consumer"):
        pytest.skip("workers/queue/consumer.py (`python -m workers consume`) has not landed yet")
    from workers import db
    base = tmp_path_factory.mktemp("supervisor")
    venv = locked_venv(base / "venv")
    install_checkout(venv)
    prefix, storage = base / "photo", base / "photo/storage"
    (prefix / "storage/logs").mkdir(parents=True)
    db_url = mariadb.create_database("t_sup_" + uuid.uuid4().hex[:8])
    engine = db.engine_for(db_url)
    db.migrate(engine)
    # Queues are the real names: clear what other tests may have left there.
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    for q in QUEUES:
        conn.channel().queue_delete(q)
    conn.close()

    import grp
    import pwd
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    files = render_config.render(Settings(), prefix=str(prefix), venv=str(venv), user=user, group=group,
                          numprocs=dict.fromkeys(QUEUES, 1),
                          setpriv=os.getuid() == 0,      # setpriv needs root, like supervisord on the box
                          environment={"PHOTO_DATABASE_URL": db_url, "PHOTO_AMQP_URL": rabbitmq.url,
                                       "PHOTO_STORAGE_ROOT": str(storage), "PHOTO_HEARTBEAT": "10",
                                       "PHOTO_GEOCODER": "offline"})
    # No PYTHONPATH: the programs must run the installed package, not this checkout.
    sup_env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOTO_", "PYTHONPATH"))}
    sup = Supervisord(base / "sup", sup_env)
    for name, text in files.items():
        if name.endswith(".conf"):
            (sup.base / "conf.d" / name).write_text(text)
    sup.start()
    yield {"sup": sup, "engine": engine, "storage": storage, "prefix": prefix, "amqp": rabbitmq.url}
    sup.stop()


def logs(deployed) -> str:
    out = []
    for f in sorted((deployed["prefix"] / "storage/logs").glob("*.log")):
        out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
    return "\n".join(out) + "\n" + deployed["sup"].ctl("status")


def test_consumers_come_up(deployed):
    sup = deployed["sup"]
    names = {f"photo-{q}-worker:photo-{q}-worker_00" for q in QUEUES}
    wait(lambda: sup.status() == dict.fromkeys(names, "RUNNING"), 60, "all programs RUNNING", lambda: logs(deployed))
    wait(lambda: consumer_counts(deployed["amqp"]) == dict.fromkeys(QUEUES, 1), 60,
         "one consumer per queue", lambda: f"{consumer_counts(deployed['amqp'])}\n{logs(deployed)}")
    for q in QUEUES:
        log = deployed["prefix"] / f"storage/logs/supervisor-photo-{q}.log"
        assert f"consuming {q}" in log.read_text()     # stderr is redirected into the spec's log file


def _publish(amqp_url: str, job_class: str, data: dict, queue: str) -> None:
    from workers.queue import broker
    from workers.laravel import build_payload
    conn, ch = broker.connect(amqp_url)
    try:
        broker.publish(ch, build_payload(job_class, data, queue=queue), queue)
    finally:
        conn.close()


def _image(deployed, testdata: Path, name: str) -> int:
    from workers.schema import images
    src = testdata / "exif/jpg" / name
    dest = deployed["storage"] / "photos" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    with deployed["engine"].begin() as conn:
        return conn.execute(images.insert().values(path=f"photos/{name}")).inserted_primary_key[0]


def _wait_column(deployed, image_id: int, column: str) -> sa.Row:
    from workers.schema import images
    def done():
        with deployed["engine"].connect() as conn:
            return conn.execute(sa.select(images.c[column]).where(images.c.id == image_id)).scalar() is not None
    wait(done, 90, f"images.{column} for image {image_id}", lambda: logs(deployed))
    with deployed["engine"].connect() as conn:
        return conn.execute(sa.select(images).where(images.c.id == image_id)).one()


def test_metadata_job_processed(deployed, shared_testdata):
    if not _has("workers.jobs.metadata"):
        pytest.skip("workers/jobs/metadata.py has not landed yet")
    test_consumers_come_up(deployed)
    image_id = _image(deployed, shared_testdata, "Canon_40D.jpg")
    _publish(deployed["amqp"], "App\\Jobs\\MetadataProcessJob", {"image_id": image_id}, "metadata")
    row = _wait_column(deployed, image_id, "metadata_at")
    assert row.camera_make == "Canon"


def test_thumbnail_job_processed(deployed, shared_testdata):
    if not _has("workers.jobs.thumbnails"):
        pytest.skip("workers/jobs/thumbnails.py has not landed yet")
    test_consumers_come_up(deployed)
    image_id = _image(deployed, shared_testdata, "Nikon_D70.jpg")
    _publish(deployed["amqp"], "App\\Jobs\\ThumbnailProcessJob",
             {"image_id": image_id, "method": "cover", "width": 64, "height": 64}, "thumbnails")
    row = _wait_column(deployed, image_id, "thumbnails_at")
    thumbs = row.thumbnails if isinstance(row.thumbnails, dict) else json.loads(row.thumbnails)
    (rel,) = thumbs.values()
    thumb = deployed["storage"] / rel
    assert thumb.is_file()
    assert oct(thumb.stat().st_mode & 0o777) == oct(0o664)    # umask=002 reached the worker


def test_stop_is_graceful(deployed):
    """supervisorctl stop sends TERM; the consumer exits on its own well before stopwaitsecs."""
    sup = deployed["sup"]
    test_consumers_come_up(deployed)
    started = time.monotonic()
    out = sup.ctl("stop", "photo-metadata-worker:*")
    assert "stopped" in out, out
    assert time.monotonic() - started < 30
    assert sup.status()["photo-metadata-worker:photo-metadata-worker_00"] == "STOPPED"
    sup_log = (sup.base / "supervisord.log").read_text()
    assert "stopped: photo-metadata-worker_00 (exit status 0)" in sup_log, sup_log[-2000:]
    sup.ctl("start", "photo-metadata-worker:*")
