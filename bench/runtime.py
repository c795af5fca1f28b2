"""Consumer throughput with a no-op handler: what the runtime itself costs per job
(decode → lock → handler thread → commit → ack → unlock, one JSON log line).

Starts its own MariaDB and RabbitMQ (tests/services.py), publishes N Laravel payloads, runs
`python -m workers consume` (1 and 2 processes) until the queue is empty; then the same on SQLite.

    .venv/bin/python bench/runtime.py [--jobs 5000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.consumers import (  # noqa: E402
    consumer_env, log_lines, start_consumer, stop_consumer,
)
from tests.support.services import MariaDB, RabbitMQ, cpu_seconds  # noqa: E402

JOB = "App\\Jobs\\MetadataProcessJob"
TARGET = 300.0   # jobs/s per process (the brief's target on this 2-core box)


def publish(amqp_url: str, queue: str, n: int) -> None:
    from workers.queue import broker
    from workers.laravel import build_chain_payload
    conn, ch = broker.connect(amqp_url)
    for i in range(1, n + 1):
        msg = build_chain_payload([(JOB, {"image_id": i, "path": f"photos/{i}.jpg"})], queue=queue)
        broker.publish(ch, msg, queue)
    conn.close()


def run(db_url: str, amqp_url: str, queue: str, n: int, procs: int, logs: Path) -> dict:
    from workers import db
    db.migrate(db.engine_for(db_url))
    publish(amqp_url, queue, n)
    env = consumer_env(db_url, amqp_url, {JOB: "tests.support.handlers:noop"})
    ps = [start_consumer(queue, env, logs) for _ in range(procs)]
    t0 = time.monotonic()
    while sum(Path(p.log_path).read_bytes().count(b"\n") for p in ps) < n:   # cheap: no parsing
        time.sleep(0.2)
    wall = time.monotonic() - t0
    cpu = sum(cpu_seconds(p.pid) for p in ps)
    for p in ps:
        stop_consumer(p)
    lines = [l for p in ps for l in log_lines(p)]
    ms = [l["ms"] for l in lines]
    assert all(l["outcome"] == "done" for l in lines), {l["outcome"] for l in lines}
    return {"jobs": len(lines), "wall": wall, "per_proc": n / wall / procs, "total": n / wall,
            "cpu_ms": cpu * 1000 / n, "p50": statistics.median(ms), "p95": statistics.quantiles(ms, n=20)[18]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    maria = MariaDB(base / "mariadb").start() if (base / "mariadb").mkdir() is None else None
    rabbit = RabbitMQ(base / "rabbitmq").start() if (base / "rabbitmq").mkdir() is None else None
    rows = []
    try:
        for db_name, procs in (("mariadb", 1), ("mariadb", 2), ("sqlite", 1), ("sqlite", 2)):
            tag = f"{db_name}{procs}"
            url = (maria.create_database("bench_" + tag) if db_name == "mariadb"
                   else f"sqlite:///{base / (tag + '.db')}")
            r = run(url, rabbit.url, "bench_" + tag, args.jobs, procs, base / "logs")
            rows.append((db_name, procs, r))
            print(f"  {db_name:8} x{procs}: {r['total']:7.0f} jobs/s", file=sys.stderr)
    finally:
        rabbit.stop()
        maria.stop()
    print(f"\nrun-time overhead, no-op handler, {args.jobs} jobs per run (target >= {TARGET:.0f} jobs/s per process)")
    print(f"{'database':10} {'procs':>5} {'jobs/s total':>13} {'jobs/s/proc':>12} {'ms/job p50':>11} "
          f"{'ms/job p95':>11} {'CPU ms/job':>11} {'vs target':>10}")
    for db_name, procs, r in rows:
        print(f"{db_name:10} {procs:>5} {r['total']:>13.0f} {r['per_proc']:>12.0f} {r['p50']:>11.2f} "
              f"{r['p95']:>11.2f} {r['cpu_ms']:>11.2f} {r['per_proc'] / TARGET:>9.2f}x")
    print(f"(load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          "ms/job = inside the consumer, from message in hand to ack; CPU ms/job = consumer process CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
