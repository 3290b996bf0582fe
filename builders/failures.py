"""The one memory of what images failed with, and for how long it is believed.

Every failure of a build is written to storage under the image's cache key
(which holds the pinned revision), so requests in other workers and
instances that waited for that build answer with its error instead of
running it again.  How long a failure then answers new pulls depends on
what it says about the image:

- a verdict (unknown or refused packages, an evaluation or build error) is
  the same every time at one revision: `verdict_seconds`
  (NIXERY_FAILURE_TTL), so a package that fails after ten minutes does not
  cost ten minutes per pull;
- a timeout says the build was slow, not that it cannot succeed:
  `timeout_seconds`, long enough that a client asking twice in a row
  (docker's HEAD then GET) costs one build, short enough that a slow moment
  does not become an outage;
- trouble of the machine's (a builder killed by a signal, a full disk, Nix
  or its builders out of reach) says nothing of the image: seconds
  (`BuildInterrupted.retry_after`), so that a pull retried after that
  builds again;
- anything else (an unreachable source, storage trouble) answers only the
  requests that waited for the build that met it.
"""
from __future__ import annotations

import json
import logging
import time

from storage import keys
from . import manifest
from .errors import (BuildError, BuildFailed, BuildInterrupted, BuildTimeout, InvalidImage,
                     PackagesNotFound, PackageUnbuildable, PlatformUnsupported)
from .sync import LockedTTLCache

logger = logging.getLogger(__name__)

VERDICTS = (PackagesNotFound, PackageUnbuildable, BuildFailed, InvalidImage)
VERDICT_SECONDS = 3600
TIMEOUT_SECONDS = 60
INTERRUPTED_SECONDS = BuildInterrupted.retry_after


def kind(error: BuildError) -> tuple[str, str]:
    """What a failure says, for logs and metrics: (`verdict`, the image's
    own; `timeout`; `machine`, trouble of the machine's; or `passing`, of
    the source or storage) and its cause."""
    if isinstance(error, BuildInterrupted):
        return "machine", error.cause
    if isinstance(error, BuildTimeout):
        return "timeout", "nix-timeout"
    for cls, cause in ((PackagesNotFound, "not-found"), (PlatformUnsupported, "unsupported"),
                       (PackageUnbuildable, "refused"), (BuildFailed, "build-error"),
                       (InvalidImage, "invalid")):
        if isinstance(error, cls):
            return "verdict", cause
    return "passing", type(error).__name__


class Failures:
    def __init__(self, storage, *, verdict_seconds: float = VERDICT_SECONDS,
                 timeout_seconds: float = TIMEOUT_SECONDS, clock=time.time):
        self.storage = storage
        self.verdict_seconds = verdict_seconds
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        # key -> (error as data, until when); data, so each request gets a
        # fresh exception (one object raised by many grows its traceback)
        self._memory = LockedTTLCache(maxsize=4096,
                                      ttl=max(verdict_seconds, timeout_seconds, 1))

    def lifetime(self, error: BuildError) -> float:
        """How long `error` answers new pulls of its image, in seconds."""
        if isinstance(error, BuildTimeout):
            return self.timeout_seconds
        if isinstance(error, BuildInterrupted):
            return INTERRUPTED_SECONDS
        if isinstance(error, VERDICTS):
            return self.verdict_seconds
        return 0

    def remember(self, key: str, error: BuildError) -> None:
        now = self._clock()
        data = error.to_dict()
        self.storage.put_bytes(keys.failure(key), manifest.canonical(
            {"at": now, "error": data}), "application/json")
        if self.lifetime(error) > 0:
            self._memory[key] = (data, now + self.lifetime(error))

    def known(self, key: str) -> BuildError | None:
        """A failure of the image `key` that this process holds and that
        still answers pulls: no I/O."""
        hit = self._memory.get(key)
        if hit is None or self._clock() >= hit[1]:
            return None
        return BuildError.from_dict(hit[0])

    def recall(self, key: str, *, since: float | None = None) -> BuildError | None:
        """The error to answer for the image `key`: a failure still in force,
        or, with `since`, whatever failure a build met from then on (the
        build this request waited for)."""
        known = self.known(key)
        if known is not None:
            return known
        raw = self.storage.read(keys.failure(key))
        if raw is None:
            return None
        stored = json.loads(raw)
        error = BuildError.from_dict(stored["error"])
        until = stored["at"] + self.lifetime(error)
        if stored["at"] <= self._clock() < until:
            self._memory[key] = (stored["error"], until)
            return error
        if since is not None and stored["at"] >= since:
            return error
        return None
