"""Build coordination between threads, workers and processes on one machine.

Locks are flock()s on files in one folder: the kernel drops them when a
process dies, so a worker killed mid-build never leaves a lock behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time

from .errors import BuildQueueFull

logger = logging.getLogger(__name__)

# Polling intervals while waiting for a lock: short first, for quick builds.
_POLL_MIN, _POLL_MAX = 0.02, 0.5


def _try_lock(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def _wait(deadline, delay):
    if time.monotonic() >= deadline:
        return None
    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    return min(delay * 2, _POLL_MAX)


class BuildLocks:
    """One build per image, and at most `max_builds` builds at once."""

    def __init__(self, root, *, max_builds, queue_timeout):
        self.root = root
        self.max_builds = max_builds
        self.queue_timeout = queue_timeout
        self.turns = FairTurns()
        os.makedirs(root, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.root, name)

    @contextlib.contextmanager
    def image(self, key, timeout, on_wait=None):
        """Hold the lock of one image; waits while another process builds it
        (calling `on_wait()` first).  Yields whether it waited: only then may
        that build's outcome be there."""
        path = self._path(f"image-{key}.lock")
        deadline, delay = time.monotonic() + timeout, _POLL_MIN
        fd = _try_lock(path)
        waited = fd is None
        if waited and on_wait:
            on_wait()
        while fd is None:
            delay = _wait(deadline, delay)
            if delay is None:
                raise BuildQueueFull(
                    f"this image has been building for over {timeout:.0f}s; try again shortly",
                    retry_after=30)
            fd = _try_lock(path)
        try:
            yield waited
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def slot(self, on_wait=None, client=None):
        """Hold one of `max_builds` build slots, waiting at most `queue_timeout`
        (calling `on_wait()` when it has to wait).  Builds waiting in this
        process take turns between clients (`FairTurns`); between
        processes, the file locks decide."""
        deadline, delay = time.monotonic() + self.queue_timeout, _POLL_MIN
        first = True
        ticket = self.turns.enter(client)
        try:
            while True:
                if self.turns.first(ticket):
                    for i in range(self.max_builds):
                        fd = _try_lock(self._path(f"slot-{i}.lock"))
                        if fd is not None:
                            self.turns.leave(ticket, holding=True)
                            ticket = None
                            try:
                                yield
                            finally:
                                os.close(fd)
                                self.turns.done(client)
                            return
                if first and on_wait:
                    on_wait()
                first = False
                delay = _wait(deadline, delay)
                if delay is None:
                    raise BuildQueueFull(
                        f"all {self.max_builds} build slots are busy (NIXERY_MAX_BUILDS); "
                        "try again shortly", retry_after=10)
        finally:
            if ticket is not None:
                self.turns.leave(ticket)


class FairTurns:
    """The order in which this process's waiting builds try for a slot:
    the client with the fewest builds holding slots goes first, then the
    one given a slot least recently, then the one that waited longest;
    each client's builds in the order they came.  A client that queued
    fifty builds does not hold up one that queued one: that one goes next."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: list[tuple[int, object]] = []   # (ticket number, client)
        self._holding: dict[object, int] = {}
        self._served: dict[object, int] = {}  # client -> when it last got a slot (a count)
        self._count = 0

    def enter(self, client) -> int:
        with self._lock:
            self._count += 1
            self._waiting.append((self._count, client))
            return self._count

    def first(self, ticket) -> bool:
        with self._lock:
            if not self._waiting:
                return False
            # per client, its first ticket; of those, the fewest slots held, then the oldest
            heads = {}
            for number, client in self._waiting:
                heads.setdefault(client, number)
            best = min(heads.items(), key=lambda kv: (
                self._holding.get(kv[0], 0), self._served.get(kv[0], 0), kv[1]))
            return best[1] == ticket

    def leave(self, ticket, holding=False) -> None:
        with self._lock:
            for i, (number, client) in enumerate(self._waiting):
                if number == ticket:
                    del self._waiting[i]
                    if holding:
                        self._holding[client] = self._holding.get(client, 0) + 1
                        self._count += 1
                        self._served[client] = self._count
                    return

    def done(self, client) -> None:
        with self._lock:
            left = self._holding.get(client, 0) - 1
            if left > 0:
                self._holding[client] = left
            else:
                self._holding.pop(client, None)
            if len(self._served) > 10000:  # bounded: forget the longest served
                self._served.pop(min(self._served, key=self._served.get))
