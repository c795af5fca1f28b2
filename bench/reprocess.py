"""`reprocess` throughput and backpressure, beside their references, in one run.

Starts its own MariaDB and RabbitMQ (tests/services.py) and N images rows, then:

  publish   `reprocess faces --all` with no consumer and room for everything (dedup row,
            confirmed publish, checkpoint per job) beside the floor: the same N payloads built
            and published with confirms, nothing else (no database, no dedup, no checkpoint).
  drain     one consumer (`python -m workers consume`, a handler that sleeps --handler-ms, like a
            light job) taking N jobs that were all published up front, beside `reprocess` feeding
            the same consumer under a queue-depth limit: the wall time to the last job done, and
            the deepest the queue got (sampled every 50 ms).

    .venv/bin/python bench/reprocess.py [--jobs 3000] [--depth 100] [--handler-ms 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.consumers import (  # noqa: E402
    consumer_env, queue_depth, start_consumer, stop_consumer,
)
from tests.support.services import MariaDB, RabbitMQ  # noqa: E402

QUEUE = "faces"


def sleeping_handler(ctx, data) -> list:
    """The drain runs' job: only a sleep (PHOTO_BENCH_HANDLER_MS), so the consumer is the bottleneck."""
    time.sleep(float(os.environ.get("PHOTO_BENCH_HANDLER_MS", "0")) / 1000)
    return []


def add_images(db_url: str, n: int) -> None:
    import sqlalchemy as sa

    from workers import db
    from workers.schema import images
    engine = db.engine_for(db_url)
    db.migrate(engine)
    with engine.begin() as conn:
        conn.execute(images.insert(), [{"path": f"p/{i}.jpg", "created_at": db.now()} for i in range(n)])
        assert conn.execute(sa.select(sa.func.count()).select_from(images)).scalar() >= n


def settings_for(db_url: str, amqp_url: str, state: Path, depth: int):
    from workers.settings import Settings
    return Settings(database_url=db_url, amqp_url=amqp_url, storage_root=state, reprocess_state_dir=state,
                    reprocess_max_queue_depth=depth, reprocess_poll_interval=0.2)


def reprocess_all(settings):
    from workers.commands.reprocess.run import run
    from workers.commands.reprocess.targets import JOBS, ImageRows
    return run(settings, ImageRows(JOBS[QUEUE], "all", None, settings), progress=False)


def bare_publish(amqp_url: str, n: int) -> float:
    """The floor: build and publish N payloads with confirms; seconds."""
    from workers.queue import broker
    from workers.laravel import build_payload
    from workers.commands.reprocess.targets import JOBS
    conn, ch = broker.connect(amqp_url)
    t0 = time.monotonic()
    for i in range(1, n + 1):
        broker.publish(ch, build_payload(JOBS[QUEUE].class_name, {"image_id": i}, queue=QUEUE), QUEUE)
    seconds = time.monotonic() - t0
    ch.queue_purge(QUEUE)
    conn.close()
    return seconds


def consumed(proc) -> int:
    return Path(proc.log_path).read_bytes().count(b"\n")


def drain_with_consumer(db_url: str, amqp_url: str, n: int, logs: Path, feed, handler_ms: float
                        ) -> tuple[float, int]:
    """Start a no-op consumer, call `feed()` if any (in a thread), wait until it did n jobs:
    (seconds from the consumer being ready, peak depth sampled)."""
    from workers.commands.reprocess.targets import JOBS
    env = consumer_env(db_url, amqp_url, {JOBS[QUEUE].class_name: "bench.reprocess:sleeping_handler"})
    env["PHOTO_BENCH_HANDLER_MS"] = str(handler_ms)
    proc = start_consumer(QUEUE, env, logs)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, queue_depth(amqp_url, QUEUE))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    feeder = threading.Thread(target=feed or (lambda: None), daemon=True)
    sampler.start()
    feeder.start()
    while consumed(proc) < n:
        time.sleep(0.05)
    seconds = time.monotonic() - t0
    done.set()
    feeder.join()
    sampler.join()
    stop_consumer(proc)
    return seconds, peak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--depth", type=int, default=100, help="PHOTO_REPROCESS_MAX_QUEUE_DEPTH for the drain run")
    ap.add_argument("--handler-ms", type=float, default=20, help="what one job takes in the drain runs")
    args = ap.parse_args()
    n = args.jobs
    base = Path(tempfile.mkdtemp(prefix="bench-reprocess-"))
    for d in ("mariadb", "rabbitmq", "state", "logs"):
        (base / d).mkdir()
    maria, rabbit = MariaDB(base / "mariadb").start(), RabbitMQ(base / "rabbitmq").start()
    try:
        # publish: ours vs the floor
        url = maria.create_database("bench_publish")
        add_images(url, n)
        floor = bare_publish(rabbit.url, n)
        load_publish = os.getloadavg()[0]
        report = reprocess_all(settings_for(url, rabbit.url, base / "state", n + 1))
        assert report.counts["published"] == n and queue_depth(rabbit.url, QUEUE) == n
        ours = report.seconds
        from workers.queue import broker
        conn, ch = broker.connect(rabbit.url)
        ch.queue_purge(QUEUE)
        conn.close()

        # drain: everything up front vs reprocess under the depth limit
        url_a, url_b = maria.create_database("bench_upfront"), maria.create_database("bench_fed")
        add_images(url_a, n)
        add_images(url_b, n)
        reprocess_all(settings_for(url_a, rabbit.url, base / "state", n + 1))     # before the consumer
        upfront, peak_a = drain_with_consumer(url_a, rabbit.url, n, base / "logs", None, args.handler_ms)
        fed_report = {}
        fed, peak_b = drain_with_consumer(
            url_b, rabbit.url, n, base / "logs",
            lambda: fed_report.setdefault("r", reprocess_all(settings_for(url_b, rabbit.url, base / "state",
                                                                          args.depth))), args.handler_ms)
        load_drain = os.getloadavg()[0]
    finally:
        rabbit.stop()
        maria.stop()
    r = fed_report["r"]
    print(f"\nreprocess, {n} jobs (MariaDB + RabbitMQ on this box, {os.cpu_count()} CPUs)")
    print(f"{'publish (no consumer)':34} {'jobs/s':>8} {'ms/job':>8}")
    print(f"{'  bare build+publish (floor)':34} {n / floor:>8.0f} {floor * 1000 / n:>8.2f}")
    print(f"{'  reprocess faces --all':34} {n / ours:>8.0f} {ours * 1000 / n:>8.2f}"
          f"   ({ours / floor:.2f}x the floor's time; load {load_publish:.1f})")
    print(f"{f'drain by one consumer ({args.handler_ms:g} ms/job)':34} {'seconds':>8} {'peak depth':>11}")
    print(f"{'  all published up front':34} {upfront:>8.1f} {peak_a:>11}")
    print(f"{f'  reprocess, depth limit {args.depth}':34} {fed:>8.1f} {peak_b:>11}"
          f"   ({fed / upfront:.2f}x; waited {r.waits} times, {r.waited:.1f} s; load {load_drain:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
