"""What the registry does for the caching nginx in front of it
(deploy/nginx.conf), so that nginx may answer cached pulls alone and
nothing is lost: which answers it may keep and for how long, whether a
request's credentials are good, and the counting of what it answered.

- Keeping: an answer that may be kept says so in `X-Accel-Expires`, which
  nginx reads and never passes on (app/registry.py adds it).  A blob's
  bytes never change under its digest: a year.  A manifest by digest
  likewise, but for an hour at most, so that a pull by digest still
  reaches the registry often enough to mark what it uses against garbage
  collection.  A manifest by tag for two seconds: tags move.  Errors,
  redirects, 304s, ranges and X-Accel-Redirect answers are never kept.
- Credentials: nginx asks AUTH_PATH before every /v2 request (its
  `auth_request`), and keeps a yes AUTH_SECONDS per Authorization header.
  Anything but a yes is a 401, after which nginx hands the request itself
  to the registry, which refuses it as always (401, or 429 in a lockout).
  This check counts no failures, so a wrong password counts once.
- Counting: nginx sends a line for each answer from its cache to
  NIXERY_FRONT_REPORTS (syslog over UDP, `kind method status bytes`);
  each worker process receives a share of them (SO_REUSEPORT) and adds
  them, a second's worth at a time, to the request and byte counters the
  registry's own answers go to.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections import Counter
from typing import NamedTuple

from . import metrics
from .errors import RegistryError
from .scope import ROUTE
from .settings import host_port

logger = logging.getLogger(__name__)

AUTH_PATH = "/_front/auth"
AUTH_SECONDS = 5
EXPIRES = "X-Accel-Expires"
BLOB_SECONDS = 365 * 24 * 3600
TAG_SECONDS = 2
DIGEST_SECONDS = 3600
# Blobs up to this size are sent by the registry and kept by nginx; larger
# ones are sent by nginx from the storage folder (NIXERY_BLOB_ACCEL), where
# a request's cost is small beside its bytes' and a cache copy would be big.
CACHED_BLOB_MAX = 8 << 20

# What a report line says, and the route of the registry's own answers it counts as.
TAG = b"registry_front: "
ROUTES = {"blob": "registry.blobs", "manifest": "registry.manifests"}
METHODS = {"GET", "HEAD"}
FLUSH_SECONDS = 1.0
BATCH = 100_000
PAUSE = 0.005
RECEIVE_BUFFER = 1 << 20


def expires(seconds: float) -> tuple[str, str]:
    """The header that lets nginx keep an answer `seconds`."""
    return EXPIRES, str(int(seconds))


class FrontAuth:
    """WSGI: answers AUTH_PATH (200, or 401 with no body), everything else
    goes on to `app`.  `authenticator` is None when pulls need no
    credentials: then the answer is always yes."""

    def __init__(self, app, authenticator=None):
        self.app = app
        self.authenticator = authenticator

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != AUTH_PATH:
            return self.app(environ, start_response)
        environ[ROUTE] = "front.auth"
        headers = [("Content-Length", "0")]
        auth = self.authenticator
        if auth is not None:
            try:
                environ["REMOTE_USER"] = auth.user_of(environ, count_failures=False)
            except RegistryError:
                start_response("401 Unauthorized", headers)
                return []
            if auth.user_header and auth.user_header in environ:
                # a user named by the proxy in front: its header is no part
                # of nginx's key, so this yes is not kept
                start_response("200 OK", headers)
                return []
        start_response("200 OK", [*headers, expires(AUTH_SECONDS)])
        return []


class Report(NamedTuple):
    kind: str
    method: str
    status: str
    size: int


def parse(datagram: bytes) -> Report | None:
    """One of nginx's report lines (a syslog message ending in `kind method
    status bytes`), or None for anything else."""
    _, tag, message = datagram.partition(TAG)
    fields = message.split()
    if not tag or len(fields) != 4:
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


class FrontReports:
    """Receives nginx's reports on `address` (NIXERY_FRONT_REPORTS) in a
    thread of its own, once `start` is called (gunicorn's workers call it;
    commands never do), and counts them."""

    def __init__(self, address: str, flush_seconds=FLUSH_SECONDS, batch=BATCH,
                 clock=time.monotonic):
        self.address = host_port(address)
        self.flush_seconds = flush_seconds
        self.batch = batch
        self.tally = Tally()
        self._clock = clock
        self._sock = None
        self._thread = None

    def start(self) -> None:
        if self._thread is not None:
            return
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # every worker process binds it: each receives a share
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # room for what comes in a PAUSE (the kernel may allow less)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            logger.error("NIXERY_FRONT_REPORTS: cannot listen on %s:%s, what nginx answers "
                         "from its cache is not counted: %s", host, port, e)
            return
        sock.setblocking(False)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="front-reports", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A busy cache sends tens of thousands of lines a second, on the
        # cores nginx needs: waking for each one cost nginx a fifth of its
        # pulls.  So while they come, they are let gather in the socket's
        # buffer for PAUSE and then read all at once; each is only counted
        # as it comes (few are different: the syslog timestamp changes once
        # a second), and read once per batch.
        sock = self._sock
        lines: dict[bytes, int] = {}
        pending = 0
        flushed = self._clock()
        while self._sock is not None:
            got = 0
            try:
                while True:
                    data = sock.recv(4096)
                    lines[data] = lines.get(data, 0) + 1
                    got += 1
            except BlockingIOError:
                pass
            except OSError:
                break  # closed by stop()
            pending += got
            if pending >= self.batch or (
                    pending and self._clock() - flushed >= self.flush_seconds):
                self._count(lines)
                lines, pending, flushed = {}, 0, self._clock()
            try:
                if got:
                    time.sleep(PAUSE)
                else:
                    select.select([sock], [], [], self.flush_seconds)
                    if not pending:
                        flushed = self._clock()
            except (OSError, ValueError):
                break  # closed by stop()
        self._count(lines)

    def _count(self, lines: dict[bytes, int]) -> None:
        for data, times in lines.items():
            report = parse(data)
            if report is not None:
                self.tally.add(report, times)
        if self.tally.pending:
            self.tally.flush()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(5)
