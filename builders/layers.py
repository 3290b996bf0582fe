"""Groups a runtime closure into layers within a budget."""
from __future__ import annotations

import hashlib

from .nix import StorePath

# Bump when the bytes a group of paths turns into change, so old records
# of stored layers are not reused for a different tarball.
LAYER_FORMAT = "1"


def layer_id(paths) -> str:
    """A layer's identity: the set of store paths in it (and the tar format)."""
    h = hashlib.sha256(f"layer-format {LAYER_FORMAT}\n".encode())
    for p in sorted(paths):
        h.update(p.encode() + b"\n")
    return h.hexdigest()


def group(closure: list[StorePath], budget: int) -> list[tuple[str, ...]]:
    """Split `closure` into at most `budget` layers, each a sorted tuple of paths.

    A path many others refer to is likely shared with other images, so
    paths are ranked by how many closure paths reference them, then by
    size; the top `budget - 1` get a layer each and the rest share the last.
    The result depends only on the closure, so the same closure always
    gives the same layers.
    """
    if budget < 1:
        raise ValueError("layer budget must be at least 1")
    referrers = {p.path: 0 for p in closure}
    for p in closure:
        for ref in p.references:
            if ref != p.path and ref in referrers:
                referrers[ref] += 1
    ranked = sorted(closure, key=lambda p: (-referrers[p.path], -p.nar_size, p.path))
    if len(ranked) <= budget:
        return [(p.path,) for p in ranked]
    own = [(p.path,) for p in ranked[:budget - 1]]
    rest = tuple(sorted(p.path for p in ranked[budget - 1:]))
    return own + [rest]
