"""Request metrics and the /metrics page, right across gunicorn workers."""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter,
                               generate_latest)
from prometheus_client import multiprocess

REQUESTS = Counter("registry_http_requests", "HTTP requests, by route, method and status",
                   ["route", "method", "status"])
BYTES_SERVED = Counter("registry_served_bytes", "Bytes of blobs and manifests sent to clients",
                       ["kind"])


def exposition(metrics_path: str | None) -> tuple[bytes, str]:
    """The metrics page: every worker's numbers when they share a folder."""
    if metrics_path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_path)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
