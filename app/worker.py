"""gunicorn's gthread worker, keeping a busy connection on its thread.

gthread hands every kept-alive connection back to the worker's main thread
after each request: the socket goes into the poller, and when the next
request arrives it is queued to the thread pool again.  A pull is a run of
requests on one connection (a manifest, then a blob after blob), and for a
manifest or a small layer that round trip cost about as much as answering.
Here the thread that answered waits up to LINGER for the connection's next
request and answers it itself; a connection that goes quiet, or has had
MAX_STREAK requests in a row, goes back to the poller as before, so one
busy client cannot hold a thread for ever.

Written against gunicorn 27's gthread (see setup.cfg's pin):
`ThreadWorker.handle(conn)` answers one request and returns True when the
connection may be kept alive.
"""
from __future__ import annotations

import select

from gunicorn.workers.gthread import ThreadWorker

LINGER = 0.005       # seconds a thread waits for a connection's next request
MAX_STREAK = 32      # requests in a row before the connection goes back to the poller


class Worker(ThreadWorker):
    def handle(self, conn):
        for _ in range(MAX_STREAK - 1):
            keepalive = super().handle(conn)
            if keepalive is not True or not self.alive or not _next_request_soon(conn):
                return keepalive
        return super().handle(conn)


def _next_request_soon(conn) -> bool:
    """Whether the connection has (or within LINGER gets) bytes to read;
    end of file counts too: the next handle() sees the close."""
    if conn.parser.unreader.buf.getvalue():
        return True  # already read ahead, the socket will not signal it
    poll = select.poll()
    poll.register(conn.sock, select.POLLIN)
    return bool(poll.poll(LINGER * 1000))
