"""nginx's reports of what it answered from its cache, received as syslog
datagrams over UDP (NIXERY_FRONT_REPORTS as HOST:PORT): for an nginx on
another machine, which cannot share a file with the registry.  Each worker
process binds the address (SO_REUSEPORT) and counts its share."""
from __future__ import annotations

import logging
import select
import socket
import threading
import time

from .front_reports import FLUSH_SECONDS, Tally, parse
from .settings import host_port

logger = logging.getLogger(__name__)

BATCH = 100_000
PAUSE = 0.005
RECEIVE_BUFFER = 1 << 20


class UdpReports:
    """Receives nginx's reports on `address` (NIXERY_FRONT_REPORTS as
    HOST:PORT; nginx's `access_log syslog:server=HOST:PORT,...`) in a
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
