"""gunicorn's gthread worker, keeping a busy connection on its thread.

gthread hands every kept-alive connection back to the worker's main thread
after each request: the socket goes into the poller, and when the next
request arrives it is queued to the thread pool again.  A pull is a run of
requests on one connection (a manifest, then a blob after blob), and for a
manifest or a small layer that round trip cost about as much as answering.
Here the thread that answered waits up to LINGER for the connection's next
request and answers it itself, but only while no other connection is
queued for a thread: a busy client never makes another one wait.

Written against gunicorn 27's gthread (see setup.cfg's pin):
`ThreadWorker.enqueue_req(conn)` queues a connection to the pool and
`ThreadWorker.handle(conn)` answers one request, returning True when the
connection may be kept alive.
"""
from __future__ import annotations

import select
import threading

from gunicorn.workers.gthread import ThreadWorker

LINGER = 0.005  # seconds a thread waits for its connection's next request


class Worker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._queued = 0  # connections waiting for a thread
        self._queued_lock = threading.Lock()

    def enqueue_req(self, conn):
        with self._queued_lock:
            self._queued += 1
        super().enqueue_req(conn)

    def handle(self, conn):
        with self._queued_lock:
            self._queued -= 1
        while True:
            keepalive = super().handle(conn)
            if (keepalive is not True or not self.alive or self._queued
                    or not _next_request_soon(conn)):
                return keepalive


def _next_request_soon(conn) -> bool:
    """Whether the connection has (or within LINGER gets) bytes to read;
    end of file counts too: the next handle() sees the close."""
    if conn.parser.unreader.buf.getvalue():
        return True  # already read ahead, the socket will not signal it
    poll = select.poll()
    poll.register(conn.sock, select.POLLIN)
    return bool(poll.poll(LINGER * 1000))
