"""The one memory of what images failed with.

Every failure of a build is written to storage under the image's cache key
(which holds the pinned revision), so requests in other workers and
instances that waited for that build answer with its error instead of
running it again.  Some failures are verdicts: evaluation decides them and
gives the same answer every time at one revision (unknown or refused
packages), so they are answered without Nix for `VERDICT_SECONDS`.  Other
failures (a build error, a timeout, an unreachable source) may go away on
a retry, so they answer only the requests that waited for the build that
met them.
"""
from __future__ import annotations

import json
import logging
import time

from storage import keys
from . import manifest
from .errors import BuildError, PackagesNotFound, PackagesRefused
from .sync import LockedTTLCache

logger = logging.getLogger(__name__)

VERDICTS = (PackagesNotFound, PackagesRefused)
VERDICT_SECONDS = 3600


def is_verdict(error: BuildError) -> bool:
    return isinstance(error, VERDICTS)


class Failures:
    def __init__(self, storage, *, verdict_seconds: float = VERDICT_SECONDS, clock=time.time):
        self.storage = storage
        self.verdict_seconds = verdict_seconds
        self._clock = clock
        # verdicts only, as data: each request gets a fresh exception (one
        # object re-raised by many requests would grow its traceback)
        self._verdicts = LockedTTLCache(maxsize=4096, ttl=verdict_seconds)

    def remember(self, key: str, error: BuildError) -> None:
        data = error.to_dict()
        self.storage.put_bytes(keys.failure(key), manifest.canonical(
            {"at": self._clock(), "error": data}), "application/json")
        if is_verdict(error):
            self._verdicts[key] = data

    def known(self, key: str) -> BuildError | None:
        """A verdict on the image `key` that this process holds: no I/O."""
        data = self._verdicts.get(key)
        return BuildError.from_dict(data) if data is not None else None

    def recall(self, key: str, *, since: float | None = None) -> BuildError | None:
        """The error to answer for the image `key`: a verdict still in
        force, or, with `since`, whatever failure a build met from then on
        (the build this request waited for)."""
        known = self.known(key)
        if known is not None:
            return known
        raw = self.storage.read(keys.failure(key))
        if raw is None:
            return None
        stored = json.loads(raw)
        error = BuildError.from_dict(stored["error"])
        age = self._clock() - stored["at"]
        if is_verdict(error) and 0 <= age < self.verdict_seconds:
            self._verdicts[key] = stored["error"]
            return error
        if since is not None and stored["at"] >= since:
            return error
        return None
