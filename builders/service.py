"""From an image name to a stored manifest: caches, the build, the uploads."""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cachetools import TTLCache

from storage import keys
from . import forest, layers, manifest, metrics, tarball
from .compress import Compression
from .errors import (BuildError, BuildQueueFull, BuildTimeout, InvalidImage, PackagesNotFound,
                     PackagesRefused)
from .image import HOST_SYSTEM, Image
from .locks import BuildLocks
from .nix import Deadline, Nix
from .popularity import Popularity
from .sources import Revision

logger = logging.getLogger(__name__)

CACHE_TTL = 24 * 3600
# Time beyond NIX_TIMEOUT a build may take to make and store its layers,
# and so how long a request waits for another process's build.
UPLOAD_MARGIN = 300
# Failures that evaluation decides are the same every time at one revision
# (and the cache key holds the revision), so they are remembered instead of
# running Nix again for every pull of a misspelt name.
REMEMBERED_FAILURES = (PackagesNotFound, PackagesRefused)
FAILURE_TTL = 3600
# Bump when what a cache key builds changes, so old records are not reused.
RECORD_FORMAT = 1


@dataclass
class ImageRecord:
    """A built image: everything needed to serve it, stored as JSON."""

    key: str
    packages: list[str]
    system: str
    manifests: dict[str, str]      # media type -> manifest JSON text
    config: dict                   # {digest, size}
    layers: list[dict]             # [{digest, size, diff_id, paths}]
    closure_size: int = 0
    built_at: float = field(default_factory=time.time)

    def manifest(self, media_type) -> bytes:
        return self.manifests[media_type].encode()

    def to_json(self) -> bytes:
        return manifest.canonical(self.__dict__)

    @classmethod
    def from_json(cls, data: bytes) -> "ImageRecord":
        return cls(**json.loads(data))


class _LockedTTLCache:
    """cachetools caches are not thread-safe; gthread workers share them."""

    def __init__(self, maxsize, ttl):
        self._cache = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            return self._cache.get(key)

    def __setitem__(self, key, value):
        with self._lock:
            self._cache[key] = value


def close_matches(name, candidates, n=3):
    folded = {}
    for c in candidates:
        folded.setdefault(c.lower(), c)
    matches = difflib.get_close_matches(name.lower(), list(folded), n=n, cutoff=0.6)
    return [folded[m] for m in matches]


class ImageService:
    def __init__(self, storage, source, *, nix=None, nix_timeout=60.0, max_layers=100,
                 source_refresh=300.0, clock=time.time, locks=None, history=None,
                 popularity_url=None, compression=None, layer_workers=None):
        self.storage = storage
        self.history = history
        # without shared locks, builds are coordinated within this process only
        self.locks = locks or BuildLocks(tempfile.mkdtemp(prefix="registry-locks-"),
                                         max_builds=os.cpu_count() or 1, queue_timeout=30)
        self.source = source
        self.source_refresh = source_refresh
        self._clock = clock
        self._revisions = _LockedTTLCache(maxsize=256, ttl=max(source_refresh, 0.001))
        self.nix = nix or Nix()
        self.nix_timeout = nix_timeout
        self.max_layers = max_layers
        self.manifests = _LockedTTLCache(maxsize=4096, ttl=CACHE_TTL)
        self.layers = _LockedTTLCache(maxsize=1 << 16, ttl=CACHE_TTL)
        self.failures = _LockedTTLCache(maxsize=4096, ttl=FAILURE_TTL)
        self.popularity = Popularity(storage, popularity_url)
        self.compression = compression or Compression()
        # One pool for every build of this process: compressing is CPU
        # work, so more threads than cores only add memory.
        self._layer_pool = ThreadPoolExecutor(max_workers=layer_workers or os.cpu_count() or 1,
                                              thread_name_prefix="layer")
        self._layers_inflight: dict[str, Future] = {}
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()
        self.builds = 0  # images built by this process

    def cache_key(self, image: Image, revision: Revision) -> str:
        return hashlib.sha256(manifest.canonical({
            "format": RECORD_FORMAT,
            "source": revision.identity,
            "system": image.system,
            "packages": list(image.packages),
            "max_layers": self.max_layers,
        })).hexdigest()

    def image(self, image: Image, tag: str) -> ImageRecord:
        """The image's record from memory, storage, or a build; one build at a
        time per image in this process, concurrent callers share it."""
        revision = self.revision(tag)
        key = self.cache_key(image, revision)
        record = self._memory_hit(key)
        if record is not None:
            return record
        failure = self.failures.get(key)
        if failure is not None:
            metrics.MANIFEST_CACHE.labels("failure").inc()
            # a new exception each time: re-raising one object from many
            # requests would grow its traceback without end
            raise BuildError.from_dict(failure)

        def make():
            try:
                record = self._load(key)
                if record is None:
                    self._raise_remembered_failure(key)
                    record = self._build_once(image, tag, revision, key)
            except REMEMBERED_FAILURES as e:
                self._remember_failure(key, e, stored=getattr(e, "remembered", False))
                raise
            self.manifests[key] = record
            return record
        return self._once(self._inflight, key, make)

    def _once(self, inflight: dict, key, make):
        """make() once per key at a time in this process; callers that come
        meanwhile wait and share its result or its error."""
        with self._lock:
            future = inflight.get(key)
            owner = future is None
            if owner:
                future = inflight[key] = Future()
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
                del inflight[key]

    def in_memory(self, image: Image, tag: str) -> ImageRecord | None:
        """The image's record when this process holds it and knows what `tag`
        names now without asking storage or the source: no I/O, no build."""
        revision = self._remembered_revision(tag)
        if revision is None:
            return None
        return self._memory_hit(self.cache_key(image, revision))

    def _memory_hit(self, key) -> ImageRecord | None:
        record = self.manifests.get(key)
        if record is not None:
            metrics.MANIFEST_CACHE.labels("memory").inc()
        return record

    def cached(self, image: Image, tag: str) -> ImageRecord | None:
        """The image if it was built already; never builds."""
        key = self.cache_key(image, self.revision(tag))
        return self.manifests.get(key) or self._load(key)

    def known_revision(self, tag="latest") -> Revision | None:
        """The revision `tag` last resolved to, without asking the source."""
        ident = self._selector_id(tag)
        hit = self._revisions.get(ident)
        if hit is not None:
            return hit[0]
        data = self.storage.read(keys.revision(ident))
        return Revision(**json.loads(data)["revision"]) if data else None

    def lookup(self, name: str, tag="latest"):
        """What the package source says of one attribute path (for people)."""
        revision = self.revision(tag)
        return self.nix.resolve(revision.nix, HOST_SYSTEM[0], [name.split(".")],
                                Deadline(self.nix_timeout))[0]

    def _selector_id(self, tag):
        selector = self.source.selector(tag)
        return hashlib.sha256(f"{self.source.describe()}\0{selector}".encode()).hexdigest()

    def revision(self, tag: str) -> Revision:
        """What `tag` names in the source now.

        A moving source is asked again only once its answer is older than
        the refresh interval.  The answer is shared through storage with
        every worker and instance, so they all switch to a new revision
        together instead of serving different images for one name.
        """
        revision = self._remembered_revision(tag)
        if revision is not None:
            return revision
        ident = self._selector_id(tag)
        now = self._clock()
        data = self.storage.read(keys.revision(ident))
        if data is not None:
            stored = json.loads(data)
            if 0 <= now - stored["resolved_at"] < self.source_refresh:
                revision = Revision(**stored["revision"])
                self._revisions[ident] = (revision, stored["resolved_at"])
                return revision
        revision = self.source.resolve(tag)
        self.storage.put_bytes(keys.revision(ident), manifest.canonical(
            {"revision": revision.to_dict(), "resolved_at": now}), "application/json")
        self._revisions[ident] = (revision, now)
        return revision

    def _remembered_revision(self, tag: str) -> Revision | None:
        """What `tag` names, when known in memory and fresh; else None."""
        if self.source.immutable(tag):
            return self.source.resolve(tag)
        hit = self._revisions.get(self._selector_id(tag))
        if hit is not None and self._clock() - hit[1] < self.source_refresh:
            return hit[0]
        return None

    def _build_once(self, image, tag, revision, key) -> ImageRecord:
        """Build unless another process is already at it: then wait for its
        result, or its error."""
        waiting_since = time.time()
        with self.locks.image(key, timeout=self.nix_timeout + UPLOAD_MARGIN):
            record = self._load(key)
            if record is not None:
                return record
            failure = self.locks.failure_since(key, waiting_since)
            if failure is not None:
                logger.info("image %s failed in another process: %s", key[:12], failure.message)
                raise failure
            try:
                with contextlib.ExitStack() as slot:
                    with metrics.BUILDS_QUEUED.track_inprogress():
                        slot.enter_context(self.locks.slot())
                    return self._tracked_build(image, tag, revision, key)
            except BuildQueueFull:
                raise  # not a failure of the image: the next request may get a slot
            except BuildError as e:
                self.locks.record_failure(key, e)
                raise

    def _raise_remembered_failure(self, key):
        """Raise what another worker or instance found this image fails with."""
        data = self.storage.read(keys.failure(key))
        if data is None:
            return
        stored = json.loads(data)
        if 0 <= time.time() - stored["at"] < FAILURE_TTL:
            error = BuildError.from_dict(stored["error"])
            error.remembered = True
            metrics.MANIFEST_CACHE.labels("failure").inc()
            raise error from None

    def _remember_failure(self, key, error, *, stored):
        record = error.to_dict()
        if not stored:
            self.storage.put_bytes(keys.failure(key), manifest.canonical(
                {"at": time.time(), "error": record}), "application/json")
        self.failures[key] = record

    def _tracked_build(self, image, tag, revision, key) -> ImageRecord:
        """_build, with its history entry, its log file and its metrics."""
        build = self.history.start(image.label, tag, key) if self.history else None
        started = time.monotonic()
        outcome = "failed"
        try:
            with metrics.BUILDS_IN_FLIGHT.track_inprogress():
                record = self._build(image, revision, key, log_path=build and build.log_path)
            outcome = "built"
            if build:
                self.history.built(build, closure_size=record.closure_size, key=key,
                                   layers=[{k: l[k] for k in ("digest", "size", "paths")}
                                           for l in record.layers])
            return record
        except BuildError as e:
            outcome = {BuildTimeout: "timeout", PackagesNotFound: "not_found"}.get(type(e), "failed")
            if build:
                self.history.failed(build, status="timeout" if outcome == "timeout" else "failed",
                                    code=type(e).__name__, message=e.message)
            raise
        except Exception as e:
            if build:
                self.history.failed(build, status="failed", code=type(e).__name__,
                                    message=f"the registry failed while building: {e}")
            raise
        finally:
            metrics.BUILDS.labels(outcome).inc()
            metrics.BUILD_SECONDS.labels(outcome).observe(time.monotonic() - started)

    def _load(self, key):
        data = self.storage.read(keys.manifest(key))
        if data is None:
            return None
        metrics.MANIFEST_CACHE.labels("storage").inc()
        record = ImageRecord.from_json(data)
        logger.info("image %s found in storage", key[:12])
        return record

    def _build(self, image: Image, revision: Revision, key: str, log_path=None) -> ImageRecord:
        if not image.packages:
            raise InvalidImage("the image name lists no packages")
        metrics.MANIFEST_CACHE.labels("miss").inc()
        started = time.monotonic()
        deadline = Deadline(self.nix_timeout, log_path=log_path)
        source = revision.nix
        paths = image.attribute_paths
        logger.info("building %s for %s from %s, %s", image.name, image.system,
                    self.source.describe(), revision.description)
        resolved = self.nix.resolve(source, image.system, paths, deadline)

        missing = [r for r in resolved if r.status == "missing"]
        if missing:
            raise PackagesNotFound([
                (r.requested, close_matches(r.requested.split(".")[-1], r.siblings))
                for r in missing])
        refused = []
        logs = []
        for i, r in enumerate(resolved):
            if r.status == "notDerivation":
                refused.append(f"{r.requested} is not a package (it is not a derivation)")
            elif r.status == "error":
                why = self.nix.explain(source, image.system, paths, i, deadline)
                logs.append(why)
                reason = next((line[len("error: "):] for line in why.splitlines()
                               if line.startswith("error: ")), why.splitlines()[-1] if why else "")
                refused.append(f"{r.requested} cannot be built: {reason}")
        if refused:
            raise PackagesRefused("; ".join(refused), log_tail="\n".join(logs))

        self.nix.realise({f"{r.drv}!{r.output_name}": r.requested for r in resolved}, deadline)
        closure = self.nix.closure([r.out for r in resolved], deadline)
        nix_seconds = time.monotonic() - started

        roots = [r.out for r in resolved]
        names = [p.name for p in closure]
        counts, popular = self.popularity.for_layering(names)
        groups = layers.group(closure, self.max_layers - 1, counts, roots, threshold=popular)
        stored = self.store_layers(groups, forest.symlink_tree(roots))
        self.popularity.record(names)

        by_attr = {r.attr_path: r for r in resolved}
        env = []
        if "cacert" in by_attr:
            env.append(f"SSL_CERT_FILE={by_attr['cacert'].out}/etc/ssl/certs/ca-bundle.crt")
        cmd = ["bash"] if "bashInteractive" in by_attr else None
        config = manifest.image_config(arch=image.arch, diff_ids=[l["diff_id"] for l in stored],
                                       env=env, cmd=cmd)
        config_ref = self._store_blob(config)
        manifests = {}
        for media_type in manifest.MANIFEST_TYPES:
            body = manifest.render(media_type, config_ref, stored)
            self._store_blob(body, media_type)
            manifests[media_type] = body.decode()
        record = ImageRecord(
            key=key, packages=list(image.packages), system=image.system,
            manifests=manifests, config=config_ref, layers=stored,
            closure_size=sum(p.nar_size for p in closure))
        self.storage.put_bytes(keys.manifest(key), record.to_json(), "application/json")
        self.builds += 1
        logger.info("built %s: %d store paths in %d layers, Nix %.1fs, total %.1fs",
                    image.name, len(closure), len(stored), nix_seconds, time.monotonic() - started)
        return record

    def _store_blob(self, data: bytes, content_type="application/octet-stream") -> dict:
        digest = manifest.digest_of(data)
        key = keys.blob(digest)
        if not self.storage.exists(key):
            self.storage.put_bytes(key, data, content_type)
            metrics.BYTES_STORED.inc(len(data))
            self._record_source(digest, {"data": data.decode()})
        return {"digest": digest, "size": len(data)}

    def store_layers(self, groups, tree) -> list[dict]:
        """The layers of `groups` (tuples of store paths) and then of the
        symlink `tree`, made in parallel on the layer pool, in order."""
        futures = [self._layer_pool.submit(self._store_layer, g) for g in groups]
        futures.append(self._layer_pool.submit(self._store_tree_layer, tree))
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:  # after a failure, start no more of this image's layers
                f.cancel()

    def _store_layer(self, paths) -> dict:
        return self._layer(layers.layer_id(paths), {"paths": sorted(paths)})

    def _store_tree_layer(self, tree) -> dict:
        ident = hashlib.sha256(manifest.canonical(
            {"format": layers.LAYER_FORMAT, "tree": tree})).hexdigest()
        return self._layer(ident, {"tree": tree})

    def _writer(self, source):
        """How to write the layer a blob source record describes, with the
        compressor it was first made with (the digest depends on it)."""
        compression = (Compression(*source["compression"]) if "compression" in source
                       else self.compression)
        if "paths" in source:
            return lambda out: tarball.write_store_layer(source["paths"], out, compression)
        tree = {name: tuple(entry) for name, entry in source["tree"].items()}
        return lambda out: tarball.write_tree_layer(tree, out, compression)

    def _record_source(self, digest, source):
        # what restore_blob() needs to make the blob again
        self.storage.put_bytes(keys.blob_source(digest), manifest.canonical(source),
                               "application/json")

    def _upload_layer(self, source, expected_digest=None):
        with tempfile.TemporaryFile() as f:
            blob = self._writer(source)(f)
            if expected_digest and blob.digest != expected_digest:
                return None
            f.seek(0)
            self.storage.put(keys.blob(blob.digest), f, size=blob.size, md5=blob.md5,
                             content_type="application/octet-stream")
        metrics.BYTES_STORED.inc(blob.size)
        return blob

    def _layer(self, ident, source) -> dict:
        """A layer's {digest, size, diff_id}: from the seen-layers cache, the
        record in storage, or made and uploaded now; images built at once
        that share a layer make it once."""
        known = self.layers.get(ident)
        if known is not None:
            return known
        return self._once(self._layers_inflight, ident,
                          lambda: self._find_or_make_layer(ident, source))

    def _find_or_make_layer(self, ident, source) -> dict:
        data = self.storage.read(keys.layer(ident))
        if data is not None:
            known = json.loads(data)
            if self.storage.exists(keys.blob(known["digest"])):
                self.layers[ident] = known
                return known
        logger.info("making layer %s (%d store paths)", ident[:12], len(source.get("paths", ())))
        source = dict(source, compression=[self.compression.kind, self.compression.level])
        blob = self._upload_layer(source)
        self._record_source(blob.digest, source)
        known = {"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id,
                 "paths": len(source.get("paths", ()))}
        self.storage.put_bytes(keys.layer(ident), manifest.canonical(known), "application/json")
        self.layers[ident] = known
        return known

    def restore_blob(self, digest) -> bool:
        """Make a missing or corrupt blob again from what made it; False when
        that is not possible (unknown digest, store paths gone)."""
        data = self.storage.read(keys.blob_source(digest))
        if data is None:
            return False
        source = json.loads(data)
        if "data" in source:
            body = source["data"].encode()
            if manifest.digest_of(body) != digest:
                return False
            self.storage.put_bytes(keys.blob(digest), body)
        else:
            if not all(os.path.exists(p) for p in source.get("paths", ())):
                logger.error("cannot restore %s: its store paths are gone", digest)
                return False
            if self._upload_layer(source, expected_digest=digest) is None:
                logger.error("cannot restore %s: the store paths no longer give that digest", digest)
                return False
        logger.warning("restored blob %s from its source", digest)
        return True
