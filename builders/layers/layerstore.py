"""Layers and small blobs in storage: made once, recorded, made again when lost.

A layer is known by the set of its store paths (`grouping.layer_id`).  What
it was stored as (digest, size, diff_id) is recorded under `layerinfo/`, so
another image, worker or instance needing the same paths reuses the blob
without making it; and how to make each blob again (its store paths, its
symlink tree, or its bytes) under `blobsources/`, so a blob that goes
missing or corrupt in storage is made again on its next pull.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import cachetools

from storage import keys, lifecycle
from .. import digests, metrics
from . import grouping, tarball
from .compress import NONE, Compression

logger = logging.getLogger(__name__)

# How long this process believes a layer it has seen stored is still there
# (garbage collection's grace period exceeds it).
SEEN_SECONDS = lifecycle.CACHES_SECONDS

# A layer whose gzip keeps more than this share of its tar bytes is stored
# as the plain tar: a few percent saved is not worth every client's
# decompressing it (already compressed data, random bytes).
PLAIN_ABOVE = 0.95


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


class LayerStore:
    def __init__(self, storage, compression: Compression | None = None, *, workers=None):
        self.storage = storage
        self.compression = compression or Compression()
        # One pool for every build of this process, that makes layers
        # (reads files, hashes, writes), and one that compresses their
        # blocks: compressing is CPU work, so more threads than cores only
        # add memory; two pools, so that a layer waiting for its blocks
        # never holds a thread its blocks need.
        cores = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=cores, thread_name_prefix="layer")
        self._blocks = ThreadPoolExecutor(max_workers=cores, thread_name_prefix="layer-gzip")
        self._once = Once()
        # layers (by identity) and constant blobs this process saw stored;
        # the threads of every build share them, under one lock
        seen = cachetools.TTLCache(maxsize=1 << 16, ttl=SEEN_SECONDS)
        lock = threading.Lock()
        self._layer = cachetools.cached(seen, key=lambda ident, source: ident, lock=lock)(
            self._layer_once)
        self._constant = cachetools.cached(
            seen, key=lambda data, content_type: ("constant", digests.digest_of(data)),
            lock=lock)(self._constant_once)

    def store_layers(self, groups, tree, on_layer=None, sizes=None) -> list[dict]:
        """The layers of `groups` (tuples of store paths) and then of the
        symlink `tree`, made in parallel on the layer pool, in order; each
        {digest, size, diff_id, paths}.  `on_layer(size)` is called as each
        is stored.  With `sizes` ({store path: bytes}) the biggest layers
        are started first (grouping.largest_first)."""
        futures = [None] * len(groups)
        for i in grouping.largest_first(groups, sizes):
            futures[i] = self._submit(self._store_paths, groups[i])
        futures.append(self._submit(self._store_tree, tree))
        if on_layer:
            for f in futures:
                f.add_done_callback(
                    lambda f: f.cancelled() or f.exception() or on_layer(f.result()["size"]))
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:  # after a failure, start no more of this image's layers
                f.cancel()

    def _submit(self, fn, arg):
        # the caller's context (its request id) goes with the work, so the
        # layer thread's log lines name the request they serve
        return self._pool.submit(contextvars.copy_context().run, fn, arg)

    def store_blob(self, data: bytes, content_type="application/octet-stream") -> dict:
        """Store a small blob (a config, a manifest) by digest; {digest, size}.
        Putting an object that is already there is harmless (same key, same
        bytes), so no existence check is spent on it."""
        digest = digests.digest_of(data)
        self.storage.put_bytes(keys.blob(digest), data, content_type)
        metrics.BYTES_STORED.inc(len(data))
        self._record_source(digest, {"data": data.decode()})
        return {"digest": digest, "size": len(data)}

    def store_constant(self, data: bytes, content_type: str) -> dict:
        """A blob many images need with the same bytes (the empty config of
        artifacts): stored once per process."""
        return self._constant(data, content_type)

    def _constant_once(self, data, content_type) -> dict:
        return self._once(("constant", digests.digest_of(data)),
                          lambda: self.store_blob(data, content_type))

    def restore_blob(self, digest) -> bool:
        """Make a missing or corrupt blob again from what made it; False when
        that is not possible (unknown digest, store paths gone)."""
        data = self.storage.read(keys.blob_source(digest))
        if data is None:
            return False
        source = json.loads(data)
        if "data" in source:
            body = source["data"].encode()
            if digests.digest_of(body) != digest:
                return False
            self.storage.put_bytes(keys.blob(digest), body)
        else:
            if not all(os.path.exists(p) for p in source.get("paths", ())):
                logger.error("cannot restore %s: its store paths are gone", digest)
                return False
            if self._upload(source, expected_digest=digest)[0] is None:
                logger.error("cannot restore %s: the store paths no longer give that digest",
                             digest)
                return False
        logger.warning("restored blob %s from its source", digest)
        return True

    def _store_paths(self, paths) -> dict:
        return self._layer(grouping.layer_id(paths), {"paths": sorted(paths)})

    def _store_tree(self, tree) -> dict:
        ident = hashlib.sha256(digests.canonical(
            {"format": grouping.LAYER_FORMAT, "tree": tree})).hexdigest()
        return self._layer(ident, {"tree": tree})

    def _layer_once(self, ident, source) -> dict:
        """From the record in storage, or made and uploaded now (`_layer`
        answers from the seen-layers memory first); images built at once
        that share a layer make it once."""
        return self._once(ident, lambda: self._find_or_make(ident, source))

    def _find_or_make(self, ident, source) -> dict:
        data = self.storage.read(keys.layer(ident))
        if data is not None:
            known = json.loads(data)
            # marked as used, so that a garbage collection judging it now
            # keeps it (storage/gc.py); False when it is gone
            if self.storage.mark_used(keys.blob(known["digest"])):
                return known
        logger.info("making layer %s (%d store paths)", ident[:12], len(source.get("paths", ())))
        source = dict(source, compression=[self.compression.kind, self.compression.level])
        blob, source = self._upload(source, plain_above=PLAIN_ABOVE)
        self._record_source(blob.digest, source)
        known = {"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id,
                 "paths": len(source.get("paths", ()))}
        if not blob.compressed:
            known["uncompressed"] = True  # the manifests name a plain tar layer
        self.storage.put_bytes(keys.layer(ident), digests.canonical(known), "application/json")
        return known

    def _writer(self, source):
        """How to write the layer a blob source record describes, with the
        compressor it was first made with (the digest depends on it): none,
        for a plain tar layer."""
        compression = (Compression(*source["compression"]) if "compression" in source
                       else self.compression)
        how = {"pool": self._blocks, "md5": self.storage.wants_md5}
        if "paths" in source:
            return lambda out: tarball.write_store_layer(source["paths"], out, compression,
                                                         **how)
        tree = {name: tuple(entry) for name, entry in source["tree"].items()}
        return lambda out: tarball.write_tree_layer(tree, out, compression, **how)

    def _upload(self, source, expected_digest=None, plain_above=None):
        """Write the layer `source` describes into storage's spool and store
        it; (blob, source).  With `plain_above`, a layer whose gzip keeps
        more than that share of its tar is written again as plain tar, and
        the source says so.  None (and nothing stored) when the bytes do not
        give `expected_digest`."""
        with self.storage.spool() as spool:
            blob = self._writer(source)(spool.file)
            if plain_above is not None and blob.size > plain_above * blob.tar_size:
                logger.info("layer %s: gzip keeps %.0f%% of its %d bytes; stored as plain tar",
                            blob.diff_id[7:19], 100 * blob.size / blob.tar_size, blob.tar_size)
                return self._upload(dict(source, compression=[NONE, 0]), expected_digest)
            if expected_digest and blob.digest != expected_digest:
                return None, source
            self.storage.put_spooled(keys.blob(blob.digest), spool, size=blob.size,
                                     sha256=blob.digest.removeprefix("sha256:"), md5=blob.md5)
        metrics.BYTES_STORED.inc(blob.size)
        return blob, source

    def _record_source(self, digest, source):
        self.storage.put_bytes(keys.blob_source(digest), digests.canonical(source),
                               "application/json")
