"""The bytes that name things: canonical JSON, and the sha256 digests of
content, as every stage of the builders and the app spell them."""
from __future__ import annotations

import hashlib
import json


def canonical(obj) -> bytes:
    """`obj` as JSON with sorted keys and no spaces: the same value always
    gives the same bytes, and so the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest_of(data: bytes) -> str:
    """`sha256:<hex>` of `data`, as registries name blobs and manifests."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
