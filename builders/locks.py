"""Build coordination between threads, workers and processes on one machine.

Locks are flock()s on files in one folder: the kernel drops them when a
process dies, so a worker killed mid-build never leaves a lock behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time

from .errors import BuildError, BuildQueueFull

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
    def image(self, key, timeout):
        """Hold the lock of one image; waits while another process builds it."""
        path = self._path(f"image-{key}.lock")
        deadline, delay = time.monotonic() + timeout, _POLL_MIN
        fd = _try_lock(path)
        while fd is None:
            delay = _wait(deadline, delay)
            if delay is None:
                raise BuildQueueFull(
                    f"this image has been building for over {timeout:.0f}s; try again shortly",
                    retry_after=30)
            fd = _try_lock(path)
        try:
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def slot(self):
        """Hold one of `max_builds` build slots, waiting at most `queue_timeout`."""
        deadline, delay = time.monotonic() + self.queue_timeout, _POLL_MIN
        while True:
            for i in range(self.max_builds):
                fd = _try_lock(self._path(f"slot-{i}.lock"))
                if fd is not None:
                    try:
                        yield
                    finally:
                        os.close(fd)
                    return
            delay = _wait(deadline, delay)
            if delay is None:
                raise BuildQueueFull(
                    f"all {self.max_builds} build slots are busy (NIXERY_MAX_BUILDS); "
                    "try again shortly", retry_after=10)

    # A failed build leaves its error for the requests that waited on it,
    # so they answer with it instead of running the same failing build.
    def record_failure(self, key, error: BuildError):
        tmp = self._path(f"failed-{key}.json.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump({"at": time.time(), "error": error.to_dict()}, f)
        os.replace(tmp, self._path(f"failed-{key}.json"))

    def failure_since(self, key, since) -> BuildError | None:
        try:
            with open(self._path(f"failed-{key}.json")) as f:
                data = json.load(f)
        except (FileNotFoundError, ValueError):
            return None
        if data["at"] < since:
            return None
        return BuildError.from_dict(data["error"])
