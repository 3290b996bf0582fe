"""A built image's record, an index's record, and the keys they are cached
and stored under."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import ClassVar

from storage.lifecycle import Held

from . import manifest
from .names import Image
from .platforms import Platform
from ..sources.source import Revision
from .. import digests

# Bump when what a cache key builds changes, so old records are not reused.
RECORD_FORMAT = 1


def cache_key(image: Image, revision: Revision, max_layers: int) -> str:
    """One key per distinct image: its packages and system, the pinned
    revision they come from, and what shapes its layers."""
    return hashlib.sha256(digests.canonical({
        "format": RECORD_FORMAT,
        "source": revision.identity,
        "system": image.system,
        "packages": list(image.packages),
        "max_layers": max_layers,
    })).hexdigest()


class _Stored:
    """What both kinds of record do: serve their manifests, and be stored
    as JSON under `keys.manifest(key)`."""

    manifests: dict[str, str]      # media type -> manifest JSON text

    def manifest(self, media_type) -> bytes:
        return self.manifests[media_type].encode()

    def to_json(self) -> bytes:
        return digests.canonical(self.__dict__)


def load_record(data: bytes) -> "ImageRecord | IndexRecord":
    """A stored record of either kind (TypeError or ValueError when it is
    not one this version can read)."""
    doc = json.loads(data)
    return IndexRecord(**doc) if "members" in doc else ImageRecord(**doc)


@dataclass
class ImageRecord(_Stored):
    """A built image: everything needed to serve it, stored as JSON."""

    media_types: ClassVar = manifest.MANIFEST_TYPES  # Docker's first, for clients naming none

    key: str
    packages: list[str]
    system: str
    manifests: dict[str, str]      # media type -> manifest JSON text
    config: dict                   # {digest, size}
    layers: list[dict]             # [{digest, size, diff_id, paths}]
    closure_size: int = 0
    built_at: float = field(default_factory=time.time)
    # {digest, size, referrers}: the SBOM and its artifact manifests, by the
    # digest of the manifest each is about (None for images built before)
    sbom: dict | None = None
    # requested attribute path -> its licences (SPDX id or name), as nixpkgs says
    licenses: dict[str, list[str]] | None = None
    # the identity of the revision it was built from (None before it was kept)
    revision: str | None = None


def index_key(image: Image, revision: Revision, platforms: tuple[Platform, ...],
              max_layers: int) -> str:
    """One key per index: the packages at the revision, for these platforms
    in this order (the keys of its images follow from the same inputs)."""
    return hashlib.sha256(digests.canonical({
        "format": RECORD_FORMAT,
        "kind": "index",
        "source": revision.identity,
        "systems": [p.system for p in platforms],
        "packages": list(image.packages),
        "max_layers": max_layers,
    })).hexdigest()


@dataclass
class IndexRecord(_Stored):
    """One image for several platforms: the image keys it lists, by
    platform, the platforms left out (their packages are not available
    there), and the index in both formats, stored as JSON."""

    media_types: ClassVar = manifest.INDEX_TYPES

    key: str
    packages: list[str]
    members: dict[str, str]        # platform name -> its image's record key
    left_out: dict[str, str]       # platform name -> why
    manifests: dict[str, str]      # media type -> index JSON text
    built_at: float = field(default_factory=time.time)
    # platform name -> why it failed to build: an index served meanwhile
    # without it, never stored (a later pull tries that platform again)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = dict(self.__dict__)
        doc.pop("failed")  # stored indexes have none
        return digests.canonical(doc)


def references(record: ImageRecord) -> set[str]:
    """Every blob an image needs, its SBOM and artifacts included."""
    refs = {digests.digest_of(record.manifest(t)) for t in record.manifests}
    refs.add(record.config["digest"])
    refs.update(l["digest"] for l in record.layers)
    if record.sbom:
        refs.add(record.sbom["digest"])
        refs.update(d["digest"] for d in record.sbom["referrers"].values())
        refs.add(digests.digest_of(manifest.EMPTY))
    return refs


def held(data: bytes) -> Held:
    """What the stored record `data` keeps alive, for garbage collection
    (TypeError or ValueError when it is not one this version can read)."""
    record = load_record(data)
    served = tuple(digests.digest_of(record.manifest(t)) for t in record.manifests)
    if isinstance(record, IndexRecord):
        return Held(record.key, True, tuple(record.members.values()), served, frozenset(served))
    return Held(record.key, False, (), served, frozenset(references(record)), record.revision)
