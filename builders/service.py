"""From an image name to a stored image: the front of the builders.

An image is answered from memory, from storage, from the memory of
failures, or by a job that builds it (builders/jobs/builds.py says how a
job builds).  Each piece it uses has a module of its own, made in
`create_app` and handed in: the revisions of the package source
(`revisions`), the memory of failures (`failures`), the build locks of this
machine (`locks`), the claims that make one build per image across
instances (`claims`), the build itself (`builder`, builders/build.py), the
jobs that outlive requests (`jobs`) and the pages' build history
(`history`); the layer store (`layerstore`) and Nix (`nix`) for making a
lost blob again and for package lookups.

An image name that pins no platform is made for every platform the
registry serves (NIXERY_PLATFORMS): with one, that platform's image; with
several, an index whose job starts one job per platform, so the platforms
build side by side, each exactly as a pull pinned to that platform would.
"""
from __future__ import annotations

import logging
import threading

import cachetools

from storage import keys, lifecycle
from . import metrics
from .errors import BuildError, BuildInProgress, RevisionNotFound
from .image import platforms as platforms_
from .image.names import Image
from .image.records import ImageRecord, IndexRecord, cache_key, index_key, load_record
from .jobs import builds, failures as failures_
from .jobs.builds import UPLOAD_MARGIN
from .jobs.jobs import Job
from .nixbuild.nix import Deadline
from .sources.folder import FOLDER_TAG_RE

logger = logging.getLogger(__name__)

# How long this process keeps an image's record in memory (garbage
# collection's grace period exceeds it).
RECORD_SECONDS = lifecycle.CACHES_SECONDS
# What a pull that stopped waiting for a job tells the client to wait
# before it asks again.  containers/image (podman, skopeo) honours it;
# containerd 1.6 retries at once whatever it says.
RETRY_AFTER = 10
class ImageService:
    def __init__(self, storage, *, revisions, failures, locks, claims, builder, layerstore, nix,
                 jobs, history=None, nix_timeout: float = 60.0, pull_wait: float = 25.0,
                 platforms=(platforms_.HOST,), mark_every: float = lifecycle.MARK_EVERY,
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
        return self.start_at(image, tag, self.revisions.resolve(tag), client)

    def _key(self, image: Image, revision) -> str:
        """The key `image` is kept under at `revision`: its index's, for a
        name that pins no platform when the registry serves several."""
        if image.platform is None and len(self.platforms) > 1:
            return index_key(image, revision, self.platforms, self.max_layers)
        return cache_key(self.pinned(image), revision, self.max_layers)

    def start_at(self, image: Image, tag: str, revision, client=None):
        """As `start`, at a revision the tag resolved to already."""
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
        return self._recalled(key) or self.stored(key)

    def add_sboms(self, image: Image, tag: str) -> dict[str, str]:
        """Make the SBOMs of an image built before SBOMs were made, for
        each platform it names (its own, or all the registry serves):
        platform name -> what happened.  Never builds an image."""
        revision = self.revisions.resolve(tag)
        targets = [image] if image.platform is not None else [image.on(p) for p in self.platforms]
        outcomes = {}
        for one in targets:
            key = cache_key(one, revision, self.max_layers)
            record = self.stored(key)
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
        record = self.stored(key)  # built by another worker or instance
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
                record = builds.build_once(self, image, tag, revision, key, job)
            except builds.Found as found:
                record = found.record
            else:
                with self._lock:  # just written: as good as marked
                    self._marked[keys.manifest(key)] = True
        self._remember(key, record)
        return record

    def _find_or_make_index(self, image, tag, revision, key, job: Job) -> IndexRecord:
        """The index of `image` on every platform, from storage or made from
        each platform's image (builders/jobs/builds.py, `make_index`)."""
        record = self.stored(key)
        if record is None:
            record = builds.make_index(self, image, tag, revision, key, job)
        # an index served without a platform that failed is kept briefly
        self._remember(key, record, partial=bool(record.failed))
        return record

    def stored(self, key) -> ImageRecord | IndexRecord | None:
        """The record of `key` storage holds (built by another worker or
        instance, or earlier), or None."""
        data = self.storage.read(keys.manifest(key))
        if data is None:
            return None
        metrics.MANIFEST_CACHE.labels("storage").inc()
        logger.info("image %s found in storage", key[:12])
        return load_record(data)
