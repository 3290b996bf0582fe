"""gunicorn's gthread worker, keeping a connection on the thread that answered it.

gthread hands every kept-alive connection back to the worker's main thread
after each request: the socket goes into the poller, and when the next
request arrives it is queued to the thread pool again.  That round (the
poller waking, the queue, a thread waking, the GIL passed along) costs
more CPU than answering a cached manifest or checking a blob, about a dozen
context switches per request.  A pull is a run of requests on one
connection (a manifest, then blob after blob), and nginx in front
(deploy/nginx.conf) sends every request over a few kept-alive connections.

Here the thread that answered a connection keeps it and waits for its next
request itself, for as long as gunicorn would keep it alive, as long as no
connection is kept waiting for a thread: a connection queued while every
thread is taken wakes one waiting thread (a byte on a pipe), which hands its
connection back to the poller and takes the queued one.  A thread that is
answering rather than waiting hands its connection back after the request
it is on.  So a busy or idle client never makes another one wait, and a
stopping worker keeps no connection (handle_exit wakes them all).

This relies on gthread internals, not on a public gunicorn API
(app/http/gthread_internals.py names and checks them), checked when this module
is imported: without them `Worker` is gunicorn's gthread worker unchanged
and a warning says so.
"""
from __future__ import annotations

import datetime
import logging
import os
import select
import socket
import threading
import time

import gunicorn
from gunicorn.workers.gthread import ThreadWorker

from ..config import script_name
from .balance import LOOK_AGAIN, Balance
from .gthread_internals import missing_internals
from .http1 import PlainHTTP, remote_addr
from .http1_response import PlainResponse

logger = logging.getLogger(__name__)

# How often a thread waiting on its connection looks up from it, to see a
# worker stopped without a signal (max_requests, its parent gone).
CHECK_EVERY = 1.0
# How long a new connection's thread waits for its first bytes, to tell a
# TLS handshake apart before gunicorn reads them.
FIRST_BYTES_WAIT = 0.5



class LingeringWorker(ThreadWorker):
    """gthread, a thread keeping the connection it answered while no other
    connection waits for a thread."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Every connection reaches a thread through enqueue_req(), and every
        # thread's work is one handle(): these count connections waiting for
        # a thread, and threads that hold one (answering, or waiting for its
        # next request).
        self._queued = 0
        self._held = 0
        self._counts = threading.Lock()
        self._wakeup = None  # made in the forked worker: init_process()
        self._plain = None   # app/http/http1.py, once the app is loaded
        # asked on every request: gunicorn's settings are slow to read
        self._threads, self._keepalive = self.cfg.threads, self.cfg.keepalive

    def init_process(self):
        self._wakeup = Wakeup()
        self._slot = BALANCE.slot_of(self.age)
        BALANCE.hold(self._slot, 0)
        super().init_process()

    # New connections, spread evenly over the workers (app/http/balance.py):
    # a worker holding more than another takes none, and looks again soon.

    def accept(self, listener):
        if not BALANCE.may_take(self._slot, self.nr_conns):
            super().set_accept_enabled(False)  # gthread's loop asks again
            return
        super().accept(listener)
        BALANCE.hold(self._slot, self.nr_conns)

    def set_accept_enabled(self, enabled):
        super().set_accept_enabled(enabled and BALANCE.may_take(self._slot, self.nr_conns))

    def wait_for_and_dispatch_events(self, timeout):
        if not self._accepting and self.alive and self.nr_conns < self.worker_connections:
            timeout = min(timeout, LOOK_AGAIN)  # declined for now: look again soon
        else:
            BALANCE.hold(self._slot, self.nr_conns)
        super().wait_for_and_dispatch_events(timeout)

    def left(self, pid=None) -> None:
        """The worker is gone (called in it as it exits, and in the master
        when it reaps it): its connections count no more."""
        slot = getattr(self, "_slot", None)
        BALANCE.leave(BALANCE.slot_of(self.age) if slot is None else slot, pid or self.pid)

    def load_wsgi(self):
        super().load_wsgi()
        if PlainHTTP.usable(self.cfg, script_name()):
            self._plain = PlainHTTP(self)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        if self._wakeup is not None:
            self._wakeup.set(self.cfg.threads)  # every waiting thread lets go

    def handle_error(self, req, client, addr, exc):
        """gunicorn's refusal of a request it could not read, in the
        registry's JSON (app/errors.py) instead of its HTML page, with a
        request id, an access log line and its count in the metrics; any
        other error as gunicorn answers it."""
        # imported here, in the worker: they make the metrics, which
        # gunicorn's master (where this module is imported) must not
        from .. import errors, metrics
        error = errors.for_unreadable_request(exc)
        if error is None:
            return super().handle_error(req, client, addr, exc)
        peer = remote_addr(addr or "")
        self.log.warning("Invalid request from ip=%s: %s", peer, exc)
        resp = self._refuse(client, error)
        # counted and logged like every answer, as what it is: nothing of
        # the request (its method, its path) is known for sure
        metrics.count_request("unreadable", "-", str(resp.status_code))
        try:
            self.log.access(resp, req, {"REMOTE_ADDR": peer, "REQUEST_METHOD": "-",
                                        "RAW_URI": "-"}, datetime.timedelta(0))
        except Exception:
            self.log.exception("cannot write the access log")
        return None

    def _refuse(self, client, error) -> PlainResponse:
        """Write the registry's JSON answer of `error`, and the end of the
        connection, to a client whose request was not read."""
        from .. import logs, wire
        status, headers, body = error.render()
        resp = PlainResponse(client, "GET", must_close=True)  # its method is unknown
        rid = logs.new_request_id(None)
        resp.start_response(wire.STATUS_LINES[status],
                            [*headers, wire.API_VERSION, ("X-Request-ID", rid)])
        try:
            resp.write(body)
            resp.close()
        except OSError:
            self.log.debug("Failed to send error message.")
        return resp

    def _tls_on_plain_port(self, conn) -> bool:
        """Whether a new connection opens with a TLS handshake on this plain
        HTTP port, as skopeo and podman do before they try http://: then it
        is answered in plain HTTP (Go's TLS client reads that as "server
        gave HTTP response to HTTPS client") and closed, with one INFO line
        instead of a warning and an access line of an unreadable request:
        it is every such pull's first connection."""
        if conn.parser is not None or self.cfg.is_ssl:
            return False  # not a new connection, or TLS is gunicorn's here
        # a client writes its first bytes as soon as it is connected, but the
        # thread may be quicker: wait for them a moment (then gunicorn waits)
        poll = select.poll()
        poll.register(conn.sock.fileno(), select.POLLIN)
        try:
            if not poll.poll(FIRST_BYTES_WAIT * 1000):
                return False
            head = conn.sock.recv(2, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False  # gone
        if head != b"\x16\x03":  # a TLS record of a handshake, any version
            return False
        from .. import errors
        self.log.info("TLS handshake from ip=%s on this plain-HTTP port (a client trying "
                      "HTTPS first); answered in plain HTTP", remote_addr(conn.client or ""))
        conn.sock.setblocking(True)
        self._refuse(conn.sock, errors.for_tls_on_plain_http())
        return True

    def _starved(self) -> bool:
        """Whether a connection waits that no free thread will take."""
        with self._counts:
            return self._queued > self._threads - self._held

    def enqueue_req(self, conn):
        with self._counts:
            self._queued += 1
        super().enqueue_req(conn)
        if self._starved():
            self._wakeup.set()

    def handle(self, conn):
        with self._counts:
            self._queued -= 1
            self._held += 1
        try:
            if self._tls_on_plain_port(conn):
                return False
            keepalive = super().handle(conn)  # a connection's first request is gunicorn's
            while True:
                if keepalive is not True or not self.alive or self._starved():
                    return keepalive
                let_go = self._wait_for_request(conn)
                if let_go is not None:
                    return let_go
                keepalive = self._next_request(conn)
        finally:
            with self._counts:
                self._held -= 1

    def _next_request(self, conn):
        """Answer the next request on a kept connection: a plain one here
        (app/http/http1.py), any other by gthread as before."""
        if self._plain is not None:
            try:
                kept = self._plain.serve(conn)
            except OSError as e:
                self.log.debug("Connection lost: %s", e)
                return False
            if kept is not None:
                return kept
        return super().handle(conn)

    def _wait_for_request(self, conn) -> bool | None:
        """None once the connection has bytes to read (its next request, or
        its close, which the next handle() sees); else what handle() returns
        without answering: True to hand the connection back to the poller
        (another connection needs this thread, or the worker stops), False
        to close it (idle as long as gunicorn keeps a connection alive)."""
        if conn.parser.unreader.buf.getvalue():
            return None  # already read ahead: the socket will not signal it
        sock = conn.sock.fileno()
        poll = getattr(conn, "lingering_poll", None)
        if poll is None:  # made once per connection: it waits before each request
            poll = conn.lingering_poll = select.poll()
            poll.register(sock, select.POLLIN)
            poll.register(self._wakeup.fileno(), select.POLLIN)
        deadline = time.monotonic() + self._keepalive
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = {fd for fd, _ in poll.poll(min(left, CHECK_EVERY) * 1000)}
            if sock in ready:
                return None
            if not self.alive or self.ppid != os.getppid():
                return True  # gthread closes it as a stopping worker does
            # one wake-up byte lets one thread go; one another thread took,
            # or left from a wait that has since ended, lets none go
            if ready and self._wakeup.take() and self._starved():
                return True


class Wakeup:
    """A pipe threads wait on beside their connection: each byte written
    wakes them all, and lets one of them go."""

    def __init__(self):
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self, count=1):
        try:
            os.write(self._write, b"\0" * count)
        except BlockingIOError:
            pass  # full: it is readable, which is all a waiting thread needs

    def take(self) -> bool:
        """Whether this caller got a byte (another waiting thread did not)."""
        try:
            return bool(os.read(self._read, 1))
        except BlockingIOError:
            return False

    def close(self):
        os.close(self._read)
        os.close(self._write)


class PlainWorker(ThreadWorker):
    """gunicorn's gthread worker unchanged, for a gunicorn without the
    internals LingeringWorker relies on."""


def worker_class() -> type[ThreadWorker]:
    """LingeringWorker if the installed gunicorn has every internal it relies
    on, else PlainWorker and a warning naming what is missing."""
    missing = missing_internals()
    if not missing:
        return LingeringWorker
    logger.warning("gunicorn %s lacks gthread internals app/http/worker.py relies on: %s; "
                "the registry falls back to plain gthread workers",
                gunicorn.__version__, "; ".join(missing))
    return PlainWorker


# Decided once, at import: gunicorn's master loads the class before forking,
# and the table its workers share is made here, before any is forked.
Worker = worker_class()
BALANCE = Balance()
