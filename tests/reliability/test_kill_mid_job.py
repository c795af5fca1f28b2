"""Issue 12: SIGKILL a consumer in the middle of a long job (a real faces job whose face API
answer takes 8 s); the restarted consumer's redelivery takes the dead delivery's lock over and
the job completes within 30 s of the restart, with one set of face rows. Before leases the
lock lived for the faces queue's whole timeout (360 s) and the job waited that long.

The face API is the real one behind a proxy that holds each request for DELAY seconds, so the
kill lands while the job is certainly in flight."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa

from tests.support import face_api as face_service
from tests.support.photos import make_sources
from tests.support.consumers import (
    consumer_env, log_lines, queue_depth, start_consumer, stop_consumer, wait_for,
)
from workers.queue import broker, dedup
from workers import db
from workers.laravel import JobClass, build_payload
from workers.schema import cache_locks, failed_jobs, faces, images, queues

FACES_JOB = "App\\Jobs\\FaceProcessJob"
DELAY = 8.0                  # seconds the proxy holds each face API request: the "long job"
TARGET = 30.0                # done within 30 s of the restart
PATIENCE = 420               # long enough to measure the old behaviour (faces timeout 360 s)


class SlowProxy:
    """Forwards to `upstream` after holding each request for `delay` seconds; counts arrivals."""

    def __init__(self, upstream: str, delay: float):
        self.arrivals: list[float] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                proxy.arrivals.append(time.monotonic())
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                r = httpx.post(upstream + self.path, content=body, timeout=120,
                               headers={"Content-Type": self.headers.get("Content-Type", "")})
                try:
                    self.send_response(r.status_code)
                    self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                    self.send_header("Content-Length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                except OSError:
                    pass                        # the killed consumer is gone

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(PATIENCE + 180)
def test_sigkill_mid_job_completes_soon_after_restart_with_one_set_of_rows(
        mysql_url, rabbitmq, shared_testdata, tmp_path):
    storage = tmp_path / "storage"
    [photo] = [p for p in make_sources(shared_testdata, storage / "src") if "two_people" in p.name]
    engine = db.engine_for(mysql_url)
    with engine.begin() as c:
        image_id = c.execute(images.insert().values(path=str(photo.relative_to(storage)),
                                                    created_at=db.now())).inserted_primary_key[0]
    api_url, stop_api = face_service.start_face_api(tmp_path / "face_api", [storage], workers=1)
    proxy = SlowProxy(api_url, DELAY)
    procs = []
    try:
        want = len(httpx.post(api_url + "/encode", json={"path": str(photo)}, timeout=120).json()["encodings"])
        assert want == 2
        # the real faces timeout (360 s) and the default lease (30 s, renewed every 10 s)
        env = consumer_env(mysql_url, rabbitmq.url, storage_root=storage, log_dir=tmp_path / "worker-logs",
                           face_api_url=proxy.url, heartbeat=10)
        procs.append(start_consumer("faces", env, tmp_path / "logs"))
        data = {"image_id": image_id}
        with engine.begin() as c:                       # BaseProcessJob::pushToQueue
            dedup.claim(c, FACES_JOB, data)
        conn, ch = broker.connect(rabbitmq.url)
        broker.publish(ch, build_payload(JobClass(FACES_JOB), data, queue="faces"), "faces")
        conn.close()

        wait_for(lambda: len(proxy.arrivals) == 1, 60, "the job's face API request", procs[0])
        time.sleep(DELAY / 2)                            # well inside the job
        procs[0].kill()
        procs[0].wait(10)
        restarted = time.monotonic()                     # supervisor's autorestart
        procs.append(start_consumer("faces", env, tmp_path / "logs", wait_ready=False))
        wait_for(lambda: any(l["outcome"] == "done" for l in log_lines(procs[1])), PATIENCE,
                 "the killed job to complete", procs[1])
        elapsed = time.monotonic() - restarted
        outcomes = [l["outcome"] for l in log_lines(procs[1])]
        print(f"\nSIGKILL mid-job (faces, face API answer held {DELAY:.0f} s): restart -> done "
              f"{elapsed:.1f} s (target < {TARGET:.0f} s); restarted consumer's outcomes {outcomes}")
    finally:
        for p in procs:
            stop_consumer(p, timeout=20)
        proxy.stop()
        stop_api()

    assert elapsed < TARGET
    assert outcomes == ["done"]                          # taken over at once, never "locked"
    with engine.connect() as c:
        rows = c.execute(sa.select(faces.c.face_index).where(faces.c.image_id == image_id)).scalars().all()
        image = c.execute(sa.select(images).where(images.c.id == image_id)).one()
        left = {t.name: c.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in (queues, failed_jobs, cache_locks)}
    assert sorted(rows) == list(range(want))              # one set of face rows
    assert image.faces_count == want and image.faces_at is not None
    assert left == {"queues": 0, "failed_jobs": 0, "cache_locks": 0}
    assert queue_depth(rabbitmq.url, "faces") == 0
    assert len(proxy.arrivals) == 2                       # the killed run and the completed one
