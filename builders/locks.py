"""Build coordination between threads, workers and processes on one machine.

Locks are flock()s on files in one folder: the kernel drops them when a
process dies, so a worker killed mid-build never leaves a lock behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
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
    def slot(self, on_wait=None):
        """Hold one of `max_builds` build slots, waiting at most `queue_timeout`
        (calling `on_wait()` when it has to wait)."""
        deadline, delay = time.monotonic() + self.queue_timeout, _POLL_MIN
        first = True
        while True:
            for i in range(self.max_builds):
                fd = _try_lock(self._path(f"slot-{i}.lock"))
                if fd is not None:
                    try:
                        yield
                    finally:
                        os.close(fd)
                    return
            if first and on_wait:
                on_wait()
            first = False
            delay = _wait(deadline, delay)
            if delay is None:
                raise BuildQueueFull(
                    f"all {self.max_builds} build slots are busy (NIXERY_MAX_BUILDS); "
                    "try again shortly", retry_after=10)
