"""Small thread-safe helpers that the builders share."""
from __future__ import annotations

import threading
from concurrent.futures import Future


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
