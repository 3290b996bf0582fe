"""A built image's record, and the key it is cached and stored under."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

from . import manifest
from .image import Image
from .sources import Revision

# Bump when what a cache key builds changes, so old records are not reused.
RECORD_FORMAT = 1


def cache_key(image: Image, revision: Revision, max_layers: int) -> str:
    """One key per distinct image: its packages and system, the pinned
    revision they come from, and what shapes its layers."""
    return hashlib.sha256(manifest.canonical({
        "format": RECORD_FORMAT,
        "source": revision.identity,
        "system": image.system,
        "packages": list(image.packages),
        "max_layers": max_layers,
    })).hexdigest()


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
