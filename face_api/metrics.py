"""Prometheus metrics. Multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set (gunicorn.conf.py
sets it), otherwise per worker."""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest,
)
from prometheus_client import REGISTRY

REQUESTS = Counter("face_api_requests_total", "HTTP requests", ["endpoint", "status"])
LATENCY = Histogram(
    "face_api_request_seconds", "Request latency", ["endpoint"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300),
)
FACES = Counter("face_api_faces_found_total", "Faces found by /encode")
PHOTOS = Counter("face_api_photos_total", "Photos processed by /encode", ["result"])


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
