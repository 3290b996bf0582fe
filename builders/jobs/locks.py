"""Build coordination between threads, workers and processes on one machine.

Locks are file locks in one folder (storage/filelock.py): the kernel drops
them when a process dies, so a worker killed mid-build never leaves a lock
behind.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from storage import filelock
from ..errors import BuildQueueFull

logger = logging.getLogger(__name__)

# Polling intervals while waiting for a lock: short first, for quick builds.
_POLL_MIN, _POLL_MAX = 0.02, 0.5


def _try_lock(path) -> filelock.FileLock | None:
    return filelock.acquire(path, wait=False, mode=0o644)


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
        self.turns = FairTurns(root)
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
        lock = _try_lock(path)
        waited = lock is None
        if waited and on_wait:
            on_wait()
        while lock is None:
            delay = _wait(deadline, delay)
            if delay is None:
                raise BuildQueueFull(
                    f"this image has been building for over {timeout:.0f}s; try again shortly",
                    retry_after=30)
            lock = _try_lock(path)
        with lock:
            yield waited

    @contextlib.contextmanager
    def slot(self, on_wait=None, client=None):
        """Hold one of `max_builds` build slots, waiting at most `queue_timeout`
        (calling `on_wait()` when it has to wait).  Builds waiting on this
        machine take turns between clients (`FairTurns`)."""
        deadline, delay = time.monotonic() + self.queue_timeout, _POLL_MIN
        first = True
        ticket = self.turns.enter(client)
        try:
            while True:
                if self.turns.first(ticket):
                    for i in range(self.max_builds):
                        lock = _try_lock(self._path(f"slot-{i}.lock"))
                        if lock is not None:
                            self.turns.leave(ticket, holding=True)
                            ticket = None
                            try:
                                yield
                            finally:
                                lock.release()
                                self.turns.done(client)
                            return
                if first and on_wait:
                    on_wait()
                first = False
                delay = _wait(deadline, delay)
                if delay is None:
                    raise BuildQueueFull(
                        (f"all {self.max_builds} build slots are busy" if self.max_builds > 1
                         else "the only build slot is busy") + " (NIXERY_MAX_BUILDS); "
                        "try again shortly", retry_after=10)
        finally:
            if ticket is not None:
                self.turns.leave(ticket)


class FairTurns:
    """The order in which the machine's waiting builds try for a slot: the
    client with the fewest builds holding slots goes first, then the one
    given a slot least recently, then the one that waited longest; each
    client's builds in the order they came.  A client that queued fifty
    builds does not hold up one that queued one: that one goes next.

    The queue is a small file beside the slot locks, read and written under
    a lock of its own, so every worker process of the machine takes part;
    entries of a process that died are dropped."""

    def __init__(self, root):
        self.path = os.path.join(root, "turns.json")
        self.lock_path = os.path.join(root, "turns.lock")
        self._pid = os.getpid()

    @contextlib.contextmanager
    def _state(self, write=True):
        with filelock.acquire(self.lock_path):
            try:
                with open(self.path) as f:
                    state = json.load(f)
            except (FileNotFoundError, ValueError):
                state = {}
            state.setdefault("count", 0)
            waiting = [w for w in state.get("waiting", []) if _alive(w[2])]
            holding = [h for h in state.get("holding", []) if _alive(h[1])]
            state["waiting"], state["holding"] = waiting, holding
            state.setdefault("served", {})
            yield state
            if write:
                tmp = f"{self.path}.{self._pid}.tmp"
                with open(tmp, "w") as f:
                    json.dump(state, f)
                os.replace(tmp, self.path)

    def enter(self, client) -> int:
        with self._state() as state:
            state["count"] += 1
            state["waiting"].append([state["count"], _name(client), self._pid])
            return state["count"]

    def first(self, ticket) -> bool:
        with self._state(write=False) as state:
            heads = {}
            for number, client, _ in state["waiting"]:
                heads.setdefault(client, number)
            if not heads:
                return False
            holding = {}
            for client, _ in state["holding"]:
                holding[client] = holding.get(client, 0) + 1
            best = min(heads.items(), key=lambda kv: (
                holding.get(kv[0], 0), state["served"].get(kv[0], 0), kv[1]))
            return best[1] == ticket

    def leave(self, ticket, holding=False) -> None:
        with self._state() as state:
            for i, (number, client, _) in enumerate(state["waiting"]):
                if number == ticket:
                    del state["waiting"][i]
                    if holding:
                        state["holding"].append([client, self._pid])
                        state["count"] += 1
                        state["served"][client] = state["count"]
                    return

    def done(self, client) -> None:
        with self._state() as state:
            entry = [_name(client), self._pid]
            if entry in state["holding"]:
                state["holding"].remove(entry)
            if len(state["served"]) > 1000:  # bounded: forget the longest served
                oldest = min(state["served"], key=state["served"].get)
                del state["served"][oldest]


def _name(client) -> str:
    return "" if client is None else str(client)


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
