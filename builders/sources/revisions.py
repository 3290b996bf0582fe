"""What a tag names in the package source now, asked as seldom as allowed.

A moving source (a channel, a branch, `latest`, a folder) is asked again
only once its answer is older than NIXERY_SOURCE_REFRESH.  The answer is
shared through storage with every worker and instance, so they all switch
to a new revision together instead of serving different images for one
name.  An immutable tag (a commit) is never looked up at all.

A folder's earlier contents cannot be fetched again, but the images built
from them can still be served: each content hash images were built from is
kept in storage (`keys.kept_revisions`) and stays a tag, whose images are
served while their records are kept and never built again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time

import cachetools

from storage import keys
from .. import metrics
from ..errors import RevisionNotFound, SourceUnavailable
from .folder import FOLDER_TAG_RE
from .source import Revision, Source
from .. import digests

logger = logging.getLogger(__name__)


class SourceState:
    """Whether the package source answers: as the lookups of pulls found it,
    and as a check in the background finds it when they have not asked for
    a while (for /readyz and /metrics)."""

    def __init__(self, source: Source, *, clock=time.time, check_every: float = 60.0):
        self.source = source
        self.check_every = check_every
        self._clock = clock
        self._lock = threading.Lock()
        self.reachable: bool | None = None   # None: not asked yet
        self.since: float | None = None      # in this state since
        self.checked_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._checking = False

    def watch(self, fn, *args):
        """fn(*args), noting whether the source answered."""
        try:
            result = fn(*args)
        except SourceUnavailable as e:
            self._note(False, e.message)
            raise
        self._note(True)
        return result

    def _note(self, reachable: bool, error: str | None = None):
        now = self._clock()
        with self._lock:
            if self.reachable is not reachable:
                self.since = now
                self.reachable = reachable
            self.checked_at = now
            if error is not None:
                self.last_error, self.last_error_at = error, now
        metrics.SOURCE_UP.set(1 if reachable else 0)

    def report(self) -> dict:
        """The state for people; starts a check in the background when the
        last one is older than `check_every` (readiness probes must not wait
        for a network call)."""
        with self._lock:
            stale = self.checked_at is None or self._clock() - self.checked_at >= self.check_every
            start = stale and not self._checking
            if start:
                self._checking = True
        if start:
            threading.Thread(target=self._check, name="source-check", daemon=True).start()
        with self._lock:
            return {"reachable": self.reachable, "since": _iso(self.since),
                    "checked_at": _iso(self.checked_at), "last_error": self.last_error,
                    "last_error_at": _iso(self.last_error_at)}

    def _check(self):
        try:
            self.watch(self.source.check)
        except Exception:  # noted by watch, or not the source's fault
            pass
        finally:
            with self._lock:
                self._checking = False


def _iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


class Revisions:
    def __init__(self, source: Source, storage, *, refresh: float, strict: bool = False,
                 clock=time.time):
        self.source = source
        self.storage = storage
        self.refresh = refresh
        self.strict = strict
        self._clock = clock
        ttl = max(refresh, 0.001)
        # the threads of a worker share these caches; cachetools' are not
        # thread-safe, so each is read and written under this lock
        self._lock = threading.Lock()
        # selector id -> (revision, when it was resolved, wall clock)
        self._memory = cachetools.TTLCache(maxsize=256, ttl=ttl)
        self._tags = cachetools.TTLCache(maxsize=1, ttl=ttl)
        self._listed = cachetools.cached(self._tags, lock=self._lock)(self._tags_now)
        self._kept = cachetools.TTLCache(maxsize=1, ttl=ttl)
        # a revision is written down as built from once a day per process
        self._write_down = cachetools.cached(
            cachetools.TTLCache(maxsize=256, ttl=24 * 3600), key=lambda tag, revision: tag,
            lock=self._lock)(self._written_down)
        self.state = SourceState(source, clock=clock)

    def tags(self) -> list[str]:
        """The tags that name revisions, asked of the source once per interval."""
        return self._listed()

    def _tags_now(self) -> list[str]:
        tags = self.state.watch(self.source.tags)
        if self.source.keeps_revisions:
            tags = sorted({*tags, *self._kept_revisions()})
        return tags

    def _kept_revisions(self, fresh=False) -> dict:
        """Tag -> revision dict, of the revisions images were built from."""
        with self._lock:
            kept = None if fresh else self._kept.get("kept")
        if kept is None:
            data = self.storage.read(keys.kept_revisions())
            kept = json.loads(data)["revisions"] if data else {}
            with self._lock:
                self._kept["kept"] = kept
        return kept

    def built(self, revision: Revision) -> None:
        """Keep `revision` as a tag, now that an image was built from it
        (for sources that keep revisions: a folder's)."""
        if self.source.keeps_revisions:
            self._write_down(self.source.revision_tag(revision), revision)

    def _written_down(self, tag: str, revision: Revision) -> bool:
        """Add `revision` to the kept revisions in storage, as `tag`."""
        for _ in range(10):  # another process may add one at the same moment
            found = self.storage.read_versioned(keys.kept_revisions())
            data, version = found if found else (None, None)
            doc = json.loads(data) if data else {}
            kept = doc.setdefault("revisions", {})
            kept[tag] = revision.to_dict()
            # when an image was last built from it: garbage collection drops
            # a revision no kept image was built from, once this is old
            doc.setdefault("kept_at", {})[tag] = self._clock()
            if self.storage.put_if(keys.kept_revisions(), digests.canonical(doc),
                                   version=version) is not None:
                break
        with self._lock:
            self._kept["kept"] = kept
            self._tags.clear()
        return True

    def _kept_revision(self, tag: str) -> Revision | None:
        if not (self.source.keeps_revisions and FOLDER_TAG_RE.fullmatch(tag)):
            return None
        stored = self._kept_revisions().get(tag)
        if stored is None:
            stored = self._kept_revisions(fresh=True).get(tag)
        if stored is None:
            return None
        latest = self.resolve("latest")
        revision = Revision(**stored)
        if revision.identity == latest.identity:
            return latest
        return self.source.earlier(revision)

    def _selector_id(self, tag):
        selector = self.source.selector(tag) or "latest"
        return hashlib.sha256(f"{self.source.describe()}\0{selector}".encode()).hexdigest()

    def resolve(self, tag: str) -> Revision:
        """What `tag` names now: from memory, from storage while fresh, or
        from the source (then written to storage for the others)."""
        if self.source.immutable(tag):
            return self.source.resolve(tag)  # named by the tag alone: nothing is asked
        kept = self._kept_revision(tag)
        if kept is not None:
            return kept
        if self.source.selector(tag) is None:
            if self.strict:
                raise RevisionNotFound(
                    f"tag {tag!r} names nothing here: images are built from "
                    f"{self.source.describe()}, whose tags are {', '.join(self.tags())} (the "
                    "registry is strict about tags: NIXERY_STRICT_TAGS)")
            tag = "latest"  # as in Nixery
        ident = self._selector_id(tag)
        now = self._clock()
        with self._lock:
            hit = self._memory.get(ident)
        if hit is not None and 0 <= now - hit[1] < self.refresh:
            return hit[0]
        data = self.storage.read(keys.revision(ident))
        if data is not None:
            stored = json.loads(data)
            if 0 <= now - stored["resolved_at"] < self.refresh:
                revision = Revision(**stored["revision"])
                self._hold(ident, revision, stored["resolved_at"])
                return revision
        revision = self.state.watch(self.source.resolve, tag)
        self.storage.put_bytes(keys.revision(ident), digests.canonical(
            {"revision": revision.to_dict(), "resolved_at": now}), "application/json")
        self._hold(ident, revision, now)
        return revision

    def _hold(self, ident, revision: Revision, resolved_at: float) -> None:
        with self._lock:
            self._memory[ident] = (revision, resolved_at)

    def admit(self, revision: Revision) -> None:
        """Whether `revision` may be built (Source.admit), before a build."""
        self.state.watch(self.source.admit, revision)

    def known(self, tag: str = "latest") -> Revision | None:
        """The revision `tag` last resolved to, however old, without asking
        the source (for pages)."""
        ident = self._selector_id(tag)
        with self._lock:
            hit = self._memory.get(ident)
        if hit is not None:
            return hit[0]
        data = self.storage.read(keys.revision(ident))
        return Revision(**json.loads(data)["revision"]) if data else None


def prune_kept(storage, live_revisions, young, dry_run=False) -> list[str]:
    """The tags of kept revisions that go at a garbage collection, gone
    unless `dry_run`: a folder revision stays a tag while an image built
    from it is kept (`live_revisions`, their identities); one nothing
    live was built from, and not built from since `young`, goes."""
    pruned = []
    for _ in range(10):  # a build may write it down at the same moment
        found = storage.read_versioned(keys.kept_revisions())
        if found is None:
            break
        doc = json.loads(found[0])
        kept_at = doc.get("kept_at", {})
        gone = [t for t, r in doc.get("revisions", {}).items()
                if r.get("identity") not in live_revisions and kept_at.get(t, 0) < young]
        if not gone:
            break
        pruned = sorted(gone)
        if dry_run:
            break
        for tag in gone:
            doc["revisions"].pop(tag, None)
            kept_at.pop(tag, None)
        if storage.put_if(keys.kept_revisions(), digests.canonical(doc),
                          version=found[1]) is not None:
            break
    return pruned
