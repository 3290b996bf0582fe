"""Locks on files, shared by every thread and process of the machine.

Each lock is an `flock` on a file of its own: the kernel drops it when the
process that holds it dies, so a worker killed mid-build or mid-write never
leaves a lock behind.  Every file lock of the registry is taken here.
"""
from __future__ import annotations

import fcntl
import os


class FileLock:
    """An exclusive lock held on the file at `path`, until `release()` (or
    the end of a `with` block)."""

    def __init__(self, fd: int):
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: str, *, wait: bool = True, mode: int = 0o666) -> FileLock | None:
    """Lock the file at `path` (made with `mode`, less the umask, when there
    is none): waits for another holder to let go, or with `wait=False`
    answers None at once while one holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return FileLock(fd)
