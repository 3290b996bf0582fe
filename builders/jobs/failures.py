"""The one memory of what images failed with, and for how long it is believed.

Every failure of a build is written to storage under a key of what decided
it: the image's cache key (its packages, platform and pinned revision) and
the build settings that change the outcome (NIX_TIMEOUT, the platforms,
Nix's own settings: `Settings`).  Requests in other workers and instances
that waited for that build answer with its error instead of running it
again; change a setting and the failures met under the old ones are moot.
How long a failure then answers new pulls depends on what it says about
the image:

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

Storage is the truth: a process believes what it holds in memory for
`RECHECK_SECONDS` only, then reads storage again, so a failure an operator
clears (`flask --app app failures clear`) stops answering everywhere within
seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import cachetools

from storage import keys
from ..errors import (BuildError, BuildFailed, BuildInterrupted, BuildTimeout, InvalidImage,
                      PackagesNotFound, PackageUnbuildable, PlatformUnsupported)
from .. import digests

logger = logging.getLogger(__name__)

VERDICTS = (PackagesNotFound, PackageUnbuildable, BuildFailed, InvalidImage)
VERDICT_SECONDS = 3600
TIMEOUT_SECONDS = 60
INTERRUPTED_SECONDS = BuildInterrupted.retry_after
# How long a process answers from its memory of a failure before it looks
# at storage again (where a cleared failure is gone).
RECHECK_SECONDS = 5


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


class Settings:
    """The build settings that decide whether an image builds, besides the
    image and its revision: NIX_TIMEOUT, the platforms served, and Nix's
    own settings (NIX_CONFIG, and nix.conf, read again when it changes)."""

    def __init__(self, *, nix_timeout: float, platforms=(), nix_config: str | None = None,
                 nix_conf: str | None = None, clock=time.monotonic):
        self._fixed = {"nix_timeout": nix_timeout, "platforms": [p.name for p in platforms],
                       "nix_config": nix_config or ""}
        self.nix_conf = nix_conf
        self._clock = clock
        self._lock = threading.Lock()
        self._looked_at = None
        self._signature = None
        self._fingerprint = None

    def fingerprint(self) -> str:
        """A hash of the settings as they are now (nix.conf looked at no
        more than once a second)."""
        with self._lock:
            now = self._clock()
            if self._looked_at is not None and now - self._looked_at < 1:
                return self._fingerprint
            self._looked_at = now
            try:
                st = os.stat(self.nix_conf) if self.nix_conf else None
                signature = st and (st.st_ino, st.st_size, st.st_mtime_ns)
            except OSError:
                signature = None
            if self._fingerprint is None or signature != self._signature:
                self._signature = signature
                self._fingerprint = hashlib.sha256(digests.canonical(
                    {**self._fixed, "nix_conf": self._read_conf()})).hexdigest()
            return self._fingerprint

    def _read_conf(self) -> str:
        try:
            with open(self.nix_conf, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""


@dataclass
class Remembered:
    """A failure as storage holds it, for operators."""

    key: str            # its storage key
    version: str        # what a conditional delete compares with
    at: float           # when the build met it
    error: BuildError
    about: dict         # image, asked, tag, system, revision (empty for old records)
    state: str          # `in force`, `expired`, or `moot` (met under other settings)
    until: float        # when it stops answering pulls

    @property
    def image(self) -> str:
        """The image as its pull named it, `name:tag (system)`, or `?`."""
        if not self.about:
            return "?"
        return (f"{self.about.get('asked') or self.about.get('image')}:"
                f"{self.about.get('tag', '?')} ({self.about.get('system', '?')})")


class Failures:
    def __init__(self, storage, *, verdict_seconds: float = VERDICT_SECONDS,
                 timeout_seconds: float = TIMEOUT_SECONDS, settings: Settings | None = None,
                 clock=time.time):
        self.storage = storage
        self.verdict_seconds = verdict_seconds
        self.timeout_seconds = timeout_seconds
        self.settings = settings or Settings(nix_timeout=0)
        self._clock = clock
        # storage key -> (error as data, until when, when storage was last
        # read or written); data, so each request gets a fresh exception
        # (one object raised by many grows its traceback); under a lock, as
        # the threads of a worker share it
        self._memory = cachetools.TTLCache(maxsize=4096,
                                           ttl=max(verdict_seconds, timeout_seconds, 1))
        self._lock = threading.Lock()

    def lifetime(self, error: BuildError) -> float:
        """How long `error` answers new pulls of its image, in seconds."""
        if isinstance(error, BuildTimeout):
            return self.timeout_seconds
        if isinstance(error, BuildInterrupted):
            return INTERRUPTED_SECONDS
        if isinstance(error, VERDICTS):
            return self.verdict_seconds
        return 0

    def _key(self, key: str, fingerprint: str | None = None) -> str:
        """The storage key of the image `key`'s failures under the settings now."""
        fingerprint = fingerprint or self.settings.fingerprint()
        return keys.failure(hashlib.sha256(f"{key}\0{fingerprint}".encode()).hexdigest())

    def remember(self, key: str, error: BuildError, *, about: dict | None = None) -> None:
        """Store the failure the build of the image `key` met; `about` says
        what was pulled (image, asked, tag, system, revision), for operators."""
        now = self._clock()
        data = error.to_dict()
        fingerprint = self.settings.fingerprint()
        stored = self._key(key, fingerprint)
        self.storage.put_bytes(stored, digests.canonical(
            {"at": now, "error": data, "key": key, "settings": fingerprint,
             "about": about or {}}), "application/json")
        if self.lifetime(error) > 0:
            self._hold(stored, (data, now + self.lifetime(error), now))

    def known(self, key: str) -> BuildError | None:
        """A failure of the image `key` that this process holds, that still
        answers pulls, and that storage held moments ago: no I/O."""
        stored = self._key(key)
        with self._lock:
            hit = self._memory.get(stored)
        now = self._clock()
        if hit is None or now >= hit[1] or now - hit[2] >= RECHECK_SECONDS:
            return None
        return BuildError.from_dict(hit[0])

    def recall(self, key: str, *, since: float | None = None) -> BuildError | None:
        """The error to answer for the image `key`: a failure still in force,
        or, with `since`, whatever failure a build met from then on (the
        build this request waited for)."""
        known = self.known(key)
        if known is not None:
            return known
        stored = self._key(key)
        raw = self.storage.read(stored)
        if raw is None:
            self._hold(stored, None)  # cleared, or never met
            return None
        doc = json.loads(raw)
        error = BuildError.from_dict(doc["error"])
        until = doc["at"] + self.lifetime(error)
        now = self._clock()
        if doc["at"] <= now < until:
            self._hold(stored, (doc["error"], until, now))
            return error
        if since is not None and doc["at"] >= since:
            return error
        return None

    def remembered(self) -> list[Remembered]:
        """Every failure storage holds, oldest first, with whether it still
        answers pulls."""
        fingerprint = self.settings.fingerprint()
        now = self._clock()
        found = []
        for info in self.storage.list(keys.failure("")):
            raw = self.storage.read(info.key)
            if raw is None:
                continue  # cleared meanwhile
            try:
                doc = json.loads(raw)
                error = BuildError.from_dict(doc["error"])
                at = float(doc["at"])
            except (ValueError, KeyError, TypeError):
                logger.warning("%s is no failure record this version can read", info.key)
                continue
            until = at + self.lifetime(error)
            if doc.get("settings") != fingerprint or info.key != self._key(
                    doc.get("key", ""), fingerprint):
                state = "moot"  # met under other settings (or before they were recorded)
            elif at <= now < until:
                state = "in force"
            else:
                state = "expired"
            found.append(Remembered(info.key, info.version, at, error, doc.get("about") or {},
                                    state, until))
        return sorted(found, key=lambda r: r.at)

    def forget(self, remembered: Remembered) -> bool:
        """Delete a failure, unless it was written again since it was read
        (another build failed meanwhile); whether it went."""
        gone = self.storage.delete_if(remembered.key, remembered.version)
        if gone:
            self._hold(remembered.key, None)
        return gone

    def _hold(self, stored: str, entry: tuple | None) -> None:
        """Keep `entry` in memory for the failure at `stored`, or forget it."""
        with self._lock:
            if entry is None:
                self._memory.pop(stored, None)
            else:
                self._memory[stored] = entry
