"""Request metrics and the /metrics page, right across gunicorn workers."""
from __future__ import annotations

import json
import threading
import time

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter,
                               generate_latest)
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from storage import keys

REQUESTS = Counter("registry_http_requests", "HTTP requests, by route, method and status",
                   ["route", "method", "status"])
REFUSALS = Counter("registry_refusals", "Requests refused, by reason (auth, quota)",
                   ["reason"])
BYTES_SERVED = Counter("registry_served_bytes", "Bytes of blobs and manifests sent to clients",
                       ["kind"])
REPLAYED = Counter("registry_replayed_answers",
                   "Answers a worker gave again without the app (a cached pull's), by kind",
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


class StoredCollector:
    """What storage holds by kind, as of the last garbage collection or
    scan, and what collections freed: read from storage (`state/gc.json`,
    written by `flask --app app gc`), at most once a minute."""

    def __init__(self, storage, ttl: float = 60.0, clock=time.monotonic):
        self.storage = storage
        self.ttl = ttl
        self._clock = clock
        self._state = None
        self._read_at = None
        self._lock = threading.Lock()

    def _current(self) -> dict:
        with self._lock:
            if self._read_at is None or self._clock() - self._read_at >= self.ttl:
                try:
                    data = self.storage.read(keys.gc_state())
                    self._state = json.loads(data) if data else {}
                except Exception:  # storage trouble shows in /readyz, not here
                    self._state = self._state or {}
                self._read_at = self._clock()
            return self._state

    def collect(self):
        state = self._current()
        objects = GaugeMetricFamily("registry_stored_objects",
                                    "Objects in storage by kind, as of the last GC or scan",
                                    labels=["kind"])
        size = GaugeMetricFamily("registry_stored_bytes",
                                 "Bytes in storage by kind, as of the last GC or scan",
                                 labels=["kind"])
        for kind, tally in sorted(state.get("stored", {}).items()):
            objects.add_metric([kind], tally["objects"])
            size.add_metric([kind], tally["bytes"])
        yield objects
        yield size
        yield CounterMetricFamily("registry_gc_runs", "Garbage collections run",
                                  value=state.get("runs", 0))
        yield CounterMetricFamily("registry_gc_freed_bytes", "Bytes garbage collections freed",
                                  value=state.get("freed_bytes", 0))
        yield GaugeMetricFamily("registry_gc_last_run_timestamp_seconds",
                                "When the last garbage collection ran",
                                value=state.get("last_run_at", 0))


def exposition(metrics_path: str | None, extra=()) -> tuple[bytes, str]:
    """The metrics page: every worker's numbers when they share a folder,
    and then the `extra` collectors'."""
    if metrics_path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_path)
    else:
        registry = REGISTRY
    more = CollectorRegistry(auto_describe=False)
    for collector in extra:
        more.register(collector)
    return generate_latest(registry) + generate_latest(more), CONTENT_TYPE_LATEST
