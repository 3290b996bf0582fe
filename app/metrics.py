"""Request metrics and the /metrics page, right across gunicorn workers."""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter,
                               generate_latest)
from prometheus_client import multiprocess

REQUESTS = Counter("registry_http_requests", "HTTP requests, by route, method and status",
                   ["route", "method", "status"])
BYTES_SERVED = Counter("registry_served_bytes", "Bytes of blobs and manifests sent to clients",
                       ["kind"])
# Children made once: looking a child up by its labels is a good share of
# what a cached pull's request costs.
BLOB_BYTES = BYTES_SERVED.labels("blob")
MANIFEST_BYTES = BYTES_SERVED.labels("manifest")
_request_counters = {}


def count_request(route: str, method: str, status: str) -> None:
    key = (route, method, status)
    counter = _request_counters.get(key)
    if counter is None:
        counter = _request_counters.setdefault(key, REQUESTS.labels(*key))
    counter.inc()


def exposition(metrics_path: str | None) -> tuple[bytes, str]:
    """The metrics page: every worker's numbers when they share a folder."""
    if metrics_path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_path)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
