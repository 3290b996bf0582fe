"""From an image name to a stored image: the orchestration of its build.

Each piece it uses has a module of its own, made in `create_app` and
handed in: the revisions of the package source (`revisions`), the memory
of failures (`failures`), the build locks of this machine (`locks`), the
claims that make one build per image across instances (`claims`), the
build itself (`builder`, builders/build.py), the jobs that outlive
requests (`jobs`) and the pages' build history (`history`); the layer
store (`layerstore`) and Nix (`nix`) for making a lost blob again and for
package lookups.

An image name that pins no platform is made for every platform the
registry serves (NIXERY_PLATFORMS): with one, that platform's image; with
several, an index whose job starts one job per platform, so the platforms
build side by side, each exactly as a pull pinned to that platform would.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time

import cachetools

from storage import keys
from .jobs import failures as failures_
from . import gc, metrics
from .image import platforms as platforms_
from .errors import (BuildError, BuildInProgress, BuildInterrupted, BuildQueueFull, BuildTimeout,
                     InvalidImage, PackagesNotFound, PlatformUnsupported, RevisionNotFound)
from .image.names import Image
from .jobs.jobs import WAITING_FOR_ANOTHER, Job
from .nixbuild.nix import Deadline
from .image.records import ImageRecord, IndexRecord, cache_key, index_key, load_record
from .sources.folder import FOLDER_TAG_RE

logger = logging.getLogger(__name__)

# How long this process keeps an image's record in memory (garbage
# collection's grace period exceeds it).
RECORD_SECONDS = gc.CACHES_SECONDS
# Time beyond NIX_TIMEOUT a build may take to make and store its layers,
# and so how long a request waits for another process's build.
UPLOAD_MARGIN = 300
# What a pull that stopped waiting for a job tells the client to wait
# before it asks again.  containers/image (podman, skopeo) honours it;
# containerd 1.6 retries at once whatever it says.
RETRY_AFTER = 10
# How far apart the clocks of two instances may be, for failures one stores
# and another reads.
CLOCK_SKEW = 5
# How often a process waiting for another instance's build looks at storage.
CLAIM_POLL_MIN, CLAIM_POLL_MAX = 0.5, 5.0


class _Found(Exception):
    """Another process stored the image meanwhile: the wait ends with it."""

    def __init__(self, record):
        super().__init__(record.key)
        self.record = record


class ImageService:
    def __init__(self, storage, *, revisions, failures, locks, claims, builder, layerstore, nix,
                 jobs, history=None, nix_timeout: float = 60.0, pull_wait: float = 25.0,
                 platforms=(platforms_.HOST,), mark_every: float = gc.MARK_EVERY,
                 quota=None, nix_cache=None):
        self.storage = storage
        self.revisions = revisions
        self.failures = failures
        self.locks = locks
        self.claims = claims
        self.builder = builder
        self.layerstore = layerstore
        self.nix = nix
        self.history = history
        self.nix_timeout = nix_timeout
        self.pull_wait = pull_wait
        self.jobs = jobs
        self.platforms = tuple(platforms)
        self.quota = quota
        self.nix_cache = nix_cache  # builders/nixbuild/nixcache.py's BinaryCache, or None
        # the threads of a worker share these caches; cachetools' are not
        # thread-safe, so each is read and written under this lock
        self._lock = threading.Lock()
        self._records = cachetools.TTLCache(maxsize=4096, ttl=RECORD_SECONDS)
        # indexes served while some of their platforms fail, not stored:
        # briefly, so that a platform that builds again soon is listed soon
        self._partial = cachetools.TTLCache(maxsize=1024, ttl=failures_.RECHECK_SECONDS)
        self._marked = cachetools.TTLCache(maxsize=1 << 16, ttl=mark_every)
        self._mark = cachetools.cached(self._marked, key=lambda key: key, lock=self._lock)(
            self._mark_used)
        # whether an image is stored at a folder's earlier revision (tags/list)
        self._stored = cachetools.cached(cachetools.TTLCache(maxsize=4096, ttl=60),
                                         key=lambda key, image, revision: key,
                                         lock=self._lock)(self._stored_somewhere)

    @property
    def source(self):
        return self.revisions.source

    @property
    def max_layers(self) -> int:
        """Part of every cache key: it shapes the layers the builder makes."""
        return self.builder.max_layers

    def pinned(self, image: Image) -> Image:
        """`image` for one platform: the one its name pins, else the first
        the registry serves (what a client that takes no index gets)."""
        return image if image.platform is not None else image.on(self.platforms[0])

    def image(self, image: Image, tag: str, *, wait: float | None = None, client=None
              ) -> ImageRecord | IndexRecord:
        """The image's record (an index's, for a name that pins no platform
        when the registry serves several): from memory, from storage, or
        made by a job.

        A job runs whether or not anyone waits for it; this waits for it at
        most `wait` seconds (NIXERY_PULL_WAIT by default) and then raises
        BuildInProgress, saying what the job is doing.  One job per image at
        a time in this process (and one build per image on the machine);
        an image that failed answers with its remembered error.  A pull
        marks the record used (for garbage collection), at most once per
        `mark_every` seconds.  `client` (app/quota.py) is who asks: a
        new build counts against its quota, and waits its turn fairly.
        """
        record_or_job = self.start(image, tag, client)
        if isinstance(record_or_job, Job):
            job = record_or_job
            if not job.wait(self.pull_wait if wait is None else wait):
                raise BuildInProgress(job.progress(), job.seconds, retry_after=RETRY_AFTER)
            record_or_job = job.outcome()
        self.mark_pulled(keys.manifest(record_or_job.key))
        return record_or_job

    def mark_pulled(self, key: str) -> None:
        """Mark a record, or a manifest pulled by digest, as pulled now: a
        storage write at most once per `mark_every` seconds per object in
        this process, so a busy image costs no more."""
        try:
            self._mark(key)
        except Exception as e:  # the pull goes on; the next one marks it
            logger.warning("could not mark %s as pulled: %s", key, e)

    def _mark_used(self, key) -> bool:
        self.storage.mark_used(key)
        return True

    def _recalled(self, key, *, partial=False) -> ImageRecord | IndexRecord | None:
        """The record of `key` this process holds (with `partial`, an index
        served without the platforms that failed too); no I/O."""
        with self._lock:
            return self._records.get(key) or (self._partial.get(key) if partial else None)

    def _remember(self, key, record, *, partial=False) -> None:
        with self._lock:
            (self._partial if partial else self._records)[key] = record

    def start(self, image: Image, tag: str, client=None):
        """The image's record when this process holds it, else the job that
        finds or builds it (started now, or already running); raises a
        failure it remembers, or QuotaExceeded when `client` may start no
        more builds."""
        return self._start(image, tag, self.revisions.resolve(tag), client)

    def _key(self, image: Image, revision) -> str:
        """The key `image` is kept under at `revision`: its index's, for a
        name that pins no platform when the registry serves several."""
        if image.platform is None and len(self.platforms) > 1:
            return index_key(image, revision, self.platforms, self.max_layers)
        return cache_key(self.pinned(image), revision, self.max_layers)

    def _start(self, image: Image, tag: str, revision, client=None):
        key = self._key(image, revision)
        if image.platform is None and len(self.platforms) > 1:
            run = lambda job: self._find_or_make_index(image, tag, revision, key, job)  # noqa: E731
        else:
            image = self.pinned(image)
            run = lambda job: self._find_or_build(image, tag, revision, key, job)  # noqa: E731
        record = self._recalled(key, partial=True)
        if record is not None:
            metrics.MANIFEST_CACHE.labels("memory").inc()
            return record
        error = self.failures.known(key)
        if error is not None:
            metrics.MANIFEST_CACHE.labels("failure").inc()
            raise error
        return self.jobs.start(key, image.name, tag, run, client=client)

    def tags(self, image: Image) -> list[str]:
        """The tags `image` is pulled by: the package source's, but for a
        folder's earlier revisions it was not built at, which name nothing
        to build any more (a pull of them answers 404)."""
        return [tag for tag in self.revisions.tags()
                if not (self.source.keeps_revisions and FOLDER_TAG_RE.fullmatch(tag))
                or self._pullable(image, tag)]

    def _pullable(self, image: Image, tag: str) -> bool:
        try:
            revision = self.revisions.resolve(tag)
        except BuildError:
            return False
        if revision.buildable:
            return True
        return self._stored(self._key(image, revision), image, revision)

    def _stored_somewhere(self, key, image, revision) -> bool:
        """Whether the image `key` is held here or in storage."""
        stored = [key]
        if image.platform is None and len(self.platforms) > 1:
            # its platforms' images serve too (one built before others were served)
            stored += [cache_key(image.on(p), revision, self.max_layers) for p in self.platforms]
        return self._recalled(key) is not None or any(
            self.storage.exists(keys.manifest(k)) for k in stored)

    def cached(self, image: Image, tag: str) -> ImageRecord | None:
        """The image if it was built already; never builds (for pages)."""
        key = cache_key(self.pinned(image), self.revisions.resolve(tag), self.max_layers)
        return self._recalled(key) or self._load(key)

    def add_sboms(self, image: Image, tag: str) -> dict[str, str]:
        """Make the SBOMs of an image built before SBOMs were made, for
        each platform it names (its own, or all the registry serves):
        platform name -> what happened.  Never builds an image."""
        revision = self.revisions.resolve(tag)
        targets = [image] if image.platform is not None else [image.on(p) for p in self.platforms]
        outcomes = {}
        for one in targets:
            key = cache_key(one, revision, self.max_layers)
            record = self._load(key)
            if record is None:
                outcomes[one.platform.name] = "not built"
            elif record.sbom:
                outcomes[one.platform.name] = "has one"
            else:
                with self.locks.image(key, timeout=self.nix_timeout + UPLOAD_MARGIN):
                    self._remember(key, self.builder.add_sbom(
                        one, revision, record, source=self.source.describe()))
                outcomes[one.platform.name] = "made"
        return outcomes

    def lookup(self, name: str, tag="latest"):
        """What the package source says of one attribute path (for people)."""
        revision = self.revisions.resolve(tag)
        return self.nix.resolve(revision.nix, self.platforms[0].system, [name.split(".")],
                                Deadline(self.nix_timeout))[0]

    def _find_or_build(self, image, tag, revision, key, job: Job) -> ImageRecord:
        record = self._load(key)  # built by another worker or instance
        if record is None and not revision.buildable:
            raise RevisionNotFound(
                f"{image.name} was not built from {revision.description}, which can no "
                "longer be built from: pull latest, or a tag it was built at")
        if record is None:
            error = self.failures.recall(key)
            if error is not None:
                metrics.MANIFEST_CACHE.labels("failure").inc()
                raise error
            # only now, about to build: a stored image needs nothing of the source
            self.revisions.admit(revision)
            if self.quota is not None and job.client is not None:
                # not built anywhere: a build of its client's, if its quota allows
                job.reservation = self.quota.reserve(job.client)
            try:
                record = self._build_once(image, tag, revision, key, job)
            except _Found as found:
                record = found.record
        self._remember(key, record)
        return record

    def _find_or_make_index(self, image, tag, revision, key, job: Job) -> IndexRecord:
        """The index of `image` on every platform, from storage or made from
        each platform's image, whose jobs run side by side.  A platform
        its packages are not available on is left out.  One that fails does
        not fail the others' pulls: the index of the platforms that built
        is served, and not stored, so that a later pull tries the failed
        one again; only when none built does the pull fail, naming the
        platform (a failure of the machine's first: it is retried)."""
        record = self._load(key)
        if record is not None:
            self._remember(key, record)
            return record
        parts = {}
        for platform in self.platforms:
            try:
                parts[platform] = self._start(image.on(platform), tag, revision, job.client)
            except BuildError as e:  # remembered: it is known already
                parts[platform] = e
        job.watch({p.name: part for p, part in parts.items() if isinstance(part, Job)})
        members, left_out, failed = [], {}, {}
        for platform, part in parts.items():
            if isinstance(part, Job):
                part.wait(None)  # every job ends, within NIX_TIMEOUT and its uploads
                try:
                    part = part.outcome()
                except BuildError as e:
                    part = e
            if isinstance(part, PlatformUnsupported):
                left_out[platform.name] = part.message
            elif isinstance(part, BuildError):
                failed[platform.name] = _on_platform(part, platform)
            else:
                members.append((platform, part))
        if not members:
            if failed:
                raise next((e for e in failed.values() if isinstance(e, BuildInterrupted)),
                           next(iter(failed.values())))
            raise PlatformUnsupported(
                f"{image.name} is available on none of this registry's platforms: "
                + "; ".join(left_out.values()))
        record = self.builder.index(image, key, members, left_out,
                                    {name: e.message for name, e in failed.items()})
        if left_out:
            logger.info("index of %s leaves out %s", image.name, ", ".join(left_out))
        if failed:
            logger.warning("index of %s is served without %s, which failed to build: %s",
                           image.name, ", ".join(failed),
                           "; ".join(e.message for e in failed.values()))
        self._remember(key, record, partial=bool(failed))
        return record

    def _load(self, key) -> ImageRecord | IndexRecord | None:
        data = self.storage.read(keys.manifest(key))
        if data is None:
            return None
        metrics.MANIFEST_CACHE.labels("storage").inc()
        logger.info("image %s found in storage", key[:12])
        return load_record(data)

    def _build_once(self, image, tag, revision, key, job: Job) -> ImageRecord:
        """Build, unless another process is at it: then wait for its record,
        or its error.  On this machine a lock file says who builds; between
        instances, a claim in storage."""
        # the other side's clock stamps its failure: allow for some skew
        waiting_since = time.time() - CLOCK_SKEW
        with self.locks.image(key, timeout=self.nix_timeout + UPLOAD_MARGIN,
                              on_wait=lambda: job.set_phase(WAITING_FOR_ANOTHER)
                              ) as waited:
            if waited:
                self._raise_outcome(key, waiting_since)
            claim = self.claims.acquire(key)
            if claim is None:
                job.set_phase(WAITING_FOR_ANOTHER)
                claim = self._wait_for_claim(key, waiting_since)
            try:
                with claim.kept():
                    return self._build_claimed(image, tag, revision, key, job)
            finally:
                claim.release()

    def _raise_outcome(self, key, since):
        """End the wait for another process's build: raise _Found with the
        record it stored, or the failure it met since `since`."""
        record = self._load(key)
        if record is not None:
            raise _Found(record)
        error = self.failures.recall(key, since=since)
        if error is not None:
            logger.info("image %s failed in another process: %s", key[:12], error.message)
            raise error

    def _wait_for_claim(self, key, since):
        """Wait while another instance holds the image's claim: until its
        outcome is stored, or its lease ends and this process takes over."""
        delay = CLAIM_POLL_MIN
        while True:
            time.sleep(delay)
            delay = min(delay * 2, CLAIM_POLL_MAX)
            self._raise_outcome(key, since)
            claim = self.claims.acquire(key)
            if claim is not None:
                # its holder may have stored the image just before letting go
                try:
                    self._raise_outcome(key, since)
                except BaseException:
                    claim.release()
                    raise
                return claim

    def _build_claimed(self, image, tag, revision, key, job: Job) -> ImageRecord:
        """Build within the build slots, remembering how it failed."""
        try:
            with contextlib.ExitStack() as slot:
                with metrics.BUILDS_QUEUED.track_inprogress():
                    slot.enter_context(self.locks.slot(
                        on_wait=lambda: job.set_phase("waiting for a build slot"),
                        client=job.client))
                return self._tracked_build(image, tag, revision, key, job)
        except BuildQueueFull:
            raise  # not a failure of the image: the next request may get a slot
        except BuildError as e:
            kind, cause = failures_.kind(e)
            metrics.BUILD_FAILURES.labels(kind, cause).inc()
            if kind == "machine":
                logger.warning("the build of %s for %s was stopped by the machine (%s), which is "
                               "no verdict on the image: %s", image.name, image.system, cause,
                               e.message)
            self.failures.remember(key, e, about={
                "image": image.name, "asked": image.asked or image.name, "tag": tag,
                "system": image.system, "revision": revision.description})
            raise

    def _tracked_build(self, image, tag, revision, key, job: Job) -> ImageRecord:
        """The builder's build, with its history entry, its log file, its log
        lines and its metrics."""
        build = (self.history.start(image.label, tag, key, asked=image.asked or image.name)
                 if self.history else None)
        job.log_path = build and build.log_path

        def phase(name):
            job.set_phase(name)
            if build:
                self.history.phase(build, name)
        started = time.monotonic()
        outcome = "failed"
        try:
            if not image.packages:
                raise InvalidImage("the image name lists no packages")
            metrics.MANIFEST_CACHE.labels("miss").inc()
            if job.reservation is not None:
                job.reservation.charge()  # it builds: it counts in its client's hour
            logger.info("building %s for %s from %s, %s", image.name, image.system,
                        self.source.describe(), revision.description)
            with metrics.BUILDS_IN_FLIGHT.track_inprogress():
                try:
                    built = self.builder.build(image, revision, key, job, phase,
                                               source=self.source.describe())
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    # making the layers filled this machine's disk
                    raise BuildInterrupted(
                        f"the build machine has no disk space left ({e.strerror}); not a "
                        "fault of the image: pull again in a moment, once its operator has "
                        "freed some", cause="disk") from e
            record = built.record
            logger.info("built %s: %d store paths in %d layers, Nix %.1fs, total %.1fs",
                        image.name, built.store_paths, len(record.layers), built.nix_seconds,
                        time.monotonic() - started)
            outcome = "built"
            if self.nix_cache is not None:
                # once the pulls waiting for it have the image
                job.after(lambda: self.nix_cache.copy(built.roots, log_path=job.log_path))
            with self._lock:  # just written: as good as marked
                self._marked[keys.manifest(key)] = True
            try:
                self.revisions.built(revision)
            except Exception as e:  # the image is stored: only its revision's tag is missed
                logger.warning("could not keep %s as a tag: %s", revision.description, e)
            if build:
                self.history.built(build, closure_size=record.closure_size, key=key,
                                   layers=[{k: l[k] for k in ("digest", "size", "paths")}
                                           for l in record.layers])
            return record
        except BuildError as e:
            outcome = {BuildTimeout: "timeout", PackagesNotFound: "not_found",
                       BuildInterrupted: "interrupted"}.get(type(e), "failed")
            if build:
                self.history.failed(build, status=outcome if outcome in (
                    "timeout", "interrupted") else "failed", code=type(e).__name__,
                    message=e.message)
            raise
        except Exception as e:
            if build:
                self.history.failed(build, status="failed", code=type(e).__name__,
                                    message=f"the registry failed while building: {e}")
            raise
        finally:
            metrics.BUILDS.labels(outcome).inc()
            metrics.BUILD_SECONDS.labels(outcome).observe(time.monotonic() - started)


def _on_platform(error: BuildError, platform) -> BuildError:
    """A platform's build error, for a pull of the index: the same error,
    its message naming the platform."""
    data = error.to_dict()
    data["attrs"]["message"] = f"{platform.name} ({platform.system}): {error.message}"
    return BuildError.from_dict(data)
