"""nginx's reports of what it answered from its cache, read from the file
it appends them to (NIXERY_FRONT_REPORTS as an absolute path; what the
shipped deploy/nginx.conf does): one worker process at a time reads it,
counts its lines and frees what it counted."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import threading
from collections import Counter

from .front_reports import FLUSH_SECONDS, Tally, parse_line

logger = logging.getLogger(__name__)

# The most of a report file read at once: a few seconds of a busy cache.
CHUNK = 4 << 20
# fallocate(2): free a range's blocks, keeping the file's size
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
# Holes begin at a multiple of this: of any file system's block size
ALIGN = 1 << 20

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
            size = os.fstat(fd).st_size
            if size < offset:  # cut short: from its first line again
                offset = freed = self._first(fd)
            before = offset
            offset, more = self._read(fd, offset, size)
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

    def _read(self, fd: int, offset: int, size: int) -> tuple[int, bool]:
        """Counts the whole lines from `offset` on (CHUNK at most) of the
        file's `size` bytes; returns where the next one begins, and whether
        more are waiting."""
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
