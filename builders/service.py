"""From an image name to a stored manifest: caches, the build, the uploads."""
from __future__ import annotations

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
from . import forest, layers, manifest, tarball
from .compress import Compression
from .errors import InvalidImage, PackagesNotFound, PackageUnbuildable
from .image import Image
from .nix import Deadline, Nix
from .popularity import Popularity

logger = logging.getLogger(__name__)

CACHE_TTL = 24 * 3600
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
                 popularity_url=None, compression=None, layer_workers=None):
        self.storage = storage
        self.source = source
        self.nix = nix or Nix()
        self.nix_timeout = nix_timeout
        self.max_layers = max_layers
        self.manifests = _LockedTTLCache(maxsize=4096, ttl=CACHE_TTL)
        self.layers = _LockedTTLCache(maxsize=1 << 16, ttl=CACHE_TTL)
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

    def cache_key(self, image: Image, tag: str) -> str:
        return hashlib.sha256(manifest.canonical({
            "format": RECORD_FORMAT,
            "source": self.source.identity(tag),
            "system": image.system,
            "packages": list(image.packages),
            "max_layers": self.max_layers,
        })).hexdigest()

    def image(self, image: Image, tag: str) -> ImageRecord:
        """The image's record from memory, storage, or a build; one build at a
        time per image in this process, concurrent callers share it."""
        key = self.cache_key(image, tag)
        record = self.manifests.get(key)
        if record is not None:
            return record
        with self._lock:
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = self._inflight[key] = Future()
        if not owner:
            return future.result()
        try:
            record = self._load(key) or self._build(image, tag, key)
            self.manifests[key] = record
            future.set_result(record)
            return record
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._inflight[key]

    def _load(self, key):
        data = self.storage.read(keys.manifest(key))
        if data is None:
            return None
        record = ImageRecord.from_json(data)
        logger.info("image %s found in storage", key[:12])
        return record

    def _build(self, image: Image, tag: str, key: str) -> ImageRecord:
        if not image.packages:
            raise InvalidImage("the image name lists no packages")
        started = time.monotonic()
        deadline = Deadline(self.nix_timeout)
        source = self.source.nix_source(tag)
        paths = image.attribute_paths
        logger.info("building %s for %s from %s", image.name, image.system, self.source.describe())
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
            raise PackageUnbuildable("; ".join(refused), log_tail="\n".join(logs))

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
        return self._layer(layers.layer_id(paths), len(paths),
                           lambda out: tarball.write_store_layer(paths, out, self.compression))

    def _store_tree_layer(self, tree) -> dict:
        ident = hashlib.sha256(manifest.canonical(
            {"format": layers.LAYER_FORMAT, "tree": tree})).hexdigest()
        return self._layer(ident, 0, lambda out: tarball.write_tree_layer(tree, out, self.compression))

    def _layer(self, ident, npaths, write) -> dict:
        """A layer's {digest, size, diff_id}: from the seen-layers cache, the
        record in storage, or made and uploaded now; images built at once
        that share a layer make it once."""
        known = self.layers.get(ident)
        if known is not None:
            return known
        with self._lock:
            future = self._layers_inflight.get(ident)
            owner = future is None
            if owner:
                future = self._layers_inflight[ident] = Future()
        if not owner:
            return future.result()
        try:
            known = self._find_or_make_layer(ident, npaths, write)
            future.set_result(known)
            return known
        except BaseException as e:
            future.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._layers_inflight[ident]

    def _find_or_make_layer(self, ident, npaths, write) -> dict:
        data = self.storage.read(keys.layer(ident))
        if data is not None:
            known = json.loads(data)
            if self.storage.exists(keys.blob(known["digest"])):
                self.layers[ident] = known
                return known
        with tempfile.TemporaryFile() as f:
            blob = write(f)
            f.seek(0)
            self.storage.put(keys.blob(blob.digest), f, size=blob.size, md5=blob.md5,
                             content_type="application/octet-stream")
        known = {"digest": blob.digest, "size": blob.size, "diff_id": blob.diff_id,
                 "paths": npaths}
        self.storage.put_bytes(keys.layer(ident), manifest.canonical(known), "application/json")
        self.layers[ident] = known
        return known
