"""Small thread-safe helpers that the builders share."""
from __future__ import annotations

import threading
from concurrent.futures import Future

from cachetools import TTLCache


class LockedTTLCache:
    """A TTLCache behind a lock: cachetools caches are not thread-safe, and
    the threads of one gthread worker share these."""

    def __init__(self, maxsize, ttl, *, timer=None):
        self._cache = TTLCache(maxsize=maxsize, ttl=ttl, **({"timer": timer} if timer else {}))
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            return self._cache.get(key)

    def __setitem__(self, key, value):
        with self._lock:
            self._cache[key] = value

    def discard(self, key):
        with self._lock:
            self._cache.pop(key, None)


class Once:
    """make() once per key at a time in this process: callers that come
    while it runs wait and share its result or its error."""

    def __init__(self):
        self._running: dict = {}
        self._lock = threading.Lock()

    def __call__(self, key, make):
        with self._lock:
            future = self._running.get(key)
            owner = future is None
            if owner:
                future = self._running[key] = Future()
        if not owner:
            return future.result()
        try:
            result = make()
            future.set_result(result)
            return result
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._running[key]
