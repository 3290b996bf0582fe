"""How popular each store path is, for layering.

From NIX_POPULARITY_URL when it is set: a JSON object mapping a store path's
name without its hash (`glibc-2.37-8`) to a count, fetched once per process
(http(s):// or file://).  Otherwise derived from the images this registry
has built: how many of them needed each path, kept in storage with the other
state so every worker and every restart sees the same counts.

Derived counts are kept per Nix system.  A store path's name is the same on
every platform (`hello-1.0`), so one count for all would count an image
built for two platforms twice, and make every path of it popular at once;
and the builds of one index for two platforms, running side by side,
would each see the other's count or not depending on which finished
first.  Per system, each platform's layering depends only on the images
built before for that platform.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import Counter
from typing import Iterable, Mapping

from storage import keys
from . import grouping

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 30
# After a failed fetch, layering uses the derived counts and tries the URL
# again this much later, so an unreachable URL slows no build for long.
RETRY_AFTER = 300


class PopularityError(Exception):
    pass


def parse(data: bytes) -> dict[str, int]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise PopularityError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PopularityError("not a JSON object of store path names to counts")
    bad = [k for k, v in doc.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise PopularityError(f"counts must be numbers; {bad[0]!r} is not")
    return {k: int(v) for k, v in doc.items()}


class Popularity:
    def __init__(self, storage, url: str | None = None, *, clock=time.monotonic):
        self.storage = storage
        self.url = url
        self._clock = clock
        self._fetched: dict[str, int] | None = None
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    def for_layering(self, names: Iterable[str] = (), system: str = "x86_64-linux"
                     ) -> tuple[Mapping[str, int], float]:
        """The counts to layer an image with, and the count from which a
        path is popular.  `names` are the store path names of the image
        being built, counted as one more image when the counts are derived
        (a path it shares with one earlier image is then needed by two).

        Over a package set (the URL's data) that is a share of the top
        count.  Counted over images it is a fixed two: a path two images
        need has a layer of its own from then on, however many images
        come later, so later images keep sharing it with earlier ones.
        """
        if self.url:
            fetched = self._from_url()
            if fetched is not None:
                return fetched, grouping.popular_threshold(fetched)
        counts = self.derived(system)
        counts.update(set(names))
        return counts, grouping.MIN_POPULAR

    def derived(self, system: str = "x86_64-linux") -> Counter:
        data = self.storage.read(keys.popularity(system))
        if data is None:
            return Counter()
        try:
            return Counter(json.loads(data)["counts"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable popularity counts in storage")
            return Counter()

    def record(self, names: Iterable[str], system: str = "x86_64-linux") -> None:
        """Count one more image for `system` that needed `names`.

        A read-modify-write: two processes recording at the same moment can
        lose one count, which only nudges a ranking.
        """
        with self._lock:
            counts = self.derived(system)
            counts.update(set(names))
            body = json.dumps({"counts": dict(sorted(counts.items()))},
                              separators=(",", ":")).encode()
            self.storage.put_bytes(keys.popularity(system), body, "application/json")

    def _from_url(self):
        with self._lock:
            if self._fetched is not None:
                return self._fetched
            if self._failed_at is not None and self._clock() - self._failed_at < RETRY_AFTER:
                return None
            try:
                with urllib.request.urlopen(self.url, timeout=FETCH_TIMEOUT) as response:
                    self._fetched = parse(response.read())
            except (OSError, PopularityError) as e:
                self._failed_at = self._clock()
                logger.warning("cannot use popularity data from %s (%s); layering with the "
                               "counts of images built here until a retry in %ds",
                               self.url, e, RETRY_AFTER)
                return None
            logger.info("popularity data from %s: %d store path names",
                        self.url, len(self._fetched))
            return self._fetched
