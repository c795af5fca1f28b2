"""Reusable helpers for end-to-end tests: run `python -m workers consume` as a real subprocess
(like supervisor does), publish Laravel jobs, and read the consumer's JSON log lines.

    env = consumer_env(db_url, rabbitmq.url, {"App\\Jobs\\MetadataProcessJob": "workers.jobs.metadata:handle"})
    proc = start_consumer("metadata", env, tmp_path)
    publish_job(rabbitmq.url, "App\\Jobs\\MetadataProcessJob", {"image_id": 1}, "metadata")
    wait_for_log(proc, lambda line: line["outcome"] == "done")
    stop_consumer(proc)            # SIGTERM, returns the exit code
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from tests.support.services import wait_for  # noqa: F401 - the one wait_for, re-exported for the runtime tests

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The runtime tests' job class, and both classes routed to the scripted test handler.
JOB = "App\\Jobs\\MetadataProcessJob"
HANDLERS = {JOB: "tests.support.handlers:handle",
            "App\\Jobs\\GeolocationProcessJob": "tests.support.handlers:handle"}


def consumer_env(db_url: str, amqp_url: str, handlers: dict[str, str] | None = None, **settings) -> dict:
    """Environment for a consumer: PHOTO_* variables (dicts/lists as JSON, as pydantic reads them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTO_")}
    env.update(PHOTO_DATABASE_URL=db_url, PHOTO_AMQP_URL=amqp_url,
               PYTHONPATH=str(PROJECT_ROOT), PYTHONUNBUFFERED="1",
               PHOTO_STORAGE_ROOT=tempfile.gettempdir())   # consume refuses a missing storage root
    if handlers is not None:
        env["PHOTO_JOB_HANDLERS"] = json.dumps(handlers)
    for key, value in settings.items():
        env["PHOTO_" + key.upper()] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return env


def start_consumer(queue: str, env: dict, log_dir: Path | str, *, wait_ready: bool = True) -> subprocess.Popen:
    """Start `python -m workers consume --queue QUEUE`; stdout (JSON lines) and stderr go to files.

    The Popen gets `.log_path` and `.err_path`. With wait_ready, returns once it is consuming."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{queue}-{time.monotonic_ns()}"
    out, err = log_dir / f"{stamp}.jsonl", log_dir / f"{stamp}.err"
    proc = subprocess.Popen([sys.executable, "-m", "workers", "consume", "--queue", queue],
                            cwd=PROJECT_ROOT, env=env, stdout=open(out, "wb"), stderr=open(err, "wb"))
    proc.log_path, proc.err_path = out, err
    if wait_ready:
        deadline = time.monotonic() + 30
        while f"consuming {queue}" not in err.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"consumer did not start (rc={proc.poll()}):\n{err.read_text()}")
            time.sleep(0.05)
    return proc


def log_lines(proc) -> list[dict]:
    """The per-job JSON lines the consumer printed so far."""
    out = []
    for line in Path(proc.log_path).read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_for_log(proc, pred: Callable[[dict], bool], count: int = 1, timeout: float = 30) -> list[dict]:
    """Wait until `count` log lines satisfy `pred`; returns them."""
    found: list[dict] = []

    def check():
        found[:] = [l for l in log_lines(proc) if pred(l)]
        return len(found) >= count
    wait_for(check, timeout, f"{count} log line(s)", proc)
    return found


def stop_consumer(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM (finish the current job, then exit) and wait; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class Supervised:
    """Keeps one consumer running like supervisor's autorestart (a timed-out job exits the process)."""

    def __init__(self, queue: str, env: dict, log_dir: Path | str):
        self.queue, self.env, self.log_dir = queue, env, log_dir
        self.procs: list[subprocess.Popen] = [start_consumer(queue, env, log_dir)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            if self.procs[-1].poll() is not None and not self._stop.is_set():
                self.procs.append(start_consumer(self.queue, self.env, self.log_dir, wait_ready=False))
            time.sleep(0.1)

    def lines(self) -> list[dict]:
        return [l for p in list(self.procs) for l in log_lines(p)]

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self.procs]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for p in self.procs:
            stop_consumer(p)


# --- publishing --------------------------------------------------------------------------------

def publish_job(amqp_url: str, class_name: str, data, queue: str, *, attempts: int = 0, **job_class) -> bytes:
    """Publish `new class_name($data)` onto `queue` as Laravel + the RabbitMQ driver would; returns the body.

    job_class: JobClass fields (tries=, backoff=, timeout=, retry_until=, fail_on_timeout=)."""
    from workers.queue import broker
    from workers.laravel import JobClass, build_payload
    msg = build_payload(JobClass(class_name, **job_class), data, queue=queue)
    publish_body(amqp_url, msg.body, queue, attempts=attempts, correlation_id=msg.payload["id"])
    return msg.body


def publish_body(amqp_url: str, body: bytes, queue: str, *, attempts: int | None = 0,
                 correlation_id: str | None = None) -> None:
    """Publish raw bytes with the driver's properties (attempts=None: no headers at all)."""
    from workers.queue import broker
    conn, ch = broker.connect(amqp_url)
    try:
        props: dict = {"content_type": "application/json", "delivery_mode": 2}
        if correlation_id:
            props["correlation_id"] = correlation_id
        if attempts is not None:
            props["headers"] = {"laravel": {"attempts": attempts}}
        broker.publish_raw(ch, body, props, queue)
    finally:
        conn.close()


def queue_depth(amqp_url: str, queue: str) -> int:
    """Ready messages in `queue` (0 if the queue does not exist)."""
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
    finally:
        if conn.is_open:
            conn.close()


def drain(amqp_url: str, queue: str) -> list[tuple[dict, bytes]]:
    """Take every ready message off `queue`: [(headers, body)]."""
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props.headers or {}, body))
    finally:
        conn.close()
