"""Optional Prometheus metrics for a queue consumer: jobs by outcome and a duration histogram."""
from __future__ import annotations


class ConsumerMetrics:
    def __init__(self, port: int | None, queue: str):
        self.enabled = bool(port)
        if not self.enabled:
            return
        from prometheus_client import Counter, Histogram, start_http_server
        self.jobs = Counter("photo_jobs", "jobs handled", ["queue", "outcome"])
        self.seconds = Histogram("photo_job_seconds", "job duration", ["queue"],
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 120, 300, 600))
        self.queue = queue
        start_http_server(port, addr="127.0.0.1")

    def observe(self, outcome: str, seconds: float) -> None:
        if self.enabled:
            self.jobs.labels(self.queue, outcome).inc()
            self.seconds.labels(self.queue).observe(seconds)
