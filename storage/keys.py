"""Where things live in storage: the one place that knows the key layout."""
from __future__ import annotations

import re

BLOB_PREFIX = "layers/"
BLOB_KEY_RE = re.compile(r"^layers/sha256:([0-9a-f]{64})$")


def blob(digest: str) -> str:
    """Layers, configs and manifests, by digest (`sha256:<hex>`)."""
    return f"{BLOB_PREFIX}{digest}"


def manifest(cache_key: str) -> str:
    """A built image's record, by the manifest cache key."""
    return f"manifests/{cache_key}"


def layer(layer_id: str) -> str:
    """What a layer (identified by its store paths) was stored as."""
    return f"layerinfo/{layer_id}"


def failure(cache_key: str) -> str:
    """Why an image cannot be made at its revision (unknown or refused packages)."""
    return f"failures/{cache_key}"


def claim(cache_key: str) -> str:
    """Which instance builds an image now, and until when its lease runs."""
    return f"claims/{cache_key}"


def blob_source(digest: str) -> str:
    """How to make a blob again: its store paths, its tree, or its bytes."""
    return f"blobsources/{digest}"


def revision(selector_id: str) -> str:
    """What a moving package source resolved to, and when."""
    return f"sources/{selector_id}"


def referrers(digest: str) -> str:
    """The descriptors of the manifests whose subject is `digest` (an
    image's SBOMs)."""
    return f"referrers/{digest}"


def gc_state() -> str:
    """What the last garbage collection or scan found stored, and freed."""
    return "state/gc.json"


def kept_revisions() -> str:
    """The revisions of a folder source images were built from, by tag."""
    return "state/kept-revisions.json"


def blob_sha256(key: str) -> str | None:
    """The sha256 hex a key must hold, for content-addressed keys."""
    m = BLOB_KEY_RE.match(key)
    return m.group(1) if m else None


def popularity(system: str = "x86_64-linux") -> str:
    """How many images built for a Nix system needed each store path name
    (layering's popularity); x86_64-linux keeps the key it had before
    images were built for several platforms."""
    if system == "x86_64-linux":
        return "state/popularity.json"
    return f"state/popularity-{system}.json"
