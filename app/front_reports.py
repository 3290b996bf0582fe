"""The counting of what the caching nginx in front (deploy/nginx.conf)
answered from its cache alone: nginx reports each such answer as a line,
`kind method status bytes` (its `registry_report` log format), and the
registry adds them to the request and byte counters its own answers go to
(prometheus_client's shared files), a second's worth at a time, so that
/metrics count every request and every byte served.

NIXERY_FRONT_REPORTS says where the lines come from:

- an absolute path (FileReports, what the shipped files use): a file nginx
  appends to through a 64 KiB buffer, flushed each second.  One worker
  process at a time reads it, and frees what it has counted.  A
  datagram per request cost nginx and the registry a sixth of the cached
  pulls they could serve on two cores; a buffered file costs next to
  nothing.  It needs a folder nginx and the registry share.
- HOST:PORT (UdpReports): syslog over UDP, for an nginx on another machine;
  each worker process receives a share (SO_REUSEPORT).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import select
import socket
import threading
import time
from collections import Counter
from typing import NamedTuple

from . import metrics
from .settings import host_port

logger = logging.getLogger(__name__)

# What a report line says, and the route of the registry's own answers it counts as.
TAG = b"registry_front: "
ROUTES = {"blob": "registry.blobs", "manifest": "registry.manifests"}
METHODS = {"GET", "HEAD"}
FLUSH_SECONDS = 1.0
BATCH = 100_000
PAUSE = 0.005
RECEIVE_BUFFER = 1 << 20
# The most of a report file read at once: a few seconds of a busy cache.
CHUNK = 4 << 20
# fallocate(2): free a range's blocks, keeping the file's size
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
# Holes begin at a multiple of this: of any file system's block size
ALIGN = 1 << 20




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


def receiver(where: str):
    """What counts nginx's reports from `where` (NIXERY_FRONT_REPORTS)."""
    return FileReports(where) if where.startswith("/") else UdpReports(where)


_libc = None


def punch_hole(fd: int, start: int, end: int) -> None:
    """Frees the blocks of bytes start..end of the file open as `fd` (they
    read as zeroes from then on); its size stays.  OSError when the
    filesystem cannot (e.g. EOPNOTSUPP)."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        _libc = libc
    if end > start and _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                       start, end - start) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class FileReports:
    """Reads nginx's report lines from the file at `path` (NIXERY_FRONT_REPORTS
    as an absolute path; nginx's `access_log PATH registry_report buffer=64k
    flush=1s`) in a thread of its own, once `start` is called (gunicorn's
    workers call it; commands never do), and counts them.

    Every worker process tries; the one that holds the file's flock reads
    it, the others try again each `flush_seconds`, so another takes over
    when the reader's worker exits.  What has been counted is freed
    (punch_hole): the file holds only lines not yet counted, though its
    size (as `ls` says, not `du`) keeps growing.  A reader that starts, or
    takes over, begins at the file's first byte not freed.  A file moved
    away or replaced (nginx opens its path again at a restart or a
    `nginx -s reopen`) is read to its end before the new one is."""

    def __init__(self, path: str, flush_seconds=FLUSH_SECONDS):
        self.path = path
        self.flush_seconds = flush_seconds
        self.tally = Tally()
        self.reading = threading.Event()  # set while this process is the reader
        self._stopped = threading.Event()
        self._thread = None
        self._said: set[str] = set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="front-reports", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Counts what is left (when this process is the reader) and stops."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)

    def _say(self, key: str, message: str, *args) -> None:
        """Logs a trouble once (the reader tries again each second)."""
        if key not in self._said:
            self._said.add(key)
            logger.error(message, *args)

    def _run(self) -> None:
        while not self._stopped.is_set():
            opened = self._open()
            if opened is not None:
                fd, writable = opened
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another worker reads it
                else:
                    self.reading.set()
                    try:
                        if self._follow(fd, writable):
                            continue  # replaced: the new file at once
                    finally:
                        self.reading.clear()
                finally:
                    os.close(fd)
            self._stopped.wait(self.flush_seconds)

    def _open(self) -> tuple[int, bool] | None:
        flags = os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
            # nginx, when root, may make it another user's at a reopen: the
            # group keeps it the registry's
            os.fchmod(fd, 0o660)
            return fd, True
        except FileExistsError:
            pass
        except OSError as e:
            self._say("open", "NIXERY_FRONT_REPORTS %s: cannot make it, what nginx answers from "
                      "its cache is not counted: %s", self.path, e.strerror)
            return None
        try:
            return os.open(self.path, flags | os.O_RDWR), True
        except PermissionError:
            pass
        except OSError as e:
            if e.errno != errno.ENOENT:  # removed just now: made again next time
                self._say("open", "NIXERY_FRONT_REPORTS %s: cannot open it, what nginx answers "
                          "from its cache is not counted: %s", self.path, e.strerror)
            return None
        try:
            fd = os.open(self.path, flags | os.O_RDONLY)
        except OSError as e:
            self._say("open", "NIXERY_FRONT_REPORTS %s: cannot read it, what nginx answers "
                      "from its cache is not counted: %s", self.path, e.strerror)
            return None
        self._say("write", "NIXERY_FRONT_REPORTS %s: the registry may read it but not write it, "
                  "so what it counted cannot be freed and the file grows: make it the "
                  "registry's user's or group's (mode 0660)", self.path)
        return fd, False

    def _follow(self, fd: int, writable: bool) -> bool:
        """Counts the file's lines as they come, until stopped (False) or
        replaced and read to its end (True)."""
        offset = self._first(fd)
        freed = offset
        quiet = 0
        while True:
            stopping = self._stopped.is_set()
            if os.fstat(fd).st_size < offset:  # cut short: from its first line again
                offset = freed = self._first(fd)
            before = offset
            offset, more = self._read(fd, offset)
            if writable and offset > freed:
                try:
                    # a block is only freed when one hole covers it whole:
                    # from well before the first byte not yet freed (all
                    # before `offset` is counted)
                    punch_hole(fd, freed - freed % ALIGN, offset)
                    freed = offset
                except OSError as e:
                    writable = False
                    self._say("free", "NIXERY_FRONT_REPORTS %s: cannot free what was counted "
                              "(%s), so the file grows: put it on a filesystem that punches "
                              "holes (tmpfs, ext4, xfs, btrfs)", self.path, e.strerror)
            if more:
                continue
            if stopping:
                return False
            if self._replaced(fd):
                # nginx writes to the file it opened until it opens the path
                # again: once nothing came for two rounds, it has
                quiet = 0 if offset != before else quiet + 1
                if quiet >= 2:
                    return True
            self._stopped.wait(self.flush_seconds)

    @staticmethod
    def _first(fd: int) -> int:
        """Where the lines not yet counted begin: the first byte not freed
        (those of a freed line's block read as zeroes, skipped as they are
        read)."""
        size = os.fstat(fd).st_size
        try:
            return os.lseek(fd, 0, os.SEEK_DATA)
        except OSError:
            return size  # ENXIO: nothing but holes

    def _read(self, fd: int, offset: int) -> tuple[int, bool]:
        """Counts the whole lines from `offset` on (CHUNK at most); returns
        where the next one begins, and whether more are waiting."""
        size = os.fstat(fd).st_size
        if size <= offset:
            return offset, False
        data = os.pread(fd, min(size - offset, CHUNK), offset)
        end = data.rfind(b"\n") + 1
        if not end:
            if len(data) < CHUNK:
                return offset, False  # a line still being written
            end = len(data)  # no report is that long: not nginx's, passed over
        for line, times in Counter(data[:end].split(b"\n")).items():
            report = parse_line(line.strip(b"\0"))
            if report is not None:
                self.tally.add(report, times)
        if self.tally.pending:
            self.tally.flush()
        return offset + end, offset + end < size

    def _replaced(self, fd: int) -> bool:
        """Whether another file is at the path now (a missing one is not
        another: nginx still writes to this one until it makes it)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)
