"""The counting of what the caching nginx in front (deploy/nginx.conf)
answered from its cache alone: nginx reports each such answer as a line,
`kind method status bytes` (its `registry_report` log format), and the
registry adds them to the request and byte counters its own answers go to
(prometheus_client's shared files), a second's worth at a time, so that
/metrics count every request and every byte served.

NIXERY_FRONT_REPORTS says where the lines come from:

- an absolute path (app/front_file.py, what the shipped files use): a file nginx
  appends to through a 64 KiB buffer, flushed each second.  One worker
  process at a time reads it, and frees what it has counted.  A
  datagram per request cost nginx and the registry a sixth of the cached
  pulls they could serve on two cores; a buffered file costs next to
  nothing.  It needs a folder nginx and the registry share.
- HOST:PORT (app/front_udp.py): syslog over UDP, for an nginx on another
  machine; each worker process receives a share (SO_REUSEPORT).

This module is what both share: the lines, and their tally.
"""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from . import metrics

# What a report line says, and the route of the registry's own answers it counts as.
TAG = b"registry_front: "
ROUTES = {"blob": "registry.blobs", "manifest": "registry.manifests"}
METHODS = {"GET", "HEAD"}
# how often the receivers add what they counted to the metrics
FLUSH_SECONDS = 1.0


class Report(NamedTuple):
    kind: str
    method: str
    status: str
    size: int


def parse(datagram: bytes) -> Report | None:
    """One of nginx's reports over syslog (a message tagged TAG, ending in
    `kind method status bytes`), or None for anything else."""
    _, tag, message = datagram.partition(TAG)
    return parse_line(message) if tag else None


def parse_line(line: bytes) -> Report | None:
    """One of nginx's report lines, `kind method status bytes`, or None for
    anything else."""
    fields = line.split()
    if len(fields) != 4:
        return None
    try:
        kind, method, status, size = (f.decode("ascii") for f in fields)
        report = Report(kind, method, status, int(size))
    except (UnicodeDecodeError, ValueError):
        return None
    if (kind not in ROUTES or method not in METHODS or len(status) != 3
            or not status.isdigit() or report.size < 0):
        return None
    return report


class Tally:
    """Reports counted in memory, added to the metrics by `flush`:
    prometheus_client's shared files take a lock and a write per change,
    and a cached pull is dozens of reports."""

    def __init__(self):
        self.requests: Counter = Counter()
        self.bytes: Counter = Counter()
        self.pending = 0

    def add(self, report: Report, times: int = 1) -> None:
        self.requests[ROUTES[report.kind], report.method, report.status] += times
        if report.size:
            self.bytes[report.kind] += report.size * times
        self.pending += times

    def flush(self) -> None:
        for (route, method, status), n in self.requests.items():
            metrics.REQUESTS.labels(route, method, status).inc(n)
        for kind, n in self.bytes.items():
            metrics.BYTES_SERVED.labels(kind).inc(n)
        self.requests.clear()
        self.bytes.clear()
        self.pending = 0


def receiver(where: str):
    """What counts nginx's reports from `where` (NIXERY_FRONT_REPORTS)."""
    # here, not at the top: both receivers import this module
    if where.startswith("/"):
        from .front_file import FileReports
        return FileReports(where)
    from .front_udp import UdpReports
    return UdpReports(where)
